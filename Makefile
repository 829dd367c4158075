# bnn-book: `make book` runs the book, `make test` runs the tests. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pins that install everywhere, including machines whose local wheel cache
# only holds these releases. Override on the command line, e.g. `make test TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= small
STAMP := $(VENV)/.installed
# With 2 OpenMP threads on a busy 2-core machine, spin-waiting threads slow small ops ~30x.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv test book lab lint format clean reproduce

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name bnnlib --display-name "Python (bnnlib)" >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

book: $(STAMP)
	$(PY) -m bnnlib.book --profile $(PROFILE)

# The paper's MNIST run (1000 epochs) and the CIFAR-10 ConvNet for the time left, packed, into OUT.
OUT ?= runs/reproduce
MINUTES ?= 60
reproduce: $(STAMP)
	$(PY) -m bnnlib.repro.reproduce --out $(OUT) --max-minutes $(MINUTES) $(ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab book/

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf build .pytest_cache

"""``python -m bnnlib.bench``: see :mod:`bnnlib.bench.cli`."""

from bnnlib.bench.cli import main

main()

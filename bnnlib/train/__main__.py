"""``python -m bnnlib.train``: see :mod:`bnnlib.train.cli`."""

from bnnlib.train.cli import main

main()

"""``python -m bnnlib.gpucheck``: see :mod:`bnnlib.gpucheck`."""

import sys

from bnnlib.gpucheck import main

if __name__ == "__main__":
    sys.exit(main())

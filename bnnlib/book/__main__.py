"""``python -m bnnlib.book``: see :mod:`bnnlib.book.runner`."""

import sys

from bnnlib.book.runner import main

sys.exit(main())

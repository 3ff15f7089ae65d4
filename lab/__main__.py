"""``python -m lab``: run the matrix, clean leftovers, compare runs."""

import sys

from lab.cli import main

sys.exit(main())

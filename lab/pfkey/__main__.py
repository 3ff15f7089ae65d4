"""``python3 -m pfkey`` runs the probe, like ``python3 -m pfkey.probe``."""

import sys

from .probe import main

if __name__ == "__main__":
    sys.exit(main())

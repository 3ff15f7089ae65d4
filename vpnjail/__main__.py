import sys

from vpnjail.cli import main

sys.exit(main())

"""`python -m shoal ...` runs the shoal CLI."""

import sys

from shoal.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

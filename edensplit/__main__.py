"""`python -m edensplit ...`: the same as the `edensplit` command."""

import sys

from edensplit.cli import main

if __name__ == "__main__":
    sys.exit(main())

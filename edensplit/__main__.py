"""`python -m edensplit ...` is the `edensplit` command."""

import sys

from edensplit.cli import main

sys.exit(main())

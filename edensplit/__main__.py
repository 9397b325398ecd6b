"""`python -m edensplit ...`: the same as the `edensplit` command."""

from edensplit.cli import entry

if __name__ == "__main__":
    entry()

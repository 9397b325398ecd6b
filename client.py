"""The user's original client command, kept: `python client.py --video_path ... --output_dir ...`.

A thin entry point over `edensplit interpolate`; all options are the same.
"""

import sys

from edensplit.cli import main

if __name__ == "__main__":
    sys.exit(main(["interpolate", *sys.argv[1:]]))

"""`python -m server ...`: the same as `zoo serve ...` (one-line errors included)."""

import sys

from zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))

"""`python -m fastx ...`: the `fastx` command (fastx.cli) before or without its console script."""

import sys

from fastx.cli import main

if __name__ == "__main__":
    sys.exit(main())

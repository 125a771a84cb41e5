"""`python -m conadv_repro.landscape RUN_DIR`: see cli.py."""

import sys

from conadv_repro.landscape.cli import main

if __name__ == "__main__":
    sys.exit(main())

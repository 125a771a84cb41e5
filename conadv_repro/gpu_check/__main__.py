"""`python -m conadv_repro.gpu_check` (see cli.py)."""

import sys

from conadv_repro.gpu_check.cli import main

sys.exit(main())

import sys

from conadv_repro.launch.cli import main

sys.exit(main())

"""python -m analysis COMMAND PATHS... : see analysis/cli.py and docs/ANALYSIS.md."""

import sys

from analysis.cli import main

sys.exit(main())

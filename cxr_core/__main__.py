"""``python -m cxr_core``: the command-line interface."""

import sys

from cxr_core.cli import main

sys.exit(main())

"""`python -m scratchlm ...`: the same as the `scratchlm` command."""

import sys

from scratchlm.cli import main

sys.exit(main())

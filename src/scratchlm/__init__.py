"""scratchlm: build a language model from scratch, end to end."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# Threads (see also scratchlm/device.py). torch's OpenMP threads spin while they wait for each other; on cores
# shared with another busy process a spinning thread steals the core its partner needs, and every parallel
# region waits for a time slice. Measured on 2 shared cores (another training job running): a minimind-26m
# training step 12.4 s → 2.6 s and batch-1 decode 12 → 74 tok/s with OMP_WAIT_POLICY=PASSIVE. The variable
# is read when torch loads OpenMP, so it only takes effect when scratchlm is imported before torch (the CLI
# and the benches do); a value the user set wins.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

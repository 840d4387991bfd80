"""Task files for lm-evaluation-harness (`--include_path` this folder; `python -m scratchlm.eval.lm_eval_tasks`
prints it)."""

from pathlib import Path

TASK_DIR = Path(__file__).parent

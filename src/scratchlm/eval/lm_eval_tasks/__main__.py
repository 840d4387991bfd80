"""Print the folder to pass to `lm_eval --include_path`."""

from scratchlm.eval.lm_eval_tasks import TASK_DIR

print(TASK_DIR)

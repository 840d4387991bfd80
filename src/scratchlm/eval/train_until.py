"""Train until a held-out accuracy reaches a target: train a stage a few steps at a time, score each checkpoint,
stop at the first that reaches the target (DeepSeek-R1's cold start before RL needs a model that is right
sometimes, and how many SFT steps get it there swings with the seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def train_until_accuracy(model: Any, run_dir: Path, train_to: Callable[[int], Any], accuracy: Callable[[Any], float],
                         every: int, max_steps: int, target: float,
                         log: Callable[[int, float], None] | None = None) -> tuple[int, list[list[float]]]:
    """Call `train_to(step)` (train run_dir until checkpoint `step`) every `every` steps up to `max_steps`, load each
    checkpoint into `model` and score it with `accuracy(model)`; stop once it reaches `target`. Returns (the last
    step trained, [[step, accuracy], ...]); a rerun over an interrupted run first checks the checkpoint it stopped
    at, and `model` holds the last checkpoint's weights."""
    from scratchlm.runs import load_weights
    from scratchlm.train.checkpoint import list_checkpoints

    done = list_checkpoints(run_dir / "checkpoints")
    dev: list[list[float]] = []
    step = done[-1][0] - every if done else 0
    while step < max_steps:
        step = min(step + every, max_steps)
        train_to(step)
        load_weights(model, run_dir / "checkpoints" / f"step-{step}" / "model.safetensors")
        dev.append([step, accuracy(model)])
        if log is not None:
            log(step, dev[-1][1])
        if dev[-1][1] >= target:
            break
    return step, dev


def task_accuracy(tokenizer: Any, prompt_file: Path, task: str, n: int, max_new_tokens: int) -> Callable[[Any], float]:
    """A scorer for `train_until_accuracy`: greedy accuracy on the first `n` `task` prompts of `prompt_file`."""
    from scratchlm.eval.tasks import evaluate_tasks

    def score(model: Any) -> float:
        counts, _ = evaluate_tasks(model, tokenizer, prompt_file, n, max_new_tokens, tasks={task})
        correct, total = counts[task]
        return correct / max(1, total)

    return score

"""The demo's distillation stage: a small student with the SFT model as teacher, and the same student alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scratchlm.demo.common import accuracy, check_stage_steps, say, train_demo_stage
from scratchlm.demo.settings import DemoSettings, stage_sets
from scratchlm.eval.tasks import evaluate_tasks


def run_distill_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                      progress: bool) -> dict[str, Any]:
    """A small student (s.distill_student) trained from scratch on the SFT data twice for the same steps: with the
    SFT model as teacher (out/distill) and alone (out/distill_baseline). Held-out chat perplexity (the SFT
    objective's validation loss) and task accuracy of both students next to the teacher's."""
    from scratchlm.eval.perplexity import stage_val_loss
    from scratchlm.runs import load_run

    sets = [*stage_sets(s, "sft"), *s.distill_student, f"train.max_steps={s.distill_steps}",
            f"train.save_every={s.distill_steps}", f"train.eval_every={s.distill_steps}",
            f"train.warmup_steps={max(1, s.distill_steps // 20)}", *s.distill_sets]
    teacher_dir = out / "sft"
    runs = {"distill": out / "distill", "baseline": out / "distill_baseline"}
    for name, run_dir in runs.items():
        check_stage_steps(run_dir, s.distill_steps)
        if (run_dir / "model.safetensors").exists():
            say(f"{run_dir} already trained; delete it to train again")
            continue
        kind = "distill" if name == "distill" else "sft"
        what = "with the SFT model as teacher" if name == "distill" else "alone (no teacher), for comparison"
        say(f"distillation: a small student from scratch {what}, {s.distill_steps} steps → {run_dir}")
        extra = [f"distill.teacher={teacher_dir}"] if kind == "distill" else []
        train_demo_stage(kind, run_dir, s, paths, sets + extra, None, progress)
    result: dict[str, Any] = {"params": {}, "val_ppl": {}, "tasks": {}}
    models = {"teacher": teacher_dir, **runs}
    tasks = {"add2", "identity"}
    _, _, cfg = load_run(runs["baseline"])  # one held-out set and batching for all three
    for name, run_dir in models.items():
        model, tokenizer, _ = load_run(run_dir)
        result["params"][name] = int(model.num_params())
        result["val_ppl"][name] = math.exp(stage_val_loss(model, cfg))
        scores = sft_scores if name == "teacher" else evaluate_tasks(
            model, tokenizer, paths["prompt_eval"], s.eval_per_task, s.max_new_tokens, tasks=tasks)[0]
        result["tasks"][name] = {k: accuracy(v) for k, v in sorted(scores.items()) if k.split(" ")[0] in tasks}
    return result

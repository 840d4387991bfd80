"""Rerun one demo stage on a finished demo folder with changed settings, into another folder:

    python stage_var.py ppo|grpo SRC OUT SEED [--cold FROM] [k=v ...]

OUT links SRC's tokenizer, data and models (and FROM/grpo_cold with --cold: GRPO from that run's cold start);
the k=v pairs are added to the stage's --set list. The stage's result goes to OUT/STAGE_result.json."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from scratchlm.demo.data import prepare_demo_data, prepare_preference_data
from scratchlm.demo.grpo import run_grpo_stage
from scratchlm.demo.ppo import run_ppo_stage
from scratchlm.demo.settings import DemoSettings
from scratchlm.eval.tasks import evaluate_tasks

# stage → (its DemoSettings field of --set overrides, the demo stages it needs beside pretrain and sft)
STAGES = {"ppo": ("ppo_sets", ["reward"]), "grpo": ("grpo_sets", [])}


def sft_counts(src: Path, paths: dict[str, Path], s: DemoSettings) -> dict[str, tuple[int, int]]:
    """The SFT model's held-out task counts, evaluated once per demo folder (SRC/sft_counts.json)."""
    cache = src / "sft_counts.json"
    if not cache.exists():
        from scratchlm.runs import load_run

        sft, tok, _ = load_run(src / "sft")
        scores, _ = evaluate_tasks(sft, tok, paths["prompt_val"], s.eval_per_task, s.max_new_tokens)
        cache.write_text(json.dumps({k: list(v) for k, v in scores.items()}))
    return {k: tuple(v) for k, v in json.loads(cache.read_text()).items()}


def run_variant(stage: str, src: Path, out: Path, seed: int, extra: list[str], cold: Path | None = None) -> dict:
    """Link SRC into OUT, run the demo's `stage` there with `extra` --sets, save and return its result."""
    field, needs = STAGES[stage]
    links = {d: src / d for d in ("tokenizer", "data", "pretrain", "sft", *needs)}
    if cold is not None:
        links["grpo_cold"] = cold / "grpo_cold"
    out.mkdir(exist_ok=True)
    for d, target in links.items():
        if not (out / d).exists():
            (out / d).symlink_to(target.resolve())
    s = DemoSettings(seed=seed, stages=["pretrain", "sft", *needs, stage])
    s = replace(s, **{field: [*getattr(s, field), *extra]})
    paths = prepare_demo_data(out, s)
    if stage == "ppo":
        paths = prepare_preference_data(out, s, paths)
    counts = sft_counts(src, paths, s)
    t = time.perf_counter()
    run = {"ppo": run_ppo_stage, "grpo": run_grpo_stage}[stage]
    res = {**run(out, s, paths, counts, progress=False), "seconds": time.perf_counter() - t, "extra": extra}
    (out / f"{stage}_result.json").write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("seed", type=int)
    ap.add_argument("sets", nargs="*", help="k=v overrides added to the stage's --set list")
    ap.add_argument("--cold", type=Path, help="a run folder whose grpo_cold GRPO starts from")
    a = ap.parse_args()
    print(json.dumps(run_variant(a.stage, a.src, a.out, a.seed, a.sets, a.cold), indent=1))


if __name__ == "__main__":
    main()

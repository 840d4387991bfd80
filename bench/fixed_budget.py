"""Fixed wall-clock budget: pretraining val loss after the same minutes, AdamW vs Muon, eager vs compiled.

    python bench/fixed_budget.py [--presets tiny,minimind-26m] [--seeds 0,1] [--budget 120] [--results FILE]

For each preset, seed and variant (eager/compiled × adamw/muon), a short calibration run measures the variant's
seconds per step (after compiling); the real run then gets as many steps as fit the budget, with the whole lr
schedule (warmup, cosine decay) fitted to them, as a person with that many minutes would set it. Data: the demo's
tokenizer and pretraining shards of the built-in corpus (train split; val loss on its validation split, the dev
side: nothing here is reported as a test number). Each variant's val loss is read from its own metrics.jsonl.

Printed per preset and seed: steps, seconds, final val loss of each variant; and the time each variant took to
reach eager AdamW's final val loss (first validation at or below it, from the val curve), as a ratio of eager
AdamW's time. The machine may be shared: the variants run one after another, so a busy neighbour shifts them all.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it)

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_train import VARIANTS  # the same four variants as the per-step bench (bench/ is the script's folder)



def _sets(batch: int, seq: int, steps: int, compile: bool, optimizer: str, seed: int, evals: int) -> list[str]:
    """The run's overrides; log_every=1 so that every step's own time is in metrics.jsonl (`train_curve`)."""
    return [f"train.batch_size={batch}", f"train.seq_len={seq}", f"train.max_steps={steps}",
            f"train.warmup_steps={max(1, steps // 20)}", f"train.eval_every={max(1, steps // evals)}",
            "train.eval_batches=5", "train.save_every=0", "train.log_every=1", f"train.seed={seed}",
            f"train.compile={str(compile).lower()}", f"train.optimizer={optimizer}", "train.doc_mask=false"]


def run_variant(preset: str, data: dict[str, Path], sets: list[str], out: Path) -> list[dict]:
    """Train one pretraining run; its metrics.jsonl records."""
    from scratchlm.runs import read_metrics
    from scratchlm.train.stage import train_stage

    result = train_stage("pretrain", out, preset, sets + [f"train.val_data={data['pretrain_val']}"],
                         str(data["pretrain"]), tokenizer=data["tokenizer"], progress=False)
    if result.status != "done":
        raise SystemExit(f"fixed_budget: {out} stopped ({result.status})")
    return read_metrics(out)


def seconds_per_step(preset: str, data: dict[str, Path], batch: int, seq: int, compile: bool, optimizer: str,
                     work: Path) -> float:
    """Median seconds of steps 3..8 of a short run (steps 1-2 compile)."""
    recs = run_variant(preset, data, _sets(batch, seq, 8, compile, optimizer, 0, 1), work)
    times = [batch * seq / r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r["step"] > 2]
    return statistics.median(times)


def train_curve(recs: list[dict], tokens_per_step: int) -> list[tuple[float, float]]:
    """(training seconds so far, val loss) at each validation: the seconds are the steps' own (tokens / tokens/s of
    each logged step), so the time spent validating counts for no variant."""
    spent, at_step = 0.0, {}
    for r in recs:
        if "tokens_per_s" in r:
            spent += tokens_per_step / r["tokens_per_s"]
            at_step[r["step"]] = spent
    return [(at_step[r["step"]], r["val_loss"]) for r in recs if "val_loss" in r and r["step"] in at_step]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Elapsed seconds at the first validation whose loss is at or below `target` (None if none is)."""
    return next((t for t, loss in curve if loss <= target), None)


def main() -> None:
    """Run the variants for each preset and seed; print the table; optionally write a results file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,minimind-26m")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of training per run (default 120)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--evals", type=int, default=10, help="validations per run (the val curve's points)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the data and runs here (default: a temp folder)")
    ap.add_argument("--results", help="write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    if any(v not in VARIANTS for v in variants) or "eager adamw" not in variants:
        ap.error(f"--variants: choose from {list(VARIANTS)}, eager adamw included (the reference)")
    from scratchlm.demo.data import prepare_demo_data
    from scratchlm.demo.settings import DemoSettings

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fixed_budget-"))
    data = prepare_demo_data(work / "demo_data", DemoSettings())
    numbers: dict = {"budget_s": args.budget, "batch": args.batch, "seq": args.seq, "runs": {}}
    for preset in args.presets.split(","):
        for seed in map(int, args.seeds.split(",")):
            rows = {}
            for v in variants:
                compile, opt = VARIANTS[v]
                tag = f"{preset}-s{seed}-{v.replace(' ', '-')}"
                sps = seconds_per_step(preset, data, args.batch, args.seq, compile, opt, work / f"calib-{tag}")
                steps = max(10, int(args.budget / sps))
                t0 = time.perf_counter()
                recs = run_variant(preset, data, _sets(args.batch, args.seq, steps, compile, opt, seed, args.evals),
                                   work / tag)
                wall = time.perf_counter() - t0
                curve = train_curve(recs, args.batch * args.seq)
                rows[v] = {"s_per_step": sps, "steps": steps, "wall_s": wall, "curve": curve,
                           "val_loss": curve[-1][1] if curve else None}
                print(f"{preset} seed {seed} {v:15s} {sps:6.3f} s/step → {steps:5d} steps, {wall:6.0f} s, "
                      f"val loss {rows[v]['val_loss']:.4f}", flush=True)
            target = rows["eager adamw"]["val_loss"]
            ref_t = time_to(rows["eager adamw"]["curve"], target)
            for v, r in rows.items():
                t = time_to(r["curve"], target)
                r["time_to_adamw_eager_loss"] = t
                r["time_ratio"] = t / ref_t if t is not None and ref_t else None
                ratio = f"{r['time_ratio']:.2f}" if r["time_ratio"] is not None else "not reached"
                print(f"  {v:15s} reaches eager AdamW's {target:.4f} at {ratio} of its time")
            numbers["runs"][f"{preset} seed {seed}"] = rows
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "fixed_budget", numbers, seed=None, split="val",
                      notes="pretraining on the built-in corpus (demo tokenizer), val loss on its validation split; "
                            "steps fitted to the budget from each variant's own measured s/step")


if __name__ == "__main__":
    main()

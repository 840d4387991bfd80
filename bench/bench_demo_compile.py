"""Does `train.compile` pay for itself in the demo? Each of a finished demo's training stages (its own config.toml:
the same model, data, batch and optimizer) run for a few steps eager, compiled with an empty inductor cache (a new
user's first run) and compiled again with that cache warm (every later run), each in its own process.

    python bench/bench_demo_compile.py --demo runs/demo --steps 60 --results docs/results/bench_demo_compile.json

Prints, per stage, the steady tokens/s of each variant (steps after the first few), the seconds the first steps
cost beyond steady speed (compiling), and the stage's projected time at the demo's own step count: compiled over
eager, cold and warm cache. Below 1.00 compile wins."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratchlm.runs import read_metrics

SKIP = 5  # steps left out of the steady rate: the first compiles (and warms allocators eagerly)


def run_stage(stage: str, config: Path, out: Path, steps: int, compiled: bool, cache: Path,
              threads: int) -> dict[str, float]:
    """One `scratchlm train STAGE` process: its wall seconds, steady tokens/s and the seconds of its first steps."""
    sets = [f"train.max_steps={steps}", f"train.compile={'true' if compiled else 'false'}",
            "train.eval_every=1000000", f"train.save_every={steps}", "train.log_every=1"]
    cmd = [sys.executable, "-m", "scratchlm", "train", stage, "--config", str(config), "--out", str(out),
           "--no-progress", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    recs = [r for r in read_metrics(out) if "tokens_per_s" in r]
    first, last = next(r for r in recs if r["step"] == SKIP), recs[-1]
    rate = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    # what the first SKIP steps cost beyond the steady rate: compiling (and, eager, warming up)
    overhead = first["elapsed_s"] - first["tokens"] / rate
    return {"wall_s": wall, "tokens_per_s": rate, "first_steps_overhead_s": overhead,
            "tokens_per_step": last["tokens"] / last["step"]}


def main() -> None:
    """Eager vs compiled (cold and warm cache) for each stage of a finished demo."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, required=True, help="a finished demo folder (pretrain/, sft/ with config.toml)")
    ap.add_argument("--stages", default="pretrain,sft")
    ap.add_argument("--steps", type=int, default=60, help="steps per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", help="write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    if args.steps <= 2 * SKIP:
        raise SystemExit(f"--steps must be above {2 * SKIP}")
    from scratchlm.config import load_config

    numbers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for stage in args.stages.split(","):
            config = args.demo / stage / "config.toml"
            if not config.exists():
                raise SystemExit(f"{config}: no such file (is {args.demo} a finished demo?)")
            demo_steps = load_config(str(config)).train.max_steps
            cache = tmp / f"inductor-{stage}"
            got = {name: run_stage(stage, config, tmp / f"{stage}-{name}", args.steps, compiled, cache, args.threads)
                   for name, compiled in (("eager", False), ("compiled, cold cache", True),
                                          ("compiled, warm cache", True))}
            eager = got["eager"]
            for name, g in got.items():
                # the stage at the demo's step count: what the first steps cost, then the rest at the steady rate
                g["projected_s"] = g["first_steps_overhead_s"] + demo_steps * g["tokens_per_step"] / g["tokens_per_s"]
            numbers[stage] = {"demo_steps": demo_steps, **got}
            print(f"{stage} ({demo_steps} steps in the demo; {args.steps} here, {args.threads} threads)")
            for name, g in got.items():
                print(f"  {name:22s} {g['tokens_per_s']:7.0f} tok/s ({g['tokens_per_s'] / eager['tokens_per_s']:.2f}×)  "
                      f"first {SKIP} steps +{g['first_steps_overhead_s']:5.1f} s  "
                      f"the stage: {g['projected_s']:6.0f} s ({g['projected_s'] / eager['projected_s']:.2f}× eager)")
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_demo_compile", numbers,
                      notes=f"{args.steps} steps per variant from {args.demo}'s stage configs, {args.threads} threads; "
                            "projected = first-steps overhead + the demo's steps at the steady rate")


if __name__ == "__main__":
    main()

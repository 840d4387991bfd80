"""Where a training step's time goes: the loop's own profiler (train.profile_steps) over a few steps of the compiled
(or eager) AdamW step, each part set against the step and the matmul peak, so the gap between MFU and 1 is
accounted for.

    python bench/profile_train.py [--preset minimind-26m] [--batch 4] [--seq 256] [--eager] [--results FILE]

MFU is as in bench_train.py: 3 × forward FLOPs/token at the mean causal context × tokens/s ÷ the best torch.mm
2048² of this run. The profile's parts are self times on the main thread (intra-op threads work inside the op
that launched them): matmuls (aten::mm/addmm/bmm, with their FLOPs read from the recorded shapes, so their achieved
GFLOP/s), attention (SDPA forward and backward), inductor's fused kernels (compiled), other ops of forward +
backward, the optimizer step, and the loop around them. Each matmul shape of the step is also timed alone, to tell
a shape's own rate from the step's.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it)

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bench_train import ArrayShards
from scratchlm.config import load_config
from scratchlm.model.info import flops_per_token
from scratchlm.results import matmul_peak, mm_flops
from scratchlm.runs import build_model, read_metrics
from scratchlm.train.loop import train
from scratchlm.train.objectives import Pretrain


def profiled_run(preset: str, batch: int, seq: int, compile: bool, timed: int, profiled: int) -> tuple[list[float], dict]:
    """Seconds of `timed` unprofiled steps (after 2 warm-up ones) and the breakdown of `profiled` later steps."""
    total = 2 + timed + 1 + profiled  # warm-up (compiling), timed, the profiler's warm-up step, profiled
    sets = [f"train.batch_size={batch}", f"train.seq_len={seq}", f"train.max_steps={total}", "train.log_every=1",
            "train.eval_every=0", "train.save_every=0", "train.warmup_steps=1", f"train.compile={str(compile).lower()}",
            f"train.profile_steps={profiled}", f"train.profile_from={total - profiled + 1}"]
    cfg = load_config(preset, sets)
    shards = ArrayShards(batch * seq * (total + 1) + 1, cfg.model.vocab_size)
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        train(cfg, Pretrain(cfg, shards), run, build_model(cfg), progress=False)
        recs = read_metrics(run)
        breakdown = json.loads((run / "profile" / "breakdown.json").read_text())
    secs = [batch * seq / r["tokens_per_s"] for r in recs if "tokens_per_s" in r and 2 < r["step"] <= 2 + timed]
    return secs, breakdown


def main() -> None:
    """Print each part of a profiled training step in ms, as a share of the step and of (1 − MFU)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--eager", action="store_true", help="profile the eager step instead of the compiled one")
    ap.add_argument("--timed", type=int, default=6, help="unprofiled steps timed for the MFU")
    ap.add_argument("--profiled", type=int, default=4, help="profiled steps")
    ap.add_argument("--results", help="write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    cfg = load_config(args.preset)
    tokens = args.batch * args.seq
    step_flops = 3 * flops_per_token(cfg.model, args.seq // 2) * tokens
    peak = matmul_peak()
    secs, b = profiled_run(args.preset, args.batch, args.seq, not args.eager, args.timed, args.profiled)
    peak = max(peak, matmul_peak())  # before and after, best of both (as bench_train.py)
    ideal_ms = step_flops / peak * 1e3
    best_ms = min(secs) * 1e3
    ms = b["ms_per_step"]
    mm_ms = ms.get("fwd_bwd.matmul", 0.0)
    mm_gflops = b["fwd_bwd_matmul_flops_per_step"] / (mm_ms / 1e3) / 1e9 if mm_ms else 0.0
    kind = "eager" if args.eager else "compiled"
    print(f"{args.preset}, {kind} AdamW, batch {args.batch}×{args.seq}, fp32, {torch.get_num_threads()} threads; "
          f"peak (torch.mm 2048²) {peak / 1e9:.1f} GFLOP/s")
    print(f"unprofiled step: best {best_ms:.0f} ms → MFU {ideal_ms / best_ms:.3f}; the model's FLOPs at peak take "
          f"{ideal_ms:.0f} ms")
    print(f"profiled step: {ms['step']:.0f} ms (the profiler's own cost included)")
    rows = [("matmuls (fwd + bwd)", mm_ms), ("attention (SDPA fwd + bwd)", ms.get("fwd_bwd.attention", 0.0)),
            ("compiled fused kernels", ms.get("fwd_bwd.compiled", 0.0)),
            ("other ops of fwd + bwd", ms.get("fwd_bwd.other", 0.0)),
            ("optimizer step", ms.get("optimizer.total", 0.0)), ("loop outside the two", ms["loop_outside_regions"])]
    print(f"{'part':32s}{'ms/step':>9s}{'share':>8s}")
    for name, v in rows:
        print(f"{name:32s}{v:9.1f}{v / ms['step']:8.2f}")
    print(f"matmuls in the step: {mm_gflops:.1f} GFLOP/s = {mm_gflops / (peak / 1e9):.2f} of peak; "
          f"MFU if nothing but matmuls and attention ran: {ideal_ms / (mm_ms + ms.get('fwd_bwd.attention', 0.0)):.2f}")
    shapes = []
    print(f"{'matmul (shapes)':60s}{'calls':>6s}{'ms':>7s}{'in step':>9s}{'alone':>8s} GFLOP/s")
    for row in b["matmul_shapes"][:8]:
        alone = None
        if row["op"].startswith("aten::mm "):  # input shapes [[m, k], [k, n]] (and the out= tensor's)
            (m, k), (_, n) = row["shapes"][0], row["shapes"][1]
            alone = mm_flops(m, k, n, reps=20) / 1e9
        shapes.append({**row, "alone_gflops": alone})
        print(f"{row['op'][:60]:60s}{row['calls_per_step']:6.0f}{row['ms_per_step']:7.1f}{row['gflops']:9.1f}"
              f"{alone if alone is not None else float('nan'):8.1f}")
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "profile_train", {
            "peak_gflops": peak / 1e9, "best_step_ms": best_ms, "mfu_best": ideal_ms / best_ms, "ideal_ms": ideal_ms,
            "profiled_ms_per_step": ms, "matmul_gflops_in_step": mm_gflops, "matmul_shapes": shapes},
            seed=None, split=None, notes=f"preset {args.preset}, {kind} AdamW, batch {args.batch}x{args.seq}, fp32, "
                                         f"{torch.get_num_threads()} threads; random token ids")


if __name__ == "__main__":
    main()

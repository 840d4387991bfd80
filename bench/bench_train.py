"""Whole-loop pretraining throughput: tokens/s and model-FLOPs utilisation (MFU) of `scratchlm`'s
training loop, against (a) the measured fp32 matmul peak of this machine and (b) the same training
step written plainly around transformers' LlamaForCausalLM with the same weights.

    python bench/bench_train.py [--preset minimind-26m] [--batch 4] [--seq 256] [--steps 6] [--results FILE]

Four variants of our loop in one run: eager and compiled (train.compile: the blocks under torch.compile), each
with AdamW and with Muon (train.optimizer=muon), so their ratios share one machine state.

Our number includes everything the loop does per step (data windows from shards, lr schedule,
autocast context, loss check, clipping, fused AdamW, metrics); the reference is a bare
forward + CE + backward + AdamW step. MFU = 3 × forward FLOPs/token (scratchlm.model.info, at the mean
causal context T/2) × tokens/s ÷ peak, where peak = best torch.mm GFLOP/s at 2048² in the same dtype and
thread count. The machine may be shared: the two sides alternate in rounds, and the best step of each (like the
peak, and like timeit's minimum: the step least disturbed by other tenants) is printed beside the median.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it, see scratchlm/__init__.py)

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scratchlm.config import load_config
from scratchlm.export.hf_mapping import hf_model
from scratchlm.model.info import flops_per_token
from scratchlm.results import matmul_peak
from scratchlm.runs import build_model, read_metrics
from scratchlm.train.loop import train
from scratchlm.train.objectives import Pretrain


class ArrayShards:
    """Random token ids in memory with the Shards read API (the data path is still the loop's)."""

    def __init__(self, n_tokens: int, vocab: int) -> None:
        self.ids = np.random.default_rng(0).integers(0, vocab, size=n_tokens).astype(np.uint16)
        self.n_tokens, self.kind, self.meta = n_tokens, "pretrain", {"vocab_size": vocab}
        self.doc_starts = np.array([0])

    def read(self, start: int, length: int) -> np.ndarray:
        return self.ids[start:start + length]

    def read_mask(self, start: int, length: int) -> None:
        return None


class HFStep:
    """A bare transformers training step (fwd + CE + bwd + AdamW) on the same weights, built once."""

    def __init__(self, model: torch.nn.Module, batch: int, seq: int) -> None:
        self.hf = hf_model(model).train()
        self.step_fn = self.hf
        self.opt = torch.optim.AdamW(self.hf.parameters(), lr=1e-4, weight_decay=0.1)
        self.ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
        self.warm = 1

    def times(self, steps: int) -> list[float]:
        """Seconds of each of `steps` steps (after the first warm-up call)."""
        out = []
        for i in range(steps + self.warm):
            t = time.perf_counter()
            logits = self.step_fn(input_ids=self.ids[:, :-1], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), self.ids[:, 1:].flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            out.append(time.perf_counter() - t)
        self.warm = 0  # later rounds reuse the warm model and AdamW state
        return out[len(out) - steps:]


VARIANTS = {"eager adamw": (False, "adamw"), "compiled adamw": (True, "adamw"), "eager muon": (False, "muon"),
            "compiled muon": (True, "muon")}


def ours_times(preset: str, batch: int, seq: int, steps: int, compile: bool = False, optimizer: str = "adamw") -> list[float]:
    """Seconds of each step of scratchlm's loop, read from its own metrics.jsonl (first 2 steps skipped: compiling)."""
    sets = [f"train.batch_size={batch}", f"train.seq_len={seq}", f"train.max_steps={steps + 2}", "train.log_every=1",
            "train.eval_every=0", "train.save_every=0", "train.warmup_steps=1", f"train.compile={str(compile).lower()}",
            f"train.optimizer={optimizer}"]
    cfg = load_config(preset, sets)
    shards = ArrayShards(batch * seq * (steps + 3) + 1, cfg.model.vocab_size)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Pretrain(cfg, shards), Path(d) / "run", build_model(cfg), progress=False)
        recs = read_metrics(Path(d) / "run")
    return [batch * seq / r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r["step"] > 2]


def main() -> None:
    """Print tokens/s and MFU of each variant of our loop and of transformers (best and median step), with ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round and side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (transformers, ours ×4, peak)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--results", help="write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    cfg = load_config(args.preset)
    threads = torch.get_num_threads()
    train_flops = 3 * flops_per_token(cfg.model, args.seq // 2)  # forward + backward (2×)
    model = build_model(cfg)
    ref = HFStep(model, args.batch, args.seq)
    peak, times = 0.0, {"transformers Llama (bare, eager)": [], **{v: [] for v in variants}}
    for _ in range(args.rounds):  # alternate, so drift of a shared machine hits every side alike
        peak = max(peak, matmul_peak())
        times["transformers Llama (bare, eager)"] += ref.times(args.steps)
        for v in variants:
            times[v] += ours_times(args.preset, args.batch, args.seq, args.steps, *VARIANTS[v])
    tokens = args.batch * args.seq
    print(f"preset {args.preset}, batch {args.batch}×{args.seq}, fp32, {threads} threads, "
          f"{model.num_params() / 1e6:.1f}M params, {train_flops / 1e6:.0f} MFLOP/token (train), "
          f"{args.rounds} rounds × {args.steps} steps each side")
    print(f"matmul peak (torch.mm 2048², best of {args.rounds * 5}): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'':34s}{'best step':>22s}{'median step':>24s}{'vs eager adamw':>18s}")
    base = times.get("eager adamw")
    numbers = {"peak_gflops": peak / 1e9, "tokens_per_step": tokens, "variants": {}}
    for name, ts in times.items():
        best, med = tokens / min(ts), tokens / statistics.median(ts)
        ratio = f"{min(base) / min(ts):8.2f}× best" if base else ""
        print(f"{name:34s}{best:8.0f} tok/s MFU {best * train_flops / peak:.3f}"
              f"{med:10.0f} tok/s MFU {med * train_flops / peak:.3f}  {ratio}")
        numbers["variants"][name] = {"best_tok_s": best, "median_tok_s": med, "best_mfu": best * train_flops / peak,
                                     "median_mfu": med * train_flops / peak}
    if base:
        hf = times["transformers Llama (bare, eager)"]
        print(f"ratio eager adamw / transformers: {min(hf) / min(base):.2f}× best, "
              f"{statistics.median(hf) / statistics.median(base):.2f}× median   (MFU goal for compiled: ≥ 0.90)")
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_train", numbers, seed=None, split=None,
                      notes=f"preset {args.preset}, batch {args.batch}x{args.seq}, fp32, {threads} threads; random "
                            "token ids; MFU = 3 x forward FLOPs/token x tok/s / best torch.mm 2048^2")


if __name__ == "__main__":
    main()

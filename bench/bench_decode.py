"""Decode speed: our `LLM` front (engine/offline.py) with its KV cache vs recomputing the prefix, and vs transformers' generate().

    python bench/bench_decode.py [--preset minimind-26m] [--new 128] [--threads N] [--profile]

1. cache vs no cache at 512 context: tokens/s of the cached decode step (prefill excluded) against one
   full forward over the whole prefix per token (what decoding without a cache costs), at the same
   positions (context ≈ 448…512). Goal ≥ 10×.
2. ours vs transformers: greedy, batch 1, the same config and weights copied into LlamaForCausalLM
   (scratchlm.export.hf_mapping), `LLM.generate` vs `LlamaForCausalLM.generate` (both end to end,
   prefill included, eos disabled so both produce exactly --new tokens). Goal ≥ 2×.
3. the two floors of batch-1 decode, where every weight is read once per token:
   - software floor: one `F.linear` per weight matrix and nothing else (the speed of torch's GEMV kernel);
   - physical floor: the bytes of those matrices over the machine's read bandwidth, measured in the same run
     by bench/stream.py (STREAM-style). Decode is reported as a share of both.
4. --profile: torch.profiler table of our decode steps (where the time per token goes).
--results FILE writes every number with its provenance (scratchlm.results).

Both sides run alternately in one process and the median of --repeats is kept, so the printed ratios
are comparable on a loaded machine; absolute tokens/s are not.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it, see scratchlm/__init__.py)

import argparse
import statistics
import time

import torch

from stream import measure_bandwidth  # bench/stream.py, beside this file

from scratchlm.config import load_config
from scratchlm.engine.offline import LLM
from scratchlm.engine.sampling import SamplingParams
from scratchlm.model.transformer import Transformer


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@torch.inference_mode()
def cache_vs_recompute(model: Transformer, ctx: int, n_new: int, n_slow: int, repeats: int) -> tuple[float, float]:
    """(cached decode tok/s, no-cache tok/s) for the last n_new positions before ctx."""
    prompt = torch.randint(0, model.config.vocab_size, (1, ctx - n_new))
    cache = model.new_cache(1, ctx)

    def cached() -> None:
        cache.reset()
        logits = model(prompt, cache=cache).logits[:, -1]
        t0 = time.perf_counter()
        for _ in range(n_new):
            nxt = logits.argmax(-1, keepdim=True)
            logits = model(nxt, cache=cache).logits[:, -1]
        cached.elapsed = time.perf_counter() - t0  # decode only

    def recompute() -> None:
        seq = prompt
        for _ in range(n_slow):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)

    fast, slow = [], []
    for _ in range(repeats):
        cached()
        fast.append(n_new / cached.elapsed)
        slow.append(n_slow / _time(recompute, 1)[0])
    return statistics.median(fast), statistics.median(slow)


@torch.inference_mode()
def ours_vs_transformers(model: Transformer, n_prompt: int, n_new: int, repeats: int) -> tuple[float, float, bool]:
    """(our tok/s, transformers tok/s, same tokens?) for greedy generate, batch 1."""
    from scratchlm.export.hf_mapping import hf_model

    hf = hf_model(model)
    engine = LLM(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, n_prompt))
    params = SamplingParams(temperature=0, max_new_tokens=n_new)
    ours_out = hf_out = None

    def ours() -> None:
        nonlocal ours_out
        ours_out = engine.generate([prompt[0].tolist()], params)[0]

    def theirs() -> None:
        nonlocal hf_out
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                          min_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0)
        hf_out = out[0, n_prompt:].tolist()

    ours(), theirs()  # warm up both (allocations, first-call costs)
    t_ours, t_hf = [], []
    for _ in range(repeats):
        t_ours += _time(ours, 1)
        t_hf += _time(theirs, 1)
    return n_new / statistics.median(t_ours), n_new / statistics.median(t_hf), ours_out == hf_out


@torch.inference_mode()
def matmul_floor(model: Transformer, repeats: int) -> float:
    """tok/s if a decode step did nothing but multiply one token by every weight matrix once.

    At batch 1 a decode step streams every weight from memory once (fp32: 4 bytes per parameter), so
    this bounds any implementation on this machine, ours and transformers' alike."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {m.in_features: torch.randn(1, m.in_features) for m in linears}

    def step() -> None:
        for m in linears:
            torch.nn.functional.linear(x[m.in_features], m.weight)

    n = 16
    step()
    return n / statistics.median(_time(lambda: [step() for _ in range(n)], repeats))


@torch.inference_mode()
def profile_decode(model: Transformer, n_steps: int = 32) -> None:
    """Print where a decode step spends its time."""
    from torch.profiler import ProfilerActivity, profile

    cache = model.new_cache(1, 64 + n_steps)
    logits = model(torch.randint(0, model.config.vocab_size, (1, 64)), cache=cache).logits[:, -1]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n_steps):
            logits = model(logits.argmax(-1, keepdim=True), cache=cache).logits[:, -1]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    """Run the benchmarks and print ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--ctx", type=int, default=512, help="context for cache vs recompute")
    ap.add_argument("--new", type=int, default=64, help="new tokens per generate")
    ap.add_argument("--slow-tokens", type=int, default=8, help="tokens decoded without cache (each costs a full forward)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--stream-mb", type=int, default=512, help="MB per buffer of the bandwidth measurement")
    ap.add_argument("--results", default=None, metavar="FILE", help="write the numbers to FILE (docs/results/...)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.preset, [f"model.max_seq_len={max(args.ctx, 512)}"]).model
    model = Transformer(cfg).eval()
    print(f"{args.preset}: {model.num_params() / 1e6:.1f}M params, fp32, CPU threads={torch.get_num_threads()}")

    fast, slow = cache_vs_recompute(model, args.ctx, args.new, args.slow_tokens, args.repeats)
    print(f"[1] decode at context {args.ctx - args.new}..{args.ctx}: KV cache {fast:8.1f} tok/s | "
          f"recompute prefix {slow:6.2f} tok/s | ratio {fast / slow:6.1f}x (goal >= 10x)")

    ours, theirs, same = ours_vs_transformers(model, 32, args.new, args.repeats)
    print(f"[2] greedy generate, batch 1, 32-token prompt + {args.new} new: ours {ours:7.1f} tok/s | "
          f"transformers LlamaForCausalLM {theirs:7.1f} tok/s | ratio {ours / theirs:5.2f}x (goal >= 2x) | "
          f"same tokens: {same}")
    floor = matmul_floor(model, args.repeats)
    mb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) * 4 / 1e6
    print(f"[3] software floor, one GEMV per weight matrix ({mb:.0f} MB of fp32 read once per token): {floor:7.1f} tok/s; "
          f"ours reaches {ours / floor:4.0%} of it, transformers {theirs / floor:4.0%}")
    bw = measure_bandwidth(args.stream_mb)
    physical = bw["read"] * 1e3 / mb
    print(f"    memory bandwidth (bench/stream.py): read {bw['read']:.1f} GB/s, copy {bw['copy']:.1f}, triad "
          f"{bw['triad']:.1f}; physical floor = {mb:.0f} MB / read bandwidth = {physical:7.1f} tok/s: ours reaches "
          f"{ours / physical:4.0%} of it, transformers {theirs / physical:4.0%}, the GEMV pass {floor / physical:4.0%}")
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_decode", {
            "preset": args.preset, "params": model.num_params(), "weights_mb": mb, "new_tokens": args.new,
            "cached_tok_s": fast, "recompute_tok_s": slow, "ours_tok_s": ours, "transformers_tok_s": theirs,
            "same_tokens": same, "gemv_floor_tok_s": floor, "bandwidth_gb_s": bw, "physical_floor_tok_s": physical})
    if args.profile:
        profile_decode(model)


if __name__ == "__main__":
    main()

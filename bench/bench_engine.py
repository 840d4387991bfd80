"""The serving engine (LLMEngine: paged KV cache, continuous batching, prefix caching) against its references.

    python bench/bench_engine.py [--preset minimind-26m] [--new 64] [--threads N] [--repeats 5] [--no-compile]

1. batch-1 greedy decode: LLMEngine vs a bare greedy loop on the contiguous KVCache (the previous engine's
   design, without its sampling and bookkeeping) vs the weights-only floor (each weight matrix read once per
   token, bench_decode's [3]). Goal: ≥ 0.8 of the floor, no slower than the contiguous loop. The same for
   LLMEngine(compile=True) (`serve --compile`: the decode step compiled, weights frozen), unless --no-compile.
2. aggregate generated tokens/s of 1, 4 and 16 requests scheduled together (greedy, --new tokens each), eager
   and compiled. Goal: 16 ≥ 4× the aggregate of 1.
3. KV memory held by 16 requests of mixed lengths at their peak: blocks in use × block bytes, against 16
   contiguous caches of max_seq_len (what a contiguous-cache generator allocates per row). Goal ≤ 0.5×.
4. time to first token of a second chat turn (a long first turn already answered) with prefix caching on
   vs off.

Timings are medians of --repeats with both sides alternating in one process, so ratios hold on a loaded
machine; absolute numbers do not.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: OpenMP's wait policy, see scratchlm/__init__.py)

import argparse
import random
import statistics
import time

import torch

from scratchlm.config import load_config
from scratchlm.engine import LLMEngine
from scratchlm.engine.sampling import SamplingParams
from scratchlm.model.cache import bytes_per_token
from scratchlm.model.transformer import Transformer


def _median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 1000) for _ in range(n)]


@torch.inference_mode()
def contiguous_greedy(model: Transformer, prompt: list[int], n_new: int) -> list[int]:
    """Prefill + argmax decode on one pre-allocated contiguous KVCache: the reference for [1]."""
    cache = model.new_cache(1, len(prompt) + n_new)
    logits = model(torch.tensor([prompt]), cache=cache).logits[:, -1]
    out = []
    for _ in range(n_new):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits = model(nxt, cache=cache).logits[:, -1]
    return out


def _engines(model: Transformer, compiled: bool, **kw) -> dict[str, LLMEngine]:
    """{"eager": engine, "compiled": engine (warmed up)} with the same settings; "compiled" only if asked."""
    out = {"eager": LLMEngine(model, prefix_caching=False, **kw)}
    if compiled:
        out["compiled"] = LLMEngine(model, prefix_caching=False, compile=True, **kw)
        t = time.perf_counter()
        out["compiled"].warmup()
        print(f"    (compiled the decode step in {time.perf_counter() - t:.0f} s)")
    return out


@torch.inference_mode()
def batch1(model: Transformer, n_new: int, repeats: int, compiled: bool) -> tuple[dict[str, float], float, float, bool]:
    """({engine: tok/s}, contiguous loop tok/s, floor tok/s, same tokens everywhere?) for greedy batch-1 decode;
    every side runs once per round, rounds alternate, medians reported."""
    from bench_decode import matmul_floor

    p = SamplingParams(temperature=0, max_new_tokens=n_new, stop_ids=[-1])
    prompt = _prompt(32, 0)
    engines = _engines(model, compiled)
    ref = contiguous_greedy(model, prompt, n_new)
    same = all(e.generate([prompt], p)[0] == ref for e in engines.values())  # also warms every side up
    times: dict[str, list[float]] = {name: [] for name in [*engines, "loop", "floor"]}
    for _ in range(repeats):
        for name, e in engines.items():
            times[name].append(_median_time(lambda: e.generate([prompt], p), 1))
        times["loop"].append(_median_time(lambda: contiguous_greedy(model, prompt, n_new), 1))
        times["floor"].append(1 / matmul_floor(model, 1))
    rate = {name: n_new / statistics.median(t) for name, t in times.items()}
    return {name: rate[name] for name in engines}, rate["loop"], 1 / statistics.median(times["floor"]), same


@torch.inference_mode()
def concurrency(model: Transformer, n_new: int, repeats: int, compiled: bool,
                counts=(1, 4, 16)) -> dict[str, dict[int, float]]:
    """Aggregate generated tok/s with k requests scheduled together, for each k in counts, per engine."""
    p = SamplingParams(temperature=0, max_new_tokens=n_new, stop_ids=[-1])
    out: dict[str, dict[int, float]] = {}
    for name, eng in _engines(model, compiled, max_num_seqs=max(counts)).items():
        out[name] = {}
        for k in counts:
            prompts = [_prompt(32, i) for i in range(k)]
            eng.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=2))
            out[name][k] = k * n_new / _median_time(lambda: eng.generate(prompts, p), repeats)
    return out


@torch.inference_mode()
def kv_memory(model: Transformer, block_size: int = 16) -> tuple[int, int]:
    """(peak paged KV bytes, contiguous KV bytes) for 16 requests of mixed prompt and output lengths."""
    cfg = model.config
    rng = random.Random(0)
    eng = LLMEngine(model, prefix_caching=False, block_size=block_size)
    handles = []
    for i in range(16):
        n_prompt = rng.randrange(16, cfg.max_seq_len // 2)
        n_new = rng.randrange(8, cfg.max_seq_len // 4)
        handles.append(eng.submit(_prompt(n_prompt, i), SamplingParams(temperature=0, max_new_tokens=n_new,
                                                                       stop_ids=[-1])))
    peak = 0
    while not all(h.finished for h in handles):
        eng.step()
        peak = max(peak, eng.pool.num_used())
    per_token = bytes_per_token(cfg)
    return peak * block_size * per_token, 16 * cfg.max_seq_len * per_token


@torch.inference_mode()
def second_turn_ttft(model: Transformer, first_turn: int, repeats: int) -> tuple[float, float]:
    """(TTFT with prefix caching, TTFT without) of a second turn after a first_turn-token conversation."""
    history = _prompt(first_turn, 1)
    second = history + _prompt(24, 2)
    one = SamplingParams(temperature=0, max_new_tokens=1, stop_ids=[-1])
    out = []
    for caching in (True, False):
        eng = LLMEngine(model, prefix_caching=caching)

        def turn() -> None:
            eng.generate([second], one)

        eng.generate([history], one)  # the first turn fills the cache
        out.append(_median_time(turn, repeats))
    return out[0], out[1]


def main() -> None:
    """Run the benchmarks and print ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--no-compile", action="store_true", help="skip LLMEngine(compile=True) (it compiles ~1 min)")
    ap.add_argument("--results", help="write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.preset, ["model.max_seq_len=512"]).model
    model = Transformer(cfg).eval()
    print(f"{args.preset}: {model.num_params() / 1e6:.1f}M params, fp32, CPU threads={torch.get_num_threads()}")

    rates, old, floor, same = batch1(model, args.new, args.repeats, not args.no_compile)
    new = rates["eager"]
    print(f"[1] batch-1 greedy decode, 32-token prompt + {args.new} new: LLMEngine {new:7.1f} tok/s | contiguous-cache "
          f"loop {old:7.1f} tok/s | ratio {new / old:4.2f}x (goal >= 1) | weights-only floor {floor:7.1f} tok/s: "
          f"LLMEngine at {new / floor:4.0%} (goal >= 80%), the loop at {old / floor:4.0%} | same tokens: {same}")
    if "compiled" in rates:
        c = rates["compiled"]
        print(f"    LLMEngine(compile=True) {c:7.1f} tok/s: {c / new:4.2f}x the eager engine, at {c / floor:4.0%} of "
              f"the floor (goal >= 80%)")
    agg = concurrency(model, args.new, args.repeats, not args.no_compile)
    for name, a in agg.items():
        print(f"[2] aggregate greedy tok/s, {name:8s}: " + " | ".join(f"{k} streams {v:7.1f}" for k, v in a.items())
              + f" | 16 vs 1: {a[16] / a[1]:4.1f}x (goal >= 4x)")
    if "compiled" in agg:
        print(f"    16 streams compiled vs eager: {agg['compiled'][16] / agg['eager'][16]:4.2f}x")
    paged, contiguous = kv_memory(model)
    print(f"[3] KV memory of 16 mixed-length requests: paged peak {paged / 1e6:6.1f} MB | contiguous "
          f"16 x max_seq_len {contiguous / 1e6:6.1f} MB | ratio {paged / contiguous:4.2f} (goal <= 0.5)")
    on, off = second_turn_ttft(model, 400, args.repeats)
    print(f"[4] second chat turn after 400 tokens, time to first token: prefix caching {on * 1e3:6.1f} ms | "
          f"without {off * 1e3:6.1f} ms | {off / on:4.1f}x faster")
    if args.results:
        from scratchlm.results import write_results

        numbers = {"preset": args.preset, "params": model.num_params(), "new_tokens": args.new,
                   "batch1_tok_s": rates, "contiguous_loop_tok_s": old, "gemv_floor_tok_s": floor, "same_tokens": same,
                   "aggregate_tok_s": {name: {str(k): v for k, v in a.items()} for name, a in agg.items()},
                   "kv_paged_bytes": paged, "kv_contiguous_bytes": contiguous,
                   "second_turn_ttft_s": {"prefix_caching": on, "without": off}}
        write_results(args.results, "bench_engine", numbers,
                      notes=f"medians of {args.repeats} repeats, both sides alternating in one process; "
                            f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()

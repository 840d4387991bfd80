"""Rollout throughput as GRPO samples it: G completions × P prompts through our LLMEngine vs transformers' generate.

    python bench/bench_rollout.py [--preset tiny] [--prompts 16] [--g 8] [--new 64] [--repeats 3] [--threads N]
    python bench/bench_rollout.py --run /work/exp/R1/sft --prompts-file /work/exp/R1/data/synth/prompt_val.jsonl
    python bench/bench_rollout.py --quick      # a smoke run in a few seconds

Both sides sample the same batch with temperature 1 on the same weights:
- ours: one `LLMEngine(model, tokenizer, prefix_caching=False, max_num_seqs=P·G)` for every rollout, one
  `submit(prompt, n=G)` per prompt (G samples share one prefill), then `step()` until every handle finishes: what
  train/rollout.py does.
- transformers: the weights written by `scratchlm.export.hf.export_hf`, loaded with `AutoModelForCausalLM`, one
  `generate(do_sample=True, num_return_sequences=G)` over the P prompts left-padded as one batch (use_cache=True).
Generated tokens are counted per row up to and including the stop token (RL trains on it). Without --run the model
has random weights: then neither side has a stop token (our engine gets no tokenizer, transformers eos_token_id=None)
so every row generates exactly --new tokens and the two do the same work. With --run, a chat model stops at
<|im_end|>: our engine retires a finished row at once, transformers' batch keeps computing it until the last row ends.

Timings are medians of --repeats with both sides alternating in one process (same dtype fp32, same torch threads),
so the ratio holds on a loaded machine; absolute tokens/s do not.
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: OpenMP's wait policy, see scratchlm/__init__.py)

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scratchlm.engine import LLMEngine
from scratchlm.engine.sampling import SamplingParams


def _random_run(root: Path, preset: str, seed: int) -> Path:
    """A run folder with a randomly initialised `preset` model and a small tokenizer (export_hf needs one)."""
    from scratchlm.config import load_config
    from scratchlm.model.transformer import Transformer
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import train_tokenizer

    text = root / "t.txt"
    text.write_text("What is 3 plus 4? <think>3+4=7</think>7 the cat sat on the mat\n" * 20, encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=300, inputs=[text], show_progress=False)
    cfg = load_config(preset)
    torch.manual_seed(seed)
    save_run(root / "run", Transformer(cfg.model), cfg, tok_dir)
    return root / "run"


def _random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    """n prompts of 16…48 random ids (mixed lengths, so transformers pads on the left as it would for chats)."""
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randrange(16, 49))] for _ in range(n)]


def _chat_prompts(path: Path, tokenizer, n: int) -> list[list[int]]:
    """The first n prompts of a prompts .jsonl (as `scratchlm prepare --kind prompt` reads them), chat-encoded."""
    from scratchlm.data.jsonl import iter_prompt_records

    out = []
    for _, messages, _ in iter_prompt_records(path.read_text(encoding="utf-8").splitlines(), path):
        out.append(tokenizer.encode_chat(messages, add_generation_prompt=True)[0])
        if len(out) == n:
            return out
    raise ValueError(f"{path}: only {len(out)} prompts, --prompts asks for {n}")


def _count(rows: list[list[int]], stop: set[int]) -> int:
    """Generated tokens per row up to and including the first stop id, summed."""
    total = 0
    for r in rows:
        n = len(r)
        for i, t in enumerate(r):
            if t in stop:
                n = i + 1
                break
        total += n
    return total


@torch.inference_mode()
def ours(eng: LLMEngine, prompts: list[list[int]], G: int, n_new: int, seed: int) -> int:
    """One rollout through the engine as train/rollout.py drives it; returns generated tokens (stop ids included)."""
    handles = [eng.submit(p, SamplingParams(temperature=1.0, max_new_tokens=n_new, keep_stop_id=True,
                                            seed=seed + k * G), n=G) for k, p in enumerate(prompts)]
    while not all(h.finished for h in handles):
        eng.step()
    return sum(len(ids) for h in handles for ids in h.token_ids)


@torch.inference_mode()
def theirs(hf, prompts: list[list[int]], G: int, n_new: int, seed: int, eos: int | None, pad: int) -> int:
    """One left-padded `generate` over every prompt with G samples each; returns generated tokens up to eos."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    torch.manual_seed(seed)
    out = hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                      num_return_sequences=G, max_new_tokens=n_new, eos_token_id=eos, pad_token_id=pad, use_cache=True)
    return _count(out[:, L:].tolist(), {eos} if eos is not None else set())


def main() -> None:
    """Measure both sides alternately and print tokens/s and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="model shape with random weights (without --run)")
    ap.add_argument("--run", type=Path, help="a trained run folder (real weights, its tokenizer; rows stop at eos)")
    ap.add_argument("--prompts-file", type=Path, help="prompts .jsonl for --run (default: random ids)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--g", type=int, default=8, help="completions per prompt (rl.num_generations)")
    ap.add_argument("--new", type=int, default=64, help="max_new_tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, help="also write the numbers to this JSON file (scratchlm.results)")
    ap.add_argument("--quick", action="store_true", help="smoke run: debug preset, 4 prompts × 4, 16 tokens, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.preset = "debug" if args.run is None else args.preset
        args.prompts, args.g, args.new, args.repeats = 4, 4, 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from scratchlm.export.hf import EOS_TOKEN_ID, PAD_TOKEN_ID, export_hf
    from scratchlm.runs import load_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or _random_run(tmp, args.preset, args.seed)
        model, tokenizer, cfg = load_run(run)
        model = model.float().eval()
        hf = AutoModelForCausalLM.from_pretrained(export_hf(run, tmp / "hf"), dtype=torch.float32).eval()
    if args.run is None:
        tokenizer, eos = None, None  # random weights: no stop token on either side, every row runs to --new
        prompts = _random_prompts(args.prompts, int(cfg.model.vocab_size), args.seed)
        what = f"{args.preset}, random weights: no stop token, every row generates max_new_tokens on both sides"
    else:
        eos = EOS_TOKEN_ID
        if args.prompts_file is not None:
            prompts = _chat_prompts(args.prompts_file, tokenizer, args.prompts)
        else:
            prompts = _random_prompts(args.prompts, int(cfg.model.vocab_size), args.seed)
        what = f"{args.run} (trained weights, rows stop at <|im_end|>)"
    P, G, n_new = len(prompts), args.g, args.new
    print(f"model: {what}; {model.num_params() / 1e6:.1f}M params, fp32, CPU threads={torch.get_num_threads()}")
    print(f"batch: {P} prompts ({min(map(len, prompts))}..{max(map(len, prompts))} tokens) × G={G} completions, "
          f"temperature 1.0, max_new_tokens={n_new}, median of {args.repeats} repeats (sides alternate)")

    # one engine (and KV pool) for every rollout, as a GRPO run keeps it
    eng = LLMEngine(model, tokenizer, prefix_caching=False, max_num_seqs=P * G, max_waiting=P)
    ours(eng, prompts[:2], 2, 4, args.seed)  # warm-up: allocations, first-call costs
    theirs(hf, prompts[:2], 2, 4, args.seed, eos, PAD_TOKEN_ID)
    rates: dict[str, list[float]] = {"ours": [], "transformers": []}
    tokens: dict[str, list[int]] = {"ours": [], "transformers": []}
    for r in range(args.repeats):
        seed = args.seed + 1000 * (r + 1)
        for name, fn in (("ours", lambda: ours(eng, prompts, G, n_new, seed)),
                         ("transformers", lambda: theirs(hf, prompts, G, n_new, seed, eos, PAD_TOKEN_ID))):
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))
            tokens[name].append(n)
    a, b = statistics.median(rates["ours"]), statistics.median(rates["transformers"])
    print(f"ours (LLMEngine, n={G} per prompt)        {a:8.1f} tok/s  (tokens per rollout: {tokens['ours']})")
    print(f"transformers generate (num_return_sequences={G}) {b:8.1f} tok/s  (tokens per rollout: "
          f"{tokens['transformers']})")
    print(f"ratio ours / transformers: {a / b:5.2f}x")
    numbers = {"ours_tok_s": round(a, 1), "transformers_tok_s": round(b, 1), "ratio": round(a / b, 3),
               "prompts": P, "G": G, "max_new_tokens": n_new, "threads": torch.get_num_threads(),
               "model": str(args.run) if args.run else f"{args.preset}, random weights", "stops_at_eos": eos is not None,
               "tokens": tokens, "repeats": args.repeats}
    print(json.dumps(numbers))
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_rollout", numbers, seed=args.seed,
                      notes="medians of repeats with both sides alternating in one process: the ratio holds on a "
                            "loaded machine, absolute tokens/s do not")


if __name__ == "__main__":
    main()

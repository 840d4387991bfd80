"""Does GRPO's memory stay flat? Resident memory (rss_mb, logged by the training loop) at step 10 vs step 100.

    python bench/bench_rl_memory.py [--steps 110] [--preset tiny] [--batch 4] [--g 8] [--new 32] [--beta 0.04]
    python bench/bench_rl_memory.py --init-from /work/exp/R1/sft --prompts /work/exp/R1/data/synth/prompt_train.jsonl

A real GRPO run through the public entry (`scratchlm.train.cli.train_stage("grpo", ...)`: the loop, rollouts through
the engine, rewards, the reference model when --beta > 0, the optimizer) for --steps steps, logging every 10. Without
--init-from it first makes everything it needs in a temporary folder: a small tokenizer, addition prompts
(`prepare --kind prompt`) and a randomly initialised --preset model as the SFT run. Rewards are the config's
default (answer, format): a random model earns none, so nothing teaches it to stop and its completions stay near
max_new_tokens, varying in length from row to row and step to step (the most memory per step; a fragmenting
allocator would show). With a trained run (--init-from) the rewards and lengths are real ones. The goal, from
the RL issue: RSS after step 100 within 5% of RSS after step 10 (ratio ≤ 1.05). Memory, not time: a loaded machine
does not change the result.
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


def _addition_prompts(path: Path, n: int, seed: int) -> Path:
    """n "What is a plus b?" prompts with their answers, as `prepare --kind prompt` reads them."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            a, b = rng.randrange(10, 100), rng.randrange(10, 100)
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                                "answer": str(a + b), "task": "add2"}) + "\n")
    return path


def _checkable(src: Path, dst: Path) -> Path:
    """The records of src whose task the answer reward can grade (synth's prompt files also hold open-ended chats,
    on which `check_answer` raises)."""
    from scratchlm.data.open_tasks import is_checkable

    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines()
             if ln.strip() and is_checkable(json.loads(ln).get("task", ""))]
    dst.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return dst


def _random_sft_run(root: Path, preset: str, prompts: Path, seed: int) -> Path:
    """A run folder with a tokenizer trained on the prompts and a randomly initialised `preset` model of its vocab."""
    from scratchlm.config import load_config
    from scratchlm.model.transformer import Transformer
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    text = root / "tok.txt"
    recs = [json.loads(ln) for ln in prompts.read_text(encoding="utf-8").splitlines()]
    text.write_text("".join(f"{r['prompt'][0]['content']} <think>{r['answer']}</think>{r['answer']}\n" for r in recs),
                    encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=512, inputs=[text], show_progress=False)
    cfg = load_config(preset, [f"model.vocab_size={Tokenizer.load(tok_dir).vocab_size}"])
    torch.manual_seed(seed)
    return save_run(root / "sft", Transformer(cfg.model), cfg, tok_dir)


def main() -> None:
    """Run GRPO, read rss_mb from its metrics.jsonl, print step 10 vs step 100."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=110)
    ap.add_argument("--preset", default="tiny", help="model shape with random weights (without --init-from)")
    ap.add_argument("--init-from", type=Path, help="a trained SFT run (its tokenizer encodes --prompts)")
    ap.add_argument("--prompts", type=Path, help="prompts .jsonl with answers (default: generated additions)")
    ap.add_argument("--batch", type=int, default=4, help="prompts per step (train.batch_size)")
    ap.add_argument("--g", type=int, default=8, help="completions per prompt (rl.num_generations)")
    ap.add_argument("--new", type=int, default=32, help="rl.max_new_tokens")
    ap.add_argument("--beta", type=float, default=0.04, help="rl.beta (> 0 loads the reference model)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--keep", type=Path, help="write the run here instead of a temporary folder")
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides for the GRPO run")
    ap.add_argument("--results", type=Path, help="also write the numbers to this JSON file (scratchlm.results)")
    args = ap.parse_args()
    if args.steps < 100:
        ap.error("--steps must be at least 100 (step 100 is compared with step 10)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from scratchlm.shards.prepare import prepare
    from scratchlm.runs import read_metrics
    from scratchlm.train.stage import train_stage

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = _checkable(args.prompts, tmp / "prompts.jsonl") if args.prompts else \
            _addition_prompts(tmp / "prompts.jsonl", 400, 0)
        init = args.init_from or _random_sft_run(tmp, args.preset, prompts, 0)
        prepare("prompt", init, [prompts], tmp / "prompt_shards")
        out = args.keep or tmp / "grpo"
        sets = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", "train.log_every=1",
                "train.eval_every=0", f"train.save_every={args.steps}", "train.warmup_steps=5", "train.lr=1e-4",
                f"rl.num_generations={args.g}", f"rl.max_new_tokens={args.new}", f"rl.beta={args.beta}",
                *args.set]
        print(f"GRPO from {args.init_from or f'a random {args.preset} model'}: {args.steps} steps of {args.batch} "
              f"prompts × G={args.g}, max_new_tokens={args.new}, beta={args.beta}, CPU threads={torch.get_num_threads()}")
        t = time.perf_counter()
        res = train_stage("grpo", out, None, sets, str(tmp / "prompt_shards"), init, progress=False)
        recs = read_metrics(out)
    rss = {r["step"]: r["rss_mb"] for r in recs if "rss_mb" in r}
    lengths = {r["step"]: r.get("completion_length") for r in recs if "rss_mb" in r}
    print(f"{res.status} after {res.step} steps in {time.perf_counter() - t:.0f}s")
    every = [s for s in rss if s % 10 == 0]
    print("step      " + " ".join(f"{s:>7d}" for s in every))
    print("rss MB    " + " ".join(f"{rss[s]:7.1f}" for s in every))
    print("compl len " + " ".join(f"{lengths[s]:7.1f}" if lengths[s] is not None else "      -" for s in every))
    a, b = rss[10], rss[100]
    # One reading depends on the shape of the step just taken (the allocator keeps or returns freed blocks), so the
    # medians of the ten readings around each step are printed too: a leak moves them as much as the single values.
    ma, mb = statistics.median(rss[s] for s in range(6, 16)), statistics.median(rss[s] for s in range(96, 106))
    lo, hi = min(rss[s] for s in range(10, 101)), max(rss[s] for s in range(10, 101))
    print(f"RSS after step 10 {a:.1f} MB | after step 100 {b:.1f} MB | ratio {b / a:.3f} (goal <= 1.05)")
    print(f"median of steps 6-15 {ma:.1f} MB | of steps 96-105 {mb:.1f} MB | ratio {mb / ma:.3f}; "
          f"range over steps 10-100 {lo:.1f}..{hi:.1f} MB")
    numbers = {"rss_mb_step10": a, "rss_mb_step100": b, "ratio": round(b / a, 4), "median_rss_mb_steps_6_15": ma,
               "median_rss_mb_steps_96_105": mb, "median_ratio": round(mb / ma, 4), "steps": res.step,
               "rss_mb_range_10_100": [lo, hi], "init_from": str(args.init_from) if args.init_from else None,
               "preset": None if args.init_from else args.preset, "batch": args.batch, "g": args.g,
               "max_new_tokens": args.new, "beta": args.beta}
    print(json.dumps(numbers))
    if args.results:
        from scratchlm.results import write_results

        write_results(args.results, "bench_rl_memory", numbers, seed=0,
                      notes="resident memory, not time: a loaded machine does not change it")


if __name__ == "__main__":
    main()

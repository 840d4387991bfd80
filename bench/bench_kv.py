"""The int8 KV cache, measured: quality (greedy agreement with the fp32 pool, perplexity through the pool) and
capacity (bytes, and sequences that run at once at the same pool bytes).

    python bench/bench_kv.py [--demo /work/runs/demo0] [--split test|val] [--threads 1]
                             [--results docs/results/kv_int8.json]

--demo is a finished demo run folder (`scratchlm demo`): its sft/ and pretrain/ runs and data/synth/.
- chat agreement (the issue's goal): the SFT chat model answers every distinct prompt of the demo's held-out
  task file data/synth/prompt_{split}.jsonl (what the demo's eval reports on: `test`; `val` is the dev split to
  choose settings on), greedy, chat template, the demo's max_new_tokens (3× for the open-ended tasks, as
  eval/tasks.evaluate_tasks does), once through the fp32 pool and once through the int8 pool: per task, the
  share of prompts whose generated ids are identical, the share of generated tokens before the first difference,
  and the task accuracy (data/answers.check_answer) of each;
- raw-text agreement (stricter: a base model's near-tied logits): the pretrained model continues 24 windows of the
  corpus' validation text for 64 tokens (as bench_quant.py's kv_int8_agreement);
- through the pool, teacher-forced: the pretrained model reads validation windows one token per forward, every
  earlier token's keys and values coming back from an fp32 and an int8 pool in lockstep: each one's perplexity,
  the mean KL divergence of the int8 pool's next-token distribution from the fp32 pool's (the measure least
  subject to near-ties), and their top-1 agreement;
- capacity: an fp32 pool of --budget-blocks blocks sets a byte budget; the int8 pool gets as many blocks as fit in
  the same bytes (its tensors built and measured). Sequences of 48 validation-text prompt tokens + 80 new ones (no
  stop id: every one runs its full length; max_num_seqs high enough that the pool is the limit): the most that
  run together to the end without a preemption, found by running k of them at once (a bisection over k), and
  all --requests of them pushed through each engine (steps, tokens per step, preemptions, wall time).
"""

from __future__ import annotations

import scratchlm  # noqa: F401  (first: sets OpenMP's wait policy before torch loads it, see scratchlm/__init__.py)

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_quant import kv_agreement, validation_ids  # bench/bench_quant.py, beside this file

UNSEEN = " (unseen phrasings)"  # as eval/tasks.py keys held-out phrasings


def chat_prompts(tokenizer, prompt_file: Path, max_new: int, max_seq_len: int) -> dict[str, list[dict]]:
    """{task key: [{"ids", "answer", "task", "new"}]}: every distinct prompt of the file that fits the context,
    encoded as evaluate_tasks encodes them (cleaned, chat template, assistant turn opened)."""
    from scratchlm.data.clean import clean_messages
    from scratchlm.data.open_tasks import is_checkable

    by_task: dict[str, list[dict]] = defaultdict(list)
    seen: set[str] = set()
    for line in prompt_file.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        key = rec["task"] + (UNSEEN if rec.get("phrasing") == "unseen" else "")
        text = json.dumps(rec["prompt"], ensure_ascii=False)
        if text in seen:
            continue
        seen.add(text)
        new = max_new if is_checkable(rec["task"]) else 3 * max_new
        ids = list(tokenizer.encode_chat(clean_messages(rec["prompt"]), add_generation_prompt=True)[0])
        if len(ids) + new <= max_seq_len:
            by_task[key].append({"ids": ids, "answer": rec["answer"], "task": rec["task"], "new": new})
    return dict(sorted(by_task.items()))


def lead(want: list[int], got: list[int]) -> int:
    """Tokens of `want` before the first position where `got` differs."""
    return next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))


@torch.inference_mode()
def chat_agreement(model, tokenizer, by_task: dict[str, list[dict]]) -> dict[str, dict]:
    """Per task and in all: prompts identical, tokens before the first difference, accuracy fp32 / int8."""
    from scratchlm.data.answers import check_answer
    from scratchlm.data.open_tasks import is_checkable
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams

    engines = {d: LLM(model, tokenizer, kv_cache_dtype=d) for d in ("auto", "int8")}
    out: dict[str, dict] = {}
    tot = {"prompts": 0, "identical": 0, "lead": 0, "tokens": 0}
    for key, recs in by_task.items():
        params = SamplingParams(temperature=0.0, max_new_tokens=recs[0]["new"])
        ids = [r["ids"] for r in recs]
        want, got = (engines[d].generate(ids, params) for d in ("auto", "int8"))
        same = sum(w == g for w, g in zip(want, got))
        leads = sum(lead(w, g) for w, g in zip(want, got))
        n_tok = sum(map(len, want))
        row = {"prompts": len(recs), "identical": same, "identical_share": same / len(recs),
               "tokens_before_first_difference": leads / max(n_tok, 1), "max_new_tokens": recs[0]["new"]}
        if is_checkable(recs[0]["task"]):
            for name, outs in (("accuracy_fp32", want), ("accuracy_int8", got)):
                row[name] = sum(check_answer(r["task"], tokenizer.decode(o, skip_special_tokens=True), r["answer"])
                                for r, o in zip(recs, outs)) / len(recs)
        out[key] = row
        tot["prompts"] += len(recs)
        tot["identical"] += same
        tot["lead"] += leads
        tot["tokens"] += n_tok
        print(f"  {key:28s} {same:4d}/{len(recs):<4d} identical ({same / len(recs):.1%}), "
              f"{row['tokens_before_first_difference']:.1%} of tokens before the first difference"
              + (f", accuracy fp32 {row['accuracy_fp32']:.3f} int8 {row['accuracy_int8']:.3f}"
                 if "accuracy_fp32" in row else ""), flush=True)
    out["all"] = {"prompts": tot["prompts"], "identical": tot["identical"],
                  "identical_share": tot["identical"] / tot["prompts"],
                  "tokens_before_first_difference": tot["lead"] / max(tot["tokens"], 1)}
    return out


@torch.inference_mode()
def pool_perplexity(model, ids: list[int], seq_len: int, rows: int) -> dict[str, float]:
    """`rows` windows of `seq_len` tokens read one token per forward through an fp32 and an int8 pool in lockstep
    (every earlier token's keys and values come back from the pool): each pool's perplexity, the mean KL divergence
    of the int8 pool's next-token distribution from the fp32 pool's, and how often their argmax agree."""
    from scratchlm.engine.paged_cache import PagedKVCache

    p = next(model.parameters())
    bs = 16
    per = -(-seq_len // bs)
    x = torch.tensor([ids[i * seq_len:(i + 1) * seq_len] for i in range(rows)], device=p.device)  # [B, L]
    pools = {d: PagedKVCache(model.config, rows * per, bs, p.device, p.dtype, d) for d in ("auto", "int8")}
    tables = [list(range(b * per, (b + 1) * per)) for b in range(rows)]
    nll = {d: 0.0 for d in pools}
    kl, top1 = 0.0, 0
    for t in range(seq_len - 1):
        logp = {d: F.log_softmax(model(x[:, t:t + 1], cache=pool.batch(tables, [t] * rows, [1] * rows))
                                 .logits[:, -1].float(), dim=-1) for d, pool in pools.items()}
        for d in pools:
            nll[d] += float(F.nll_loss(logp[d], x[:, t + 1], reduction="sum"))
        kl += float(F.kl_div(logp["int8"], logp["auto"], log_target=True, reduction="sum"))
        top1 += int((logp["int8"].argmax(-1) == logp["auto"].argmax(-1)).sum())
    n = rows * (seq_len - 1)
    ppl = {d: math.exp(v / n) for d, v in nll.items()}
    return {"fp32_pool": ppl["auto"], "int8_pool": ppl["int8"], "ratio": ppl["int8"] / ppl["auto"],
            "kl_int8_from_fp32": kl / n, "top1_agreement": top1 / n, "tokens": n, "window": seq_len}


def pool_bytes(cfg, num_blocks: int, block_size: int, kv_dtype: str) -> int:
    """Bytes of the tensors a pool of `num_blocks` allocates (built, then measured)."""
    from scratchlm.engine.paged_cache import PagedKVCache

    return PagedKVCache(cfg, num_blocks, block_size, torch.device("cpu"), torch.float32, kv_dtype).nbytes()


def run_together(model, prompts: list[list[int]], new: int, blocks: int, block_size: int, dtype: str) -> dict:
    """Submit every prompt at once to an engine whose pool has `blocks` blocks and run them all to `new` tokens:
    steps, tokens generated per step (mean), the most sequences running after a step, preemptions, seconds."""
    from scratchlm.engine.llm_engine import LLMEngine
    from scratchlm.engine.sampling import SamplingParams

    engine = LLMEngine(model, None, num_blocks=blocks, block_size=block_size, max_num_seqs=len(prompts),
                       max_waiting=len(prompts), kv_cache_dtype=dtype)
    handles = [engine.submit(p, SamplingParams(temperature=0.0, max_new_tokens=new)) for p in prompts]
    per_step: list[int] = []
    running = 0
    t0 = time.perf_counter()
    while not all(h.finished for h in handles):
        before = engine.generation_tokens_total
        engine.step()
        per_step.append(engine.generation_tokens_total - before)  # one token per sequence that stepped
        running = max(running, engine.stats()["running"])
    wall = time.perf_counter() - t0
    assert all(len(h.token_ids[0]) == new for h in handles)  # no tokenizer, no stop id: every one runs its length
    return {"num_blocks": blocks, "pool_bytes": engine.kv.nbytes(), "steps": len(per_step),
            "tokens_per_step_mean": sum(per_step) / len(per_step), "running_peak": running,
            "preemptions": engine.preemptions, "seconds": wall, "tokens_per_second": len(prompts) * new / wall}


@torch.inference_mode()
def capacity(model, prompts: list[list[int]], new: int, budget_blocks: int, block_size: int = 16) -> dict:
    """fp32 pool of `budget_blocks` vs the int8 pool of the same bytes: the most sequences that run together to
    the end without a preemption (found by running them), and all `prompts` pushed through each."""
    cfg = model.config
    budget = pool_bytes(cfg, budget_blocks, block_size, "auto")
    lo, hi = budget_blocks, 8 * budget_blocks  # the most int8 blocks within the budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if pool_bytes(cfg, mid, block_size, "int8") <= budget else (lo, mid - 1)
    out: dict = {"budget_bytes": budget, "block_size": block_size, "requests": len(prompts),
                 "tokens_per_sequence": len(prompts[0]) + new}
    for name, dtype, blocks in (("fp32", "auto", budget_blocks), ("int8", "int8", lo)):
        # the largest k whose k sequences all run at once and finish without a preemption (monotone in k)
        ok, bad = 0, len(prompts) + 1
        while bad - ok > 1:
            k = (ok + bad) // 2
            r = run_together(model, prompts[:k], new, blocks, block_size, dtype)
            ok, bad = (k, bad) if r["preemptions"] == 0 and r["running_peak"] == k else (ok, k)
        every = run_together(model, prompts, new, blocks, block_size, dtype)
        out[name] = {"num_blocks": blocks, "pool_bytes": every["pool_bytes"], "max_sequences_together": ok,
                     f"all_{len(prompts)}": every}
        print(f"  {name}: {blocks} blocks, {every['pool_bytes'] / 2**20:.3f} MiB: {ok} sequences run together "
              f"without a preemption; all {len(prompts)}: {every['steps']} steps, "
              f"{every['tokens_per_step_mean']:.1f} tokens per step, {every['preemptions']} preemptions, "
              f"{every['seconds']:.1f} s", flush=True)
    out["blocks_ratio"] = out["int8"]["num_blocks"] / out["fp32"]["num_blocks"]
    out["bytes_per_block_ratio"] = (out["int8"]["pool_bytes"] / out["int8"]["num_blocks"]) / (
        out["fp32"]["pool_bytes"] / out["fp32"]["num_blocks"])
    out["max_sequences_ratio"] = out["int8"]["max_sequences_together"] / out["fp32"]["max_sequences_together"]
    key = f"all_{len(prompts)}"
    out["steps_ratio"] = out["int8"][key]["steps"] / out["fp32"][key]["steps"]
    out["seconds_ratio"] = out["int8"][key]["seconds"] / out["fp32"][key]["seconds"]
    return out


def main() -> None:
    """Measure, print, and with --results write the results file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="/work/runs/demo0", help="a finished demo run folder (sft/, pretrain/, data/)")
    ap.add_argument("--split", default="test", choices=("test", "val"),
                    help="held-out prompt file: test (what the demo reports) or val (the dev split)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the demo settings' max_new_tokens")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-blocks", type=int, default=64, help="capacity: the fp32 pool's blocks")
    ap.add_argument("--requests", type=int, default=64, help="capacity: sequences submitted")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: chat,raw,ppl,capacity")
    ap.add_argument("--results", default=None, help="write the numbers here (scratchlm.results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from scratchlm.demo.settings import DemoSettings
    from scratchlm.runs import load_run

    skip = set(filter(None, args.skip.split(",")))
    demo = Path(args.demo)
    max_new = args.max_new_tokens or DemoSettings().max_new_tokens
    t_start = time.perf_counter()
    numbers: dict = {"demo": str(demo), "threads": args.threads, "max_new_tokens": max_new}
    if "chat" not in skip:
        sft, tok, _ = load_run(demo / "sft")
        prompt_file = demo / "data" / "synth" / f"prompt_{args.split}.jsonl"
        print(f"chat agreement: {demo / 'sft'} on {prompt_file}, greedy, max_new_tokens {max_new} "
              f"({3 * max_new} open-ended)", flush=True)
        numbers["chat"] = chat_agreement(sft, tok, chat_prompts(tok, prompt_file, max_new, sft.config.max_seq_len))
        a = numbers["chat"]["all"]
        print(f"  all: {a['identical']}/{a['prompts']} identical ({a['identical_share']:.1%})", flush=True)
    pre, ptok, _ = load_run(demo / "pretrain")
    ids = validation_ids(ptok, 24 * 128 + 32)
    if "raw" not in skip:
        numbers["raw_text"] = {**kv_agreement(pre, [ids[i * 128: i * 128 + 32] for i in range(24)], 64),
                               "prompt_tokens": 32, "new_tokens": 64, "model": str(demo / "pretrain")}
        r = numbers["raw_text"]
        print(f"raw text (pretrained model, 24 validation windows × 64 tokens): {r['prompts_equal']:.1%} identical, "
              f"{r['tokens_before_first_difference']:.1%} of tokens before the first difference", flush=True)
    if "ppl" not in skip:
        L = min(256, pre.config.max_seq_len)
        rows = min(16, len(ids) // L)
        q = numbers["perplexity"] = pool_perplexity(pre, ids, L, rows)
        print(f"through the pool, teacher-forced, {rows} windows of {L}: perplexity fp32 {q['fp32_pool']:.3f}, int8 "
              f"{q['int8_pool']:.3f} ({q['ratio']:.5f}×); KL(fp32 || int8) {q['kl_int8_from_fp32']:.2e} nats a "
              f"token; top-1 agreement {q['top1_agreement']:.4f}", flush=True)
    if "capacity" not in skip:
        prompts = [ids[i * 48: i * 48 + 48] for i in range(args.requests)]
        while len(prompts[-1]) < 48:  # not enough validation text: reuse windows
            prompts[-1] = ids[:48]
        print(f"capacity: {args.requests} requests of 48 prompt + 80 new tokens, fp32 pool of {args.budget_blocks} "
              f"blocks vs int8 at the same bytes", flush=True)
        numbers["capacity"] = capacity(pre, prompts, 80, args.budget_blocks)
        c = numbers["capacity"]
        print(f"  int8/fp32 at the same bytes: {c['blocks_ratio']:.2f}× blocks, {c['max_sequences_ratio']:.2f}× "
              f"sequences together; all {args.requests}: {c['steps_ratio']:.2f}× steps, {c['seconds_ratio']:.2f}× "
              f"time", flush=True)
    print(f"({time.perf_counter() - t_start:.0f} s in all)")
    if args.results:
        from scratchlm.results import write_results

        summary = demo / "summary.json"  # the demo run's seed
        seed = json.loads(summary.read_text())["settings"]["seed"] if summary.is_file() else None
        write_results(args.results, "kv_int8", numbers, seed=seed, split=args.split,
                      notes=f"chat: the demo's {args.split} prompt file with its SFT model; raw_text, perplexity and "
                            "capacity: the demo's pretrained model on the corpus' validation text")


if __name__ == "__main__":
    main()

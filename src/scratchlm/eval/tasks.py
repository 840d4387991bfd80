"""Held-out task accuracy with greedy decoding (answers.check_answer), and greedy replies to chat prompts."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

UNSEEN = " (unseen phrasings)"  # suffix of the score key of held-out items asked in held-out phrasings
OPEN_SAMPLES = 2  # greedy replies shown per open-ended task (fortune, recite, continue)


def evaluate_tasks(model: Any, tokenizer: Any, prompt_file: Path, per_task: int, max_new_tokens: int,
                   batch: int = 50, tasks: set[str] | None = None,
                   kv_cache_dtype: str = "auto") -> tuple[dict[str, tuple[int, int]], list[dict]]:
    """Greedy answers to held-out prompts (of `tasks`, default all): {task: (correct, total)} and the answered
    samples. Arithmetic in held-out phrasings scores as "<task> (unseen phrasings)"; open-ended tasks are answered
    (a few each) but not scored."""
    from scratchlm.data.clean import clean_messages
    from scratchlm.data.answers import check_answer
    from scratchlm.data.open_tasks import is_checkable
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams

    by_task: dict[str, list[dict]] = defaultdict(list)
    new_tokens = {True: max_new_tokens, False: 3 * max_new_tokens}  # by is_checkable: a poem needs more
    for line in prompt_file.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if tasks is not None and rec["task"] not in tasks:
            continue
        key = rec["task"] + (UNSEEN if rec.get("phrasing") == "unseen" else "")
        context = int(model.config.max_seq_len) - new_tokens[is_checkable(rec["task"])]
        if not is_checkable(rec["task"]) and any(r["prompt"] == rec["prompt"] for r in by_task[key]):
            continue  # open-ended samples: distinct requests
        if len(by_task[key]) < (per_task if is_checkable(rec["task"]) else OPEN_SAMPLES):
            # Cleaned like the SFT shards were (prepare's NFKC), so held-out prompts look like training ones.
            rec["ids"] = list(tokenizer.encode_chat(clean_messages(rec["prompt"]), add_generation_prompt=True)[0])
            if len(rec["ids"]) <= context:  # a long "continue this text" may not fit a small model's window
                by_task[key].append(rec)
    engine = LLM(model, tokenizer, kv_cache_dtype=kv_cache_dtype)
    scores: dict[str, tuple[int, int]] = {}
    graded: list[dict] = []
    for key, recs in sorted(by_task.items()):
        task, correct = recs[0]["task"], 0
        params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens[is_checkable(task)])
        for i in range(0, len(recs), batch):
            chunk = recs[i:i + batch]
            for r, ids in zip(chunk, engine.generate([r["ids"] for r in chunk], params)):
                reply = tokenizer.decode(ids, skip_special_tokens=True)
                ok = check_answer(task, reply, r["answer"]) if is_checkable(task) else None
                correct += bool(ok)
                graded.append({"task": key, "prompt": r["prompt"][-1]["content"], "reply": reply,
                               "answer": r["answer"], "ok": ok})
        if is_checkable(task):
            scores[key] = (correct, len(recs))
    return scores, graded


def chat_replies(model: Any, tokenizer: Any, prompts: list[str], params: Any) -> list[dict]:
    """Replies to single-turn user prompts with SamplingParams `params`: [{"prompt", "reply"}]."""
    from scratchlm.engine.offline import LLM
    from scratchlm.tokenizer.chat_prompt import chat_prompt_ids

    ids = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    out = LLM(model, tokenizer).generate(ids, params)
    return [{"prompt": p, "reply": tokenizer.decode(o, skip_special_tokens=True)} for p, o in zip(prompts, out)]


def generate_replies(model: Any, tokenizer: Any, items: list[dict], max_new_tokens: int, batch: int = 32,
                     kv_cache_dtype: str = "auto") -> list[str]:
    """Greedy replies to chat prompts (the assistant turn opened by the chat template)."""
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams

    window = int(model.config.max_seq_len) - max_new_tokens
    ids = [tokenizer.encode_chat(it["messages"], add_generation_prompt=True)[0][-window:] for it in items]
    engine, params = LLM(model, tokenizer, kv_cache_dtype=kv_cache_dtype), SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    out: list[str] = []
    for b in range(0, len(ids), batch):
        out += [tokenizer.decode(o, skip_special_tokens=True) for o in engine.generate(ids[b:b + batch], params)]
    return out


def pick_samples(graded: list[dict], per_task: int = 2) -> list[dict]:
    """A few answered prompts of every task for the summary: the first `per_task` of each, in task order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for g in graded:
        if len(out[g["task"]]) < per_task:
            out[g["task"]].append(g)
    return [g for task in sorted(out) for g in out[task]]



"""Stutter: how much a reply repeats itself. A small model asked for a poem tends to write "江江江江日" or loop one
phrase; two numbers catch both, per reply:

- the longest run of one repeated unit (a character, or a token id when given ids);
- distinct-2: distinct bigrams / all bigrams of the reply's units (words for Latin script, one unit per CJK
  character), the usual diversity measure of dialogue papers (Li et al., 2016).

A reply *passes* when its longest run is at most `max_run` and its distinct-2 at least `min_distinct2`. Over the
open-ended requests of a prompt file (fortune / recite / continue) `open_ended_report` also counts how often the
model answers with its identity line instead of what was asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

# One unit per CJK character (Chinese has no spaces), a word or number for Latin script, any other symbol alone.
_UNITS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9']+|[^\sA-Za-z0-9'\u3400-\u9fff\uf900-\ufaff]")
MAX_RUN = 4  # "江江江江江": five of one character is a stutter; four can be a refrain or "哈哈哈哈"
MIN_DISTINCT2 = 0.6


def units(text: str) -> list[str]:
    """The units distinct-2 counts: CJK characters, Latin words and numbers, single other symbols."""
    return _UNITS.findall(text)


def longest_run(seq: Sequence[Hashable]) -> int:
    """Length of the longest run of one repeated element (0 for an empty sequence); whitespace counts as an
    element of a string, so "a a a" has runs of 1."""
    best = run = 0
    prev: Hashable = object()
    for x in seq:
        run = run + 1 if x == prev else 1
        best, prev = max(best, run), x
    return best


def distinct_n(seq: Sequence[Hashable], n: int = 2) -> float:
    """Distinct n-grams / all n-grams of `seq`; 1.0 when it has fewer than n elements (nothing repeats)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def reply_stutter(text: str, max_run: int = MAX_RUN, min_distinct2: float = MIN_DISTINCT2) -> dict[str, Any]:
    """{"run": longest character run (spaces ignored), "distinct2": over units(text), "ok": both within bounds}."""
    run = longest_run([c for c in text if not c.isspace()])
    d2 = distinct_n(units(text), 2)
    return {"run": run, "distinct2": d2, "ok": run <= max_run and d2 >= min_distinct2}


def stutter_summary(replies: list[str], identity: str | None = None, max_run: int = MAX_RUN,
                    min_distinct2: float = MIN_DISTINCT2) -> dict[str, Any]:
    """Over a list of replies: the share that pass, the share within each bound, mean distinct-2, the worst reply
    (longest run), and (given the model's `identity` name) the share that are its identity line."""
    if not replies:
        raise ValueError("stutter_summary: no replies to measure")
    rows = [reply_stutter(r, max_run, min_distinct2) for r in replies]
    n = len(rows)
    worst = max(range(n), key=lambda i: (rows[i]["run"], -rows[i]["distinct2"]))
    out = {"replies": n, "pass": sum(r["ok"] for r in rows) / n,
           "run_ok": sum(r["run"] <= max_run for r in rows) / n,
           "distinct2_ok": sum(r["distinct2"] >= min_distinct2 for r in rows) / n,
           "distinct2_mean": sum(r["distinct2"] for r in rows) / n, "max_run": max_run, "min_distinct2": min_distinct2,
           "worst": {"reply": replies[worst], **rows[worst]}}
    if identity is not None:
        out["identity_line"] = sum(identity.lower() in r.lower() for r in replies) / n
    return out


def open_ended_prompts(prompt_file: Path, tasks: Sequence[str] | None = None) -> list[list[dict]]:
    """The distinct open-ended requests of a prompt file (every task `is_checkable` rejects, or `tasks`)."""
    from scratchlm.data.open_tasks import is_checkable

    seen, out = set(), []
    for line in Path(prompt_file).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if (rec["task"] in tasks) if tasks is not None else not is_checkable(rec["task"]):
            key = json.dumps(rec["prompt"], ensure_ascii=False)
            if key not in seen:
                seen.add(key)
                out.append(rec["prompt"])
    return out


def open_ended_report(model: Any, tokenizer: Any, prompt_file: Path, identity: str, params: Any,
                      limit: int | None = None, enable_thinking: bool = True) -> dict[str, Any]:
    """Reply to every open-ended request of `prompt_file` with SamplingParams `params` (thinking on or off) and
    measure the stutter and the identity-line share of the replies (`stutter_summary`), with the settings used."""
    from dataclasses import asdict

    from scratchlm.engine.offline import LLM
    from scratchlm.tokenizer.chat_prompt import chat_prompt_ids

    prompts = open_ended_prompts(prompt_file)[:limit]
    window = int(model.config.max_seq_len) - params.max_new_tokens
    ids = [chat_prompt_ids(tokenizer, p, enable_thinking)[-window:] for p in prompts]
    replies = [tokenizer.decode(o, skip_special_tokens=True) for o in LLM(model, tokenizer).generate(ids, params)]
    sampling = {k: v for k, v in asdict(params).items() if k not in ("stop_ids", "stop_strings", "keep_stop_id")}
    return {**stutter_summary(replies, identity), "sampling": sampling, "thinking": enable_thinking}

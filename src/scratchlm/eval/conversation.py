"""A model in a conversation, not on one question: held-out task accuracy asked three ways.

- **alone**: the question as the only user turn, thinking on (what `evaluate_tasks` measures);
- **third turn**: the same question after two earlier exchanges about other tasks, whose answers are the model's own
  (as the chat CLI and the server send history back: the answer without its reasoning);
- **thinking off**: alone, with the empty `<think></think>` put in the model's mouth (`/think off`,
  `enable_thinking=false`).

Greedy decoding, the prompts built by the one prompt builder every chat front uses (tokenizer.chat_prompt)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

MODES = ("alone", "third_turn", "think_off")


def _items(prompt_file: Path, per_task: int) -> list[dict]:
    """The first `per_task` checkable single-turn prompts of each task (training phrasings), tasks interleaved so
    that neighbours ask about different tasks."""
    from scratchlm.data.open_tasks import is_checkable

    by_task: dict[str, list[dict]] = defaultdict(list)
    for line in Path(prompt_file).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if is_checkable(rec["task"]) and rec.get("phrasing") != "unseen" and len(by_task[rec["task"]]) < per_task:
            by_task[rec["task"]].append(rec)
    queues = [by_task[t] for t in sorted(by_task)]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def third_turn_chat(items: list[dict], alone: list[str], k: int) -> list[dict]:
    """Item k's question after the two items before it (wrapping around), answered by the model's replies `alone`
    as a chat front sends history back: the answer without its reasoning."""
    from scratchlm.data.thinking import strip_thinking

    history: list[dict] = []
    for j in (k - 2, k - 1):
        history += [*items[j]["prompt"], {"role": "assistant", "content": strip_thinking(alone[j])}]
    return history + items[k]["prompt"]


def conversation_scores(model: Any, tokenizer: Any, prompt_file: Path, per_task: int, max_new_tokens: int,
                        batch: int = 64) -> dict[str, Any]:
    """{mode: {task: [correct, total]}} for the modes of this module, and a few third-turn samples."""
    from scratchlm.data.answers import check_answer
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.tokenizer.chat_prompt import chat_prompt_ids

    items = _items(prompt_file, per_task)
    if len(items) < 3:
        raise ValueError(f"conversation_scores: {prompt_file} has {len(items)} checkable prompts; need at least 3")
    engine = LLM(model, tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    window = int(model.config.max_seq_len) - max_new_tokens

    def replies(chats: list[list[dict]], thinking: bool = True) -> list[str]:
        ids = [chat_prompt_ids(tokenizer, c, enable_thinking=thinking)[-window:] for c in chats]
        out: list[str] = []
        for b in range(0, len(ids), batch):
            out += [tokenizer.decode(o, skip_special_tokens=True) for o in engine.generate(ids[b:b + batch], params)]
        return out

    alone_chats = [it["prompt"] for it in items]
    alone = replies(alone_chats)
    third_chats = [third_turn_chat(items, alone, k) for k in range(len(items))]
    got = {"alone": alone, "third_turn": replies(third_chats), "think_off": replies(alone_chats, thinking=False)}
    scores: dict[str, dict[str, list[int]]] = {m: {} for m in MODES}
    for mode, texts in got.items():
        for it, reply in zip(items, texts):
            c = scores[mode].setdefault(it["task"], [0, 0])
            c[0] += bool(check_answer(it["task"], reply, it["answer"]))
            c[1] += 1
    samples = [{"chat": [m["content"] for m in third_chats[k]], "reply": got["third_turn"][k],
                "answer": items[k]["answer"]} for k in range(min(3, len(items)))]
    return {**scores, "samples": samples}

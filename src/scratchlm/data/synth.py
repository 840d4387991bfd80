"""Synthetic tasks (most with checkable answers) for SFT, preference training (DPO/reward) and GRPO/eval.

Tasks (Chinese and English phrasing, chosen per example):
- arithmetic, named `<op><digits>`: "add2" (2-digit addition, the demo's headline), "sub3", "mul1",
  "arith2" (+, -, × mixed). Operands have exactly `digits` digits (0-9 for 1 digit).
- "next_line": the line that follows a given line of a poem from the built-in corpus.
- "author": who wrote a poem of the built-in corpus (titles shared by several poets are left out).
- "identity": "who are you" / "你是谁" → an answer containing the configured model name.
- "grounded_author", "grounded_next", "grounded_title": the answer read from passages in the user turn, rendered
  as `rag ask` renders retrieved chunks (data/grounded.py).
- open-ended chats from the corpus (not checkable): "fortune" (tell me a fortune / 说一句名言), "recite"
  (a poem by an author, or by title) and "continue" (the rest of a text).

Three splits (data/tasks.py): "train", "val" (the dev split: choose settings on it) and "test" (report it,
never tune on it). Poems come from the corpus *train* split, so the held-out questions ask about text the model
read during pretraining: they measure recall, not guessing. The splits never share an item: arithmetic by
operand pair (a+b and b+a fall on the same side), poems by (poem, line) for next_line and by title for author,
identity by question phrasing (held-out phrasings never occur in training, val's never in test). The side is
chosen by a stable hash of the item, so it does not depend on the seed or the sizes.

Formats (DESIGN.md), one json object per line, each with "task" and "lang":
  sft_{train,val,test}.jsonl         {"conversations": [{"role", "content"}, ...]}  (some with a system
                                message, some multi-turn: a follow-up question of the same task)
  preference_{train,val,test}.jsonl  {"chosen": [messages], "rejected": [messages]}  (rejected = a plausible
                                wrong answer: a sum off by a few, another poem's line or author, another name)
  prompt_{train,val,test}.jsonl      {"prompt": [messages], "answer": "..."}  (score with `check_answer`)
Line i of the three files of a split is the same example. meta.json records the seed, name and counts.
Arithmetic's held-out sides come twice: in training phrasings, and again (as many examples, column
"phrasing": "unseen") in phrasings that training never uses. The open-ended tasks ("fortune", "recite",
"continue") are chats built from the corpus with no single right answer (`is_checkable` is False).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from scratchlm.data.open_tasks import OPEN_TASKS, Continue, Fortune, Recite, open_task_docs
from scratchlm.data.answers import ARITH_RE, GROUNDED_TASKS
from scratchlm.data.tasks import SIDES, Arithmetic, Author, Example, Identity, NextLine
from scratchlm.data.thinking import strip_thinking, think_off

# Default sizes (train, val) per task, test as many as val: a few thousand SFT examples, fine for a CPU demo.
DEFAULT_TASKS: dict[str, tuple[int, int]] = {
    "add2": (2000, 200),
    "next_line": (1200, 200),
    "author": (600, 200),
    "identity": (600, 200),
}
DEFAULT_NAME = "scratchlm"  # the model's name in identity answers
FILES = [f"{kind}_{split}" for kind in ("sft", "preference", "prompt") for split in SIDES]


_SYSTEM = {
    "en": ["You are a helpful assistant.", "You are {name}, a helpful assistant.", "Answer briefly."],
    "zh": ["你是一个乐于助人的助手。", "你是{name}，一个乐于助人的助手。", "请简短回答。"],
}


def make_task(name: str, model_name: str = DEFAULT_NAME, poems: list[dict] | None = None):
    """The task object for a task name (arithmetic names are `<add|sub|mul|arith><digits>`)."""
    if ARITH_RE.match(name):
        return Arithmetic(name)
    if name in ("next_line", "author", *GROUNDED_TASKS):
        if poems is None:
            from scratchlm.data.corpus import poems as corpus_poems

            poems = corpus_poems("train")
        if name in GROUNDED_TASKS:
            from scratchlm.data.grounded import Grounded

            return Grounded(name, poems)
        return NextLine(poems) if name == "next_line" else Author(poems)
    if name == "identity":
        return Identity(model_name)
    if name in OPEN_TASKS:
        from scratchlm.data.corpus import iter_corpus

        docs = open_task_docs(list(iter_corpus("train")), list(iter_corpus("validation")))
        return {"fortune": Fortune, "recite": Recite, "continue": Continue}[name](docs)
    raise ValueError(f"unknown synthetic task {name!r}; choose next_line, author, identity, "
                     f"{', '.join(GROUNDED_TASKS + OPEN_TASKS)} "
                     "or <add|sub|mul|arith><digits> (e.g. add2)")


def sample_examples(task, n: int, side: str, rng: random.Random, **kw: Any) -> list[Example]:
    """n examples of one side ("train" | "val" | "test") of a task, unique where the item space allows (then repeats); `kw` goes to
    the task's `sample` (arithmetic: unseen_phrasing)."""
    out, seen = [], set()
    for _ in range(n):
        for _attempt in range(30):  # prefer new (question, reply) pairs; accept a repeat when exhausted
            ex = task.sample(rng, side, rng.choice(["en", "zh"]), **kw)
            if (ex.question, ex.reply) not in seen:
                break
        seen.add((ex.question, ex.reply))
        out.append(ex)
    return out


def _records(examples: list[Example], rng: random.Random, name: str, system_prob: float, multi_turn_prob: float,
             columns: dict[str, str] | None = None):
    """The SFT, preference and prompt records of a list of examples (same order), each with `columns`."""
    extra = columns or {}
    sft, pref, prompt = [], [], []
    by_lang: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_lang[ex.lang].append(ex)
    for ex in examples:
        user = {"role": "user", "content": ex.question}
        conv = [user, {"role": "assistant", "content": ex.reply}]
        if rng.random() < multi_turn_prob and len(by_lang[ex.lang]) > 1:
            follow = ex
            while follow is ex:  # same task, language and side: keeps the split clean
                follow = rng.choice(by_lang[ex.lang])
            conv += [{"role": "user", "content": follow.question}, {"role": "assistant", "content": follow.reply}]
        if rng.random() < system_prob:
            conv.insert(0, {"role": "system", "content": rng.choice(_SYSTEM[ex.lang]).format(name=name)})
        sft.append({"conversations": conv, "task": ex.task, "lang": ex.lang, **extra})
        pref.append({
            "chosen": [user, {"role": "assistant", "content": ex.reply}],
            "rejected": [user, {"role": "assistant", "content": ex.wrong}],
            "task": ex.task, "lang": ex.lang, **extra,
        })
        prompt.append({"prompt": [user], "answer": ex.answer, "task": ex.task, "lang": ex.lang, **extra})
    return sft, pref, prompt


# A turn that refers back to the previous answer: the reply repeats it (without its reasoning).
_REPEAT = {
    "en": ["What was your last answer?", "Say that answer again.", "Repeat what you just answered."],
    "zh": ["你刚才的答案是什么？", "把刚才的答案再说一遍。", "重复一下你上一个回答。"],
}


def _mix_conversations(sft: list[dict], rng: random.Random, mixed_prob: float, think_off_prob: float,
                       by_task: Mapping[str, float] | None = None) -> None:
    """Turn rows of one split into conversations, in place; row i still trains on example i (line i of the
    preference and prompt files).

    With `mixed_prob`, 1-3 exchanges of rows of the same language and split, any task, come before the row's own:
    a chat that mixes arithmetic, poems and identity. In one such chat in three, a last turn refers back ("what
    was your last answer?" → the row's answer again). Earlier assistant turns are written as the chat CLI and the
    server send history back (the answer without its reasoning) and carry "weight": 0: context, not trained on.
    With `think_off_prob`, the trained turn is written thinking off (`THINK_OFF` + the answer, no reasoning), as
    the chat CLI's /think off and the API's enable_thinking=false prompt it. `by_task` (task → share) replaces both
    shares for the tasks it names: a task of 400 chats gets only ~40 of either at 0.1."""
    by_task = by_task or {}
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(sft):
        by_lang[row["lang"]].append(i)
    own = [[dict(m) for m in row["conversations"][-2:]] for row in sft]  # each row's own (user, assistant)

    def as_history(exchange: list[dict]) -> list[dict]:
        user, reply = exchange
        return [dict(user), {"role": "assistant", "content": strip_thinking(reply["content"]), "weight": 0}]

    for i, row in enumerate(sft):
        conv = row["conversations"]
        mixed_p = by_task.get(row["task"], mixed_prob)
        off_p = by_task.get(row["task"], think_off_prob)
        if mixed_p and rng.random() < mixed_p and len(by_lang[row["lang"]]) > 1:
            head = conv[:-2]  # a system prompt and a same-task follow-up stay in front
            history = []
            for _ in range(rng.randint(1, 3)):
                j = i
                while j == i:  # another row (the language has at least two)
                    j = rng.choice(by_lang[row["lang"]])
                history += as_history(own[j])
            if rng.random() < 1 / 3:
                last = strip_thinking(conv[-1]["content"])
                tail = as_history(conv[-2:]) + [{"role": "user", "content": rng.choice(_REPEAT[row["lang"]])},
                                                 {"role": "assistant", "content": last}]
            else:
                tail = conv[-2:]
            conv[:] = head + history + tail
            row["turns"] = sum(m["role"] == "user" for m in conv)
        if off_p and rng.random() < off_p:
            for m in conv:
                if m["role"] == "assistant" and m.get("weight", 1):
                    m["content"] = think_off(m["content"])
            row["thinking"] = "off"


def resolve_sizes(tasks=None, n_train: int | None = None, n_val: int | None = None,
                  n_test: int | None = None) -> dict[str, tuple[int, int, int]]:
    """Task → (n_train, n_val, n_test) from a list of names, a dict of sizes (n_train, (n_train, n_val) or
    (n_train, n_val, n_test); test defaults to as many as val), and global overrides."""
    if tasks is None:
        given: dict[str, Any] = dict(DEFAULT_TASKS)
    elif isinstance(tasks, dict):
        given = {t: (v, DEFAULT_TASKS.get(t, (0, 200))[1]) if isinstance(v, int) else v for t, v in tasks.items()}
    else:
        given = {t: DEFAULT_TASKS.get(t, (1000, 200)) for t in tasks}
    sizes = {}
    for t, v in given.items():
        v = tuple(v)
        if len(v) not in (2, 3):
            raise ValueError(f"task {t}: sizes are [train, val] or [train, val, test], got {list(v)}")
        tr = int(v[0]) if n_train is None else n_train
        va = int(v[1]) if n_val is None else n_val
        te = n_test if n_test is not None else int(v[2]) if len(v) == 3 else va
        sizes[t] = (tr, va, te)
    for t, (tr, va, te) in sizes.items():
        if min(tr, va, te) < 0:
            raise ValueError(f"task {t}: sizes must be >= 0, got n_train={tr}, n_val={va}, n_test={te}")
    return sizes


def build_synth(
    out_dir: str | Path,
    seed: int = 0,
    name: str = DEFAULT_NAME,
    tasks: list[str] | dict[str, int | tuple[int, int]] | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    poems: list[dict] | None = None,
    system_prob: float = 0.15,
    multi_turn_prob: float = 0.1,
    mixed_turns_prob: float = 0.0,
    think_off_prob: float = 0.0,
    conversation_by_task: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Write the synthetic task files into out_dir; return {"sft_train": path, ...} (nine files).

    `tasks`: names (default sizes) or {name: n_train | (n_train, n_val) | (n_train, n_val, n_test)};
    `n_train`/`n_val`/`n_test` override every task's size. `poems` defaults to the corpus train split's poems. Also writes meta.json (counts).
    `multi_turn_prob`: a follow-up question of the same task; `mixed_turns_prob`: 1-3 more turns of any task, some
    referring back; `think_off_prob`: conversations written thinking off (see `_mix_conversations`);
    `conversation_by_task`: task → the share that replaces both for that task. These apply to SFT rows only;
    preference and prompt rows stay single-turn.
    """
    by_task = dict(conversation_by_task or {})
    for what, v in (("system_prob", system_prob), ("multi_turn_prob", multi_turn_prob),
                    ("mixed_turns_prob", mixed_turns_prob), ("think_off_prob", think_off_prob),
                    *((f"conversation_by_task[{t!r}]", p) for t, p in by_task.items())):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"build_synth: {what}={v} must be in [0, 1]")
    sizes = resolve_sizes(tasks, n_train, n_val, n_test)
    unknown = sorted(set(by_task) - set(sizes))
    if unknown:
        raise ValueError(f"build_synth: conversation_by_task names {', '.join(unknown)}, not among the tasks "
                         f"({', '.join(sizes)})")
    if poems is None and any(t in ("next_line", "author", *GROUNDED_TASKS) for t in sizes):
        from scratchlm.data.corpus import poems as corpus_poems

        poems = corpus_poems("train")
    rows: dict[str, list[dict]] = {f: [] for f in FILES}
    counts: dict[str, dict[str, int]] = {}
    for task_name, (tr, va, te) in sizes.items():
        task = make_task(task_name, name, poems)
        for split, n in zip(SIDES, (tr, va, te)):
            # One stream per (seed, task, side): changing one task's size never changes another's data.
            rng = random.Random(f"scratchlm-synth:{seed}:{task_name}:{split}")
            sides = [({}, {})]
            if split != "train" and isinstance(task, Arithmetic):
                # The same number again in held-out phrasings (column "phrasing": "unseen"), its own stream.
                sides.append(({"unseen_phrasing": True}, {"phrasing": "unseen"}))
            for kw, columns in sides:
                if columns:
                    rng = random.Random(f"scratchlm-synth:{seed}:{task_name}:{split}:unseen-phrasing")
                examples = sample_examples(task, n, split, rng, **kw)
                sft, pref, prompt = _records(examples, rng, name, system_prob, multi_turn_prob, columns)
                rows[f"sft_{split}"] += sft
                rows[f"preference_{split}"] += pref
                rows[f"prompt_{split}"] += prompt
            counts.setdefault(task_name, {})[split] = n
            if len(sides) > 1:
                counts[task_name][f"{split}_unseen_phrasing"] = n
    if mixed_turns_prob or think_off_prob or any(by_task.values()):
        for split in SIDES:
            # its own stream: turning these on changes no other row or file
            rng = random.Random(f"scratchlm-synth:{seed}:{split}:conversations")
            _mix_conversations(rows[f"sft_{split}"], rng, mixed_turns_prob, think_off_prob, by_task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for f in FILES:
        # Mix tasks within a file (training often reads in order). The permutation depends on the split
        # only, so line i of sft_train, preference_train and prompt_train is the same example.
        random.Random(f"scratchlm-synth:{seed}:{f.rsplit('_', 1)[1]}").shuffle(rows[f])
        paths[f] = out / f"{f}.jsonl"
        with open(paths[f], "w", encoding="utf-8") as fh:
            for r in rows[f]:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    meta = {"seed": seed, "name": name, "counts": counts, "files": {f: len(rows[f]) for f in FILES},
            "conversations": {"system_prob": system_prob, "multi_turn_prob": multi_turn_prob,
                              "mixed_turns_prob": mixed_turns_prob, "think_off_prob": think_off_prob,
                              "by_task": by_task}}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return paths



"""Multiple-choice tasks scored by log-likelihood, the MMLU / C-Eval way: each choice is scored as a
continuation of the question and the most likely one is the answer.

Items are `{"question", "choices": [...], "answer": index}` (optionally "subject"). Loaders read our jsonl and
the published file layouts of MMLU (headerless CSV: question, A-D, answer letter), C-Eval (CSV with header
id,question,A,B,C,D,answer[,explanation]) and CMMLU (CSV with header ,Question,A,B,C,D,Answer). A small
bilingual set is built from the corpus (`builtin_items`).

Scoring follows lm-evaluation-harness' `multiple_choice` output type, so that `lm_eval` on our transformers
export gives the same numbers: context = few-shot examples + question, continuation = delimiter + choice;
trailing whitespace of the context moves into the continuation; the continuation's tokens are those of
encode(context + continuation) after len(encode(context)); acc = argmax of summed log-probs, acc_norm = argmax
of summed log-probs divided by the choice's length in characters.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJ"
FEWSHOT_DELIMITER = "\n\n"


@dataclass
class McItem:
    """One multiple-choice question; `answer` indexes `choices`."""

    question: str
    choices: list[str]
    answer: int
    subject: str = ""
    delimiter: str = " "  # between the question and a choice (our built-in set has its own punctuation: "")


def load_mc(path: str | Path, layout: str = "auto") -> list[McItem]:
    """Items from a jsonl file, or an MMLU / C-Eval / CMMLU CSV file or folder of CSVs (`layout` or guessed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        files = sorted(path.rglob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{path}: no .csv or .jsonl files in it")
    items: list[McItem] = []
    for f in files:
        kind = layout if layout != "auto" else _guess_layout(f)
        items += _LOADERS[kind](f)
    return items


def _guess_layout(f: Path) -> str:
    if f.suffix == ".jsonl":
        return "jsonl"
    with f.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])
    if [h.strip().lower() for h in header[:2]] == ["id", "question"]:
        return "ceval"
    if len(header) > 1 and header[1].strip() == "Question":
        return "cmmlu"
    return "mmlu"


def load_jsonl(path: Path) -> list[McItem]:
    """Our layout: one {"question", "choices", "answer"} object per line; errors name file:line and field."""
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: bad JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object with question, choices, answer")
        q, choices, ans = rec.get("question"), rec.get("choices"), rec.get("answer")
        if not isinstance(q, str) or not q:
            raise ValueError(f"{where}: field 'question' must be a non-empty string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
        if isinstance(ans, str) and len(ans) == 1 and ans in LETTERS[: len(choices)]:
            ans = LETTERS.index(ans)
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            raise ValueError(f"{where}: field 'answer' must be an index into choices (0..{len(choices) - 1}) or a letter")
        items.append(McItem(q, choices, ans, str(rec.get("subject", "")), str(rec.get("delimiter", " "))))
    return items


def _csv_items(path: Path, rows: list[list[str]], first_line: int, q: int, opts: slice, ans: int, subject: str) -> list[McItem]:
    items = []
    for n, row in enumerate(rows, first_line):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) <= max(q, ans, opts.stop - 1):
            raise ValueError(f"{path}:{n}: {len(row)} columns; expected question, A, B, C, D, answer")
        letter = row[ans].strip().upper()
        choices = row[opts]
        if letter not in LETTERS[: len(choices)]:
            raise ValueError(f"{path}:{n}: answer {row[ans]!r} is not one of {', '.join(LETTERS[:len(choices)])}")
        items.append(McItem(row[q], choices, LETTERS.index(letter), subject))
    return items


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.reader(fh))


def load_mmlu(path: Path) -> list[McItem]:
    """MMLU's data/{dev,val,test}/{subject}_{split}.csv: no header; question, A, B, C, D, answer letter."""
    subject = re.sub(r"_(dev|val|test)$", "", Path(path).stem)
    return _csv_items(path, _read_csv(path), 1, 0, slice(1, 5), 5, subject)


def load_ceval(path: Path) -> list[McItem]:
    """C-Eval's {dev,val}/{subject}_{split}.csv: header id,question,A,B,C,D,answer[,explanation]."""
    rows = _read_csv(path)
    subject = re.sub(r"_(dev|val|test)$", "", Path(path).stem)
    return _csv_items(path, rows[1:], 2, 1, slice(2, 6), 6, subject)


def load_cmmlu(path: Path) -> list[McItem]:
    """CMMLU's {dev,test}/{subject}.csv: header ,Question,A,B,C,D,Answer (first column a row number)."""
    rows = _read_csv(path)
    return _csv_items(path, rows[1:], 2, 1, slice(2, 6), 6, Path(path).stem)


_LOADERS = {"jsonl": load_jsonl, "mmlu": load_mmlu, "ceval": load_ceval, "cmmlu": load_cmmlu}
LAYOUTS = ("auto", *_LOADERS)


# ----------------------------------------------------------------------------------------------------
# the built-in bilingual set


def builtin_items(per_kind: int = 40, split: str = "train", seed: int = 0) -> list[McItem]:
    """A small bilingual set from the corpus: which half-line continues a Chinese poem's line, who wrote a
    poem (by its title), who said an English quotation. Four choices each; the same items every call.
    From the training split by default: it measures what pretraining took in, as knowledge benchmarks do."""
    from scratchlm.data.corpus import iter_corpus, poems

    rng = random.Random(seed)
    docs = poems(split)
    items: list[McItem] = []
    # 1. 诗句接龙: "床前明月光，" → "疑是地上霜。" among second halves of the same length from other poems
    pairs = []
    for d in docs:
        for line in d["text"].split("\n")[2:]:
            m = re.fullmatch(r"([^，。]{4,7}，)([^，。]{4,7}。)", line.strip())
            if m:
                pairs.append((m.group(1), m.group(2), d["title"]))
    by_len = defaultdict(list)
    for _, second, _ in pairs:
        by_len[len(second)].append(second)
    for first, second, title in rng.sample(pairs, min(per_kind, len(pairs))):
        others = sorted({s for s in by_len[len(second)] if s != second})
        items.append(_shuffled(rng, f"《{title}》\n{first}", second, rng.sample(others, 3), "poem_continue"))
    # 2. 作者: "《静夜思》\n作者：" → "李白" among other poets
    authors = sorted(a for a, c in Counter(d["author"] for d in docs).items() if c >= 3)
    picked = rng.sample([d for d in docs if d["author"] in authors], min(per_kind, len(docs)))
    for d in picked:
        others = [a for a in authors if a != d["author"]]
        items.append(_shuffled(rng, f"《{d['title']}》\n作者：", d["author"], rng.sample(others, 3), "poem_author"))
    # 3. who said it: a short attributed English fortune "…\n-- " → "Mark Twain" among other frequent authors
    quotes = []
    for d in iter_corpus(split, lang="en"):
        m = re.fullmatch(r"(.{20,160}?)\s*\n\s*-- ?([A-Z][\w. ]+?)\s*", d["text"], flags=re.S)
        if m and "\n\n" not in m.group(1):
            quotes.append((" ".join(m.group(1).split()), m.group(2)))
    people = sorted(a for a, c in Counter(a for _, a in quotes).items() if c >= 8)
    quotes = [q for q in quotes if q[1] in people]
    for text, who in rng.sample(quotes, min(per_kind, len(quotes))):
        items.append(_shuffled(rng, f"{text}\n--", " " + who, [" " + a for a in rng.sample([p for p in people if p != who], 3)],
                               "quote_author"))
    return items


def _shuffled(rng: random.Random, question: str, right: str, wrong: list[str], subject: str) -> McItem:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return McItem(question, choices, choices.index(right), subject, delimiter="")


def items_to_jsonl(items: list[McItem], path: str | Path) -> Path:
    """Write items in our jsonl layout (delimiter kept), e.g. the built-in set for lm-eval or a user."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"question": it.question, "choices": it.choices, "answer": it.answer,
                                "subject": it.subject, "delimiter": it.delimiter}, ensure_ascii=False) + "\n")
    return path


def as_letters(item: McItem) -> McItem:
    """The MMLU prompt style: the options listed under the question as "A. …", then "Answer:", and the letters
    scored as the choices (lm-eval's mmlu task); the default style scores each choice's own text instead."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return McItem(f"{item.question.strip()}\n{options}\nAnswer:", list(LETTERS[: len(item.choices)]), item.answer,
                  item.subject, delimiter=" ")


# ----------------------------------------------------------------------------------------------------
# scoring


def context_of(item: McItem, shots: list[McItem]) -> str:
    """The text a choice continues: few-shot examples (question + right answer), then the question."""
    demos = [s.question + s.delimiter + s.choices[s.answer] for s in shots]
    return FEWSHOT_DELIMITER.join([*demos, item.question])


def fewshot_for(items: list[McItem], i: int, k: int, pool: list[McItem] | None = None) -> list[McItem]:
    """k examples for item i: the first k of `pool` (a dev split), else of the other items of its subject."""
    if k <= 0:
        return []
    if pool is not None:
        return pool[:k]
    same = [it for j, it in enumerate(items) if j != i and it.subject == items[i].subject]
    return same[:k]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's HFLM splits them (trailing context spaces move across)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def choice_logprobs(model: Any, requests: list[tuple[list[int], list[int]]], batch: int = 32) -> list[float]:
    """Summed log p(continuation | context) per (context ids, continuation ids); left-truncated to the window."""
    import torch

    device = next(model.parameters()).device
    window = int(model.config.max_seq_len)
    out: list[float] = []
    for b in range(0, len(requests), batch):
        rows, targets = [], []
        for ctx, cont in requests[b:b + batch]:
            if not cont:
                raise ValueError("an empty continuation has no log-likelihood (is a choice empty?)")
            full = (ctx + cont)[-(window + 1):]
            inp, tgt = full[:-1], full[1:]
            n_cont = min(len(cont), len(tgt))
            rows.append(inp)
            targets.append([-100] * (len(tgt) - n_cont) + tgt[-n_cont:])
        T = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=device)
        tg = torch.tensor([t + [-100] * (T - len(t)) for t in targets], device=device)
        with torch.no_grad():
            lp = model.token_logprobs(ids, tg)
        out += lp.double().sum(-1).tolist()
    return out


def score_mc(model: Any, tokenizer: Any, items: list[McItem], fewshot: int = 0,
             pool: list[McItem] | None = None, batch: int = 32) -> dict[str, Any]:
    """acc and acc_norm (per subject and overall), each item's prediction and choices' log-likelihoods:
    {"acc", "acc_norm", "n", "by_subject": {s: {...}}, "predictions": [index], "loglikelihoods": [[float]]}."""
    requests, spans = [], []
    for i, it in enumerate(items):
        ctx = context_of(it, fewshot_for(items, i, fewshot, pool))
        spans.append((len(requests), len(it.choices)))
        requests += [encode_pair(tokenizer, ctx, it.delimiter + c) for c in it.choices]
    lls = choice_logprobs(model, requests, batch)
    preds, preds_norm = [], []
    for it, (start, n) in zip(items, spans):
        ll = lls[start:start + n]
        preds.append(max(range(n), key=lambda j: (ll[j], -j)))  # first of equal maxima, as np.argmax
        preds_norm.append(max(range(n), key=lambda j: (ll[j] / len(it.choices[j]), -j)))
    by_subject: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for it, p, q in zip(items, preds, preds_norm):
        by_subject[it.subject].append((p == it.answer, q == it.answer))

    def summary(rows: list[tuple[bool, bool]]) -> dict[str, float]:
        return {"acc": sum(a for a, _ in rows) / len(rows), "acc_norm": sum(b for _, b in rows) / len(rows), "n": len(rows)}

    every = [r for rows in by_subject.values() for r in rows]
    if not every:
        raise ValueError("no multiple-choice items to score")
    return {**summary(every), "by_subject": {s: summary(r) for s, r in sorted(by_subject.items())},
            "predictions": preds, "loglikelihoods": [lls[a:a + n] for a, n in spans]}

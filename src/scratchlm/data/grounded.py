"""Grounded answers: questions about a poem line whose answer must be read from a passage given in the user turn.

Three task kinds, each asked in English and Chinese phrasings:

    grounded_author  "Who wrote the line “…”?" / “…”是谁写的？      → the poet named in the passage
    grounded_next    "What line comes after “…”?" / “…”的下一句是什么？ → the next verse line in the passage
    grounded_title   "Which poem is the line “…” from?" / “…”出自哪首诗？ → the passage's title

The user turn is rendered exactly as `scratchlm rag ask` and the server's `--rag-db` render retrieved chunks
(`data.rag_prompt.sources_turn`: `[source#chunk] text` blocks, then the question): the gold poem among 1-2
distractor poems that look retrieved (they share characters with the quoted line where possible), in a random
order, each under a made-up but well-formed citation key. The reply is the answer followed by the gold passage's
key (`李白 [poems.jsonl:12#0]`), as the template asks; `check_answer` ignores the citation.

Splits (data/tasks.py's SIDES/side_of): a whole poem is on one side — hashed by (title, author) — so a held-out
question never quotes a line of, nor shows a passage of, a poem that a training question used; distractors come
from the same side. Poems come from the corpus train split (as the closed-book tasks'), so the closed-book score
measures recall of pretraining text; the passage turns it into reading. Only poems whose text is at most
`max_chars` characters are used (the demo's SFT rows are 128 tokens), and only lines that occur once in them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from scratchlm.data.answers import GROUNDED_TASKS
from scratchlm.data.rag_prompt import sources_turn
from scratchlm.data.tasks import SIDES, Example, check_side, side_of, verse_lines

_QUESTIONS = {
    ("grounded_author", "en"): ['Who wrote the line "{line}"?', 'Who is the author of the line "{line}"?',
                                'Which poet wrote "{line}"?'],
    ("grounded_author", "zh"): ["“{line}”是谁写的？", "“{line}”这句诗的作者是谁？", "哪位诗人写了“{line}”？"],
    ("grounded_next", "en"): ['What line comes after "{line}"?', 'What comes next after "{line}"?',
                              'Continue the poem: "{line}"'],
    ("grounded_next", "zh"): ["“{line}”的下一句是什么？", "“{line}”后面一句是什么？", "{line}下一句是？"],
    ("grounded_title", "en"): ['Which poem is the line "{line}" from?', 'What is the title of the poem with "{line}"?',
                               'In which poem does "{line}" appear?'],
    ("grounded_title", "zh"): ["“{line}”出自哪首诗？", "“{line}”是哪首诗里的句子？", "哪首诗里有“{line}”这一句？"],
}
# Citation keys look like the retriever's (`source:line#chunk` for a .jsonl, `file#chunk` otherwise).
_SOURCES = ["corpus.jsonl", "poems.jsonl", "docs.jsonl", "tang300.txt", "notes.md", "library.jsonl"]


@dataclass
class GroundedItem:
    """One grounded question: the bare question, its answer, the gold passage and the distractors ((ref, text))."""

    task: str
    lang: str
    question: str
    line: str  # the quoted verse line
    answer: str
    gold: tuple[str, str]
    distractors: list[tuple[str, str]]
    wrong: str  # the answer read from the first distractor (a plausible mistake: the wrong passage)
    reply: str = ""  # the answer and the gold passage's citation key

    def passages(self, rng: random.Random) -> list[tuple[str, str]]:
        """The gold passage among the distractors, in a random order."""
        blocks = [self.gold, *self.distractors]
        rng.shuffle(blocks)
        return blocks


def make_ref(rng: random.Random) -> str:
    """A citation key shaped like the retriever's."""
    src = rng.choice(_SOURCES)
    chunk = 0 if rng.random() < 0.7 else rng.randint(1, 3)
    return f"{src}:{rng.randint(1, 999)}#{chunk}" if src.endswith(".jsonl") else f"{src}#{chunk}"


class Grounded:
    """One grounded task kind over the corpus poems; val = a fixed ~15% of poems, test the next ~15%."""

    val_frac = 0.15
    test_frac = 0.15

    def __init__(self, name: str, poems: list[dict], max_chars: int = 160, n_distractors: tuple[int, int] = (1, 2)):
        if name not in GROUNDED_TASKS:
            raise ValueError(f"not a grounded task: {name!r}; choose one of: {', '.join(GROUNDED_TASKS)}")
        self.name, self.n_distractors = name, n_distractors
        short = [p for p in poems if len(p["text"]) <= max_chars and verse_lines(p["text"])]
        seen: dict[str, int] = defaultdict(int)
        for p in short:
            for line in {ln for st in verse_lines(p["text"]) for ln in st}:
                seen[line] += 1
        self.poems = {side: [] for side in SIDES}
        self.items: dict[str, list[tuple[int, str, str]]] = {side: [] for side in SIDES}
        for p in short:
            side = self.side(p)
            idx = len(self.poems[side])
            self.poems[side].append(p)
            for stanza in verse_lines(p["text"]):
                for i, line in enumerate(stanza):
                    if seen[line] != 1:  # a line two poems share has no single author / title / next line
                        continue
                    if name == "grounded_next":
                        if i + 1 < len(stanza):
                            self.items[side].append((idx, line, stanza[i + 1]))
                    else:
                        self.items[side].append((idx, line, p["author"] if name == "grounded_author" else p["title"]))

    @staticmethod
    def side(poem: dict) -> str:
        """The side of a whole poem (every kind splits the same way)."""
        return side_of(f"grounded:{poem['title']}|{poem['author']}", Grounded.val_frac, Grounded.test_frac)

    def _distractors(self, rng: random.Random, side: str, idx: int, line: str, answer: str) -> list[dict]:
        """1-2 other poems of the same side that do not hold the line nor give the same answer, preferring ones that
        share characters with it (what a retriever would bring back)."""
        others = [p for j, p in enumerate(self.poems[side]) if j != idx and line not in p["text"]
                  and self._answer_in(p, line) != answer]
        rng.shuffle(others)
        chars = set(line) - set("，。？！；：、")
        others.sort(key=lambda p: -min(3, len(chars & set(p["text"]))))  # stable: ties keep the shuffled order
        return others[:rng.randint(*self.n_distractors)]

    def _answer_in(self, poem: dict, line: str) -> str:
        """What a model reading `poem` instead of the gold one would answer."""
        if self.name == "grounded_author":
            return poem["author"]
        if self.name == "grounded_title":
            return poem["title"]
        lines = [ln for st in verse_lines(poem["text"]) for ln in st]
        return lines[1] if len(lines) > 1 else lines[0]

    def item(self, rng: random.Random, side: str, lang: str) -> GroundedItem:
        """One question of `side` with its passages."""
        if not self.items[check_side(side)] or len(self.poems[side]) < 2:
            raise ValueError(f"task {self.name}: no {side} poems short enough (is the corpus built?)")
        idx, line, answer = rng.choice(self.items[side])
        poem = self.poems[side][idx]
        question = rng.choice(_QUESTIONS[(self.name, lang)]).format(line=line)
        gold = (make_ref(rng), poem["text"])
        others = self._distractors(rng, side, idx, line, answer)
        refs = [gold[0]]
        while len(refs) < 1 + len(others):  # keys must tell the passages apart
            ref = make_ref(rng)
            refs += [ref] if ref not in refs else []
        distractors = [(ref, p["text"]) for ref, p in zip(refs[1:], others)]
        wrong = self._answer_in(others[0], line) if others else answer
        shown = f"《{answer}》" if self.name == "grounded_title" else answer
        return GroundedItem(self.name, lang, question, line, answer, gold, distractors, wrong, f"{shown} [{gold[0]}]")

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One training/eval example: the user turn holds the passages (as `rag ask` renders them) and the question."""
        it = self.item(rng, side, lang)
        blocks = it.passages(rng)
        content = sources_turn(it.question, blocks)[0]["content"]
        wrong_ref = it.distractors[0][0] if it.distractors else it.gold[0]
        wrong = f"《{it.wrong}》" if self.name == "grounded_title" else it.wrong
        return Example(self.name, lang, content, it.answer, it.reply, f"{wrong} [{wrong_ref}]")


def counterfactual_poems(poems: list[dict], seed: int = 0, lines: tuple[int, int] = (2, 3),
                         max_chars: int = 60) -> list[dict]:
    """Made-up poems for teaching the model to read: each one's verse lines, title and poet are drawn apart from
    training-side poems, so no answer can be recalled and only reading the passage gives it.

    With real poems alone a model can lower its loss by learning the few hundred training poems' poets and titles by
    heart instead of reading; these take that shortcut away (docs/rag.md, the fifth measurement, has what 600 steps of
    them did). One call uses each training-side verse line at most once (Grounded drops a line that two poems share,
    so build one Grounded per call; another seed gives other poems); `lines` = (fewest, most) lines a poem, each poem
    within `max_chars`. Held-out poems lend nothing: none of their lines appears, and titles and poets are drawn from
    training-side poems."""
    train = [p for p in poems if Grounded.side(p) == "train" and verse_lines(p["text"])]
    held_out = {ln for p in poems if Grounded.side(p) != "train" for st in verse_lines(p["text"]) for ln in st}
    rows = sorted({ln for p in train for st in verse_lines(p["text"]) for ln in st} - held_out)
    titles = sorted({p["title"] for p in train})
    authors = sorted({p["author"] for p in train})
    if not rows:
        raise ValueError("counterfactual_poems: no training-side poems with verse lines")
    rng = random.Random(f"scratchlm-counterfactual:{seed}")
    rng.shuffle(rows)
    out = []
    while rows:
        title, author = rng.choice(titles), rng.choice(authors)
        head = [f"《{title}》", f"作者：{author}"]
        body: list[str] = []
        for _ in range(rng.randint(*lines)):
            if rows and len("\n".join([*head, *body, rows[-1]])) <= max_chars:
                body.append(rows.pop())
        if len(body) < 2:  # the next line would not fit: the line is dropped, the rest goes on
            if rows:
                rows.pop()
            continue
        out.append({"text": "\n".join([*head, *body]), "title": title, "author": author})
    return out

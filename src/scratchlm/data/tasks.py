"""The synthetic tasks with checkable answers: arithmetic, the next line and the author of a poem, identity.

- arithmetic, named `<op><digits>`: "add2" (2-digit addition, the demo's headline), "sub3", "mul1",
  "arith2" (+, -, × mixed). Operands have exactly `digits` digits (0-9 for 1 digit).
- "next_line": the line that follows a given line of a poem from the built-in corpus.
- "author": who wrote a poem of the built-in corpus (titles shared by several poets are left out).
- "identity": "who are you" / "你是谁" → an answer containing the configured model name.

Every task has three sides (`SIDES`): "train", "val" (the dev split: settings are chosen on it) and "test"
(only reported, never tuned on). Poems come from the corpus *train* split, so the held-out questions ask about
text the model read during pretraining: they measure recall, not guessing. The sides never share an item:
arithmetic by operand pair (a+b and b+a fall on the same side), poems by (poem, line) for next_line and by
title for author, identity by question phrasing (val and test phrasings never occur in training, nor in each
other). The side is chosen by a stable hash of the item, so it does not depend on the seed or the sizes; the
val side is the held-out side the demo's settings were tuned on before the test side existed (the test side
was cut from what had been training items), so test items have never been looked at while choosing anything.
Each task's `sample(rng, side, lang)` returns an `Example`; data/synth.py writes them as files.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass

from scratchlm.data.answers import ARITH_RE, normalize

ARITH_OPS = {"add": "+", "sub": "-", "mul": "×", "arith": "+-×"}
MAX_ENUMERATED_PAIRS = 200_000  # operand spaces up to this size are enumerated, larger ones sampled


@dataclass
class Example:
    """One question with its canonical answer, the reply to train on, and a plausible wrong reply."""

    task: str
    lang: str  # "zh" | "en"
    question: str
    answer: str  # canonical, short: what check_answer compares against
    reply: str  # the assistant's right reply (contains answer)
    wrong: str  # a plausible wrong reply (for "rejected")


def _unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


SIDES = ("train", "val", "test")


def side_of(key: str, val_frac: float, test_frac: float) -> str:
    """The side of an item, decided by the item alone (never by the seed): val below val_frac, test in the next
    test_frac (items that were training items before the test side existed), train above."""
    u = _unit(key)
    return "val" if u < val_frac else "test" if u < val_frac + test_frac else "train"


def check_side(side: str) -> str:
    """`side` when it is one of SIDES, else a ValueError naming them."""
    if side not in SIDES:
        raise ValueError(f"unknown split {side!r}; choose one of {', '.join(SIDES)}")
    return side


# ----------------------------------------------------------------------------------------------------
# Arithmetic


def _digits_range(digits: int) -> range:
    """Operands with exactly `digits` digits (1 digit: 0-9)."""
    if digits < 1 or digits > 18:
        raise ValueError(f"arithmetic digits must be 1..18, got {digits}")
    return range(0, 10) if digits == 1 else range(10 ** (digits - 1), 10**digits)


# Phrasings of an arithmetic question: {op} is the symbol, {opw} the operator as a word. The held-out
# phrasings ("val", and "test" for the test split) are asked in no form during training: the demo measures held-out operand pairs in them as a
# number of its own, which shows whether the model learnt arithmetic or four wordings (a test checks that no
# held-out template is a training one). Many training phrasings are what lets a small model read new ones.
_ARITH_TEMPLATES = {
    ("en", "train"): ["What is {a} {op} {b}?", "{a} {op} {b} = ?", "Compute {a} {op} {b}.", "Calculate {a}{op}{b}.",
                    "What is {a} {opw} {b}?", "What's {a} {op} {b}?", "Please compute {a} {op} {b}.",
                    "Work out {a} {op} {b}.", "Find {a} {op} {b}.", "How much is {a} {opw} {b}?", "Solve: {a} {op} {b}",
                    "{a} {opw} {b} equals what?", "Can you calculate {a} {op} {b}?", "Evaluate {a} {op} {b}.",
                    "Tell me the result of {a} {op} {b}.", "{a}{op}{b}=?", "what is {a}{op}{b}",
                    "Calculate the value of {a} {opw} {b}."],
    ("en", "val"): ["What do you get from {a} {op} {b}?", "Quick math: {a} {op} {b}", "I need the answer to {a} {op} {b}.",
                   "Give me {a} {opw} {b}.", "Help me with {a} {op} {b}, please.", "What does {a} {op} {b} come to?"],
    ("zh", "train"): ["{a}{op}{b}等于多少？", "计算：{a}{op}{b}", "{a}{op}{b}=？", "请算一下{a}{op}{b}。", "{a}{opw}{b}等于几？",
                    "{a}{opw}{b}是多少？", "算一算{a}{op}{b}。", "{a}{op}{b}的结果是多少？", "帮我算{a}{op}{b}。",
                    "求{a}{op}{b}的值。", "{a}{op}{b}得多少？", "请计算{a}{opw}{b}。", "{a}{op}{b}等于？", "口算：{a}{op}{b}",
                    "你能算出{a}{op}{b}吗？", "{a}{opw}{b}，结果是？", "{a} {op} {b} 等于多少", "计算{a}{opw}{b}的结果。"],
    ("zh", "val"): ["请告诉我{a}{op}{b}的答案。", "{a}{op}{b}，答案是什么？", "我想知道{a}{opw}{b}等于多少。",
                    "麻烦算下{a}{op}{b}。", "考考你：{a}{op}{b}=？", "{a}{op}{b}会得到什么？"],
    # written for the test split after every setting was chosen: no sweep has seen them
    ("en", "test"): ["Could you do {a} {op} {b}?", "{a} {opw} {b} is how much?", "Figure out {a} {op} {b} for me.",
                     "Do the math: {a} {op} {b}", "What number is {a} {op} {b}?", "Mind working out {a} {opw} {b}?"],
    ("zh", "test"): ["{a}{op}{b}是几？", "算算看{a}{op}{b}。", "{a}{opw}{b}得几？", "帮忙求一下{a}{op}{b}。",
                     "{a}{op}{b}，请给出结果。", "问一下，{a}{opw}{b}是多少呢？"],
}
_ARITH_WORDS = {"en": {"+": "plus", "-": "minus", "×": "times", "*": "times"},
                "zh": {"+": "加", "-": "减", "×": "乘以", "*": "乘以"}}
_ARITH_PREFIXES = {"en": ["", "", "", "Hi! ", "Hey, ", "Quick question: "], "zh": ["", "", "", "你好，", "请问，", "嗨！"]}
# Text after the operands, in training only. Without it a model learnt to copy digits from a fixed distance
# before the end of the question: held-out Chinese phrasings that end in new words ("…会得到什么？",
# "…，答案是什么？") scored 0.0-0.05 while the English ones that end in "?" scored 0.9-1.0 (same run).
ARITH_SUFFIX_PROB = 0.3  # at 0.7 (with the greetings on half the questions) held-out add2 fell to 0.62-0.875
_ARITH_SUFFIXES = {
    "en": [" Thanks!", " Please answer.", " Show your steps.", " I'm checking my homework.",
           " Be quick.", " What's the result?", " Can you help?"],
    "zh": ["谢谢！", "请回答。", "写出步骤。", "我在检查作业。", "快点告诉我吧。", "结果是多少呢？", "能帮我吗？"],
}


class Arithmetic:
    """`<op><digits>` arithmetic; val = a fixed ~10% of unordered operand pairs, test the next ~10%."""

    val_frac = 0.1
    test_frac = 0.1

    def __init__(self, name: str):
        m = ARITH_RE.match(name)
        if not m:
            raise ValueError(f"not an arithmetic task name: {name!r} (expected e.g. add2, sub3, mul1, arith2)")
        self.name, self.ops, self.digits = name, ARITH_OPS[m.group(1)], int(m.group(2))
        self.operands = _digits_range(self.digits)
        self._pools: dict[str, list[tuple[int, int, str]]] = {}

    @staticmethod
    def _key(a: int, b: int, op: str) -> str:
        # Commutative ops hash the unordered pair, and subtraction is always big - small,
        # so "a op b" and "b op a" land on the same side of the split.
        lo, hi = sorted((a, b))
        return f"arith:{op}:{lo}:{hi}"

    def _canonical(self, a: int, b: int, op: str) -> tuple[int, int, str]:
        return (max(a, b), min(a, b), op) if op == "-" else (a, b, op)

    def _side(self, a: int, b: int, op: str) -> str:
        return side_of(self._key(a, b, op), self.val_frac, self.test_frac)

    def _pool(self, side: str) -> list[tuple[int, int, str]] | None:
        """All (a, b, op) of one side when the space is small enough to list, else None."""
        if side not in self._pools:
            n = len(self.operands) ** 2 * len(self.ops)
            if n > MAX_ENUMERATED_PAIRS:
                return None
            pool = {
                self._canonical(a, b, op)
                for op in self.ops
                for a in self.operands
                for b in self.operands
                if self._side(a, b, op) == side
            }
            self._pools[side] = sorted(pool)
        return self._pools[side]

    def _draw(self, rng: random.Random, side: str) -> tuple[int, int, str]:
        pool = self._pool(side)
        if pool is not None:
            if not pool:
                raise ValueError(f"task {self.name}: no operand pairs on the {side} side")
            return rng.choice(pool)
        while True:  # large space: rejection-sample pairs that fall on the wanted side
            a, b, op = rng.choice(self.operands), rng.choice(self.operands), rng.choice(self.ops)
            if self._side(a, b, op) == side:
                return self._canonical(a, b, op)

    def sample(self, rng: random.Random, side: str, lang: str, unseen_phrasing: bool = False) -> Example:
        """One question of this task's `side`, in a training phrasing or (unseen_phrasing) one of that side's own."""
        if unseen_phrasing and check_side(side) == "train":
            raise ValueError(f"task {self.name}: held-out phrasings are for held-out operand pairs only")
        a, b, op = self._draw(rng, check_side(side))
        result = a + b if op == "+" else a - b if op == "-" else a * b
        shown_op = "*" if op == "×" and rng.random() < 0.3 else op
        template = rng.choice(_ARITH_TEMPLATES[(lang, side if unseen_phrasing else "train")])
        prefix = rng.choice(_ARITH_PREFIXES[lang])
        suffix = rng.choice(_ARITH_SUFFIXES[lang]) if not unseen_phrasing and rng.random() < ARITH_SUFFIX_PROB else ""
        question = prefix + template.format(a=a, b=b, op=shown_op, opw=_ARITH_WORDS[lang][shown_op]) + suffix
        delta = rng.choice([-10, -3, -2, -1, 1, 1, 2, 3, 10])  # off-by-a-few, the mistakes models make
        wrong = result + delta if result + delta >= 0 or result < 0 else result + abs(delta)
        if op == "+" and self.digits > 1:
            # Multi-digit sums come with a column-by-column trace: a small model learns the 100 one-digit
            # facts and the carry far faster than whole sums, and the final answer is then a copy.
            trace, carry_dropped = addition_trace(a, b)
            if carry_dropped != result:
                wrong = carry_dropped  # the classic mistake: forgetting a carry
            return Example(self.name, lang, question, str(result), f"{trace}{result}", f"{trace}{wrong}")
        return Example(self.name, lang, question, str(result), str(result), str(wrong))


def addition_trace(a: int, b: int) -> tuple[str, int]:
    """("<think>4+7=11 3+5+1=9</think>", the sum with every carry dropped) for a + b ≥ 0: one column per
    step, units first. (Restating the operands first was tried: the tiny demo model then miscopies them.)"""
    steps, sums, carry = [], [], 0
    while a or b or not steps:  # the last column's total is written whole: "9+9+1=19" → 19…
        x, y = a % 10, b % 10
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}" if carry else f"{x}+{y}={total}")
        sums.append(x + y)
        carry, a, b = total // 10, a // 10, b // 10
    dropped = sum((c % 10) * 10**i for i, c in enumerate(sums[:-1])) + sums[-1] * 10 ** (len(sums) - 1)
    return f"<think>{' '.join(steps)}</think>", dropped


# ----------------------------------------------------------------------------------------------------
# Poems

_VERSE_END = tuple("。？！；，：")


def verse_lines(poem_text: str) -> list[list[str]]:
    """The body of a poem as stanzas of verse lines (header lines, sub-headings and blanks dropped)."""
    body = poem_text.split("\n")[2:]  # line 0 is 《title》, line 1 is 作者：author
    stanzas, cur = [], []
    for line in body:
        line = line.strip()
        if 4 <= len(line) <= 40 and line.endswith(_VERSE_END):
            cur.append(line)
        elif cur:
            stanzas.append(cur)
            cur = []
    if cur:
        stanzas.append(cur)
    return stanzas


_NEXT_TEMPLATES = {
    "zh": [
        "《{title}》中“{line}”的下一句是什么？",
        "{author}的《{title}》里，“{line}”后面一句是什么？",
        "接着背诵《{title}》：{line}",
        "“{line}”的下一句是？（出自{author}《{title}》）",
    ],
    "en": [
        'In the poem 《{title}》 by {author}, what line follows "{line}"?',
        "Continue the poem 《{title}》: {line}",
        'What comes after "{line}" in 《{title}》?',
    ],
}


class NextLine:
    """Next line of a poem; val = a fixed ~15% of (poem, line) items, test the next ~15%."""

    name = "next_line"
    val_frac = 0.15  # ~240 held-out items: enough for a couple of hundred distinct questions
    test_frac = 0.15

    def __init__(self, poems: list[dict]):
        nexts: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for p in poems:
            for stanza in verse_lines(p["text"]):
                for line, nxt in zip(stanza, stanza[1:]):
                    nexts[(p["title"], p["author"], line)].add(nxt)
        # A (poem, line) with two different next lines (a repeated refrain) has no single answer.
        items = sorted((k, next(iter(v))) for k, v in nexts.items() if len(v) == 1)
        self.items = {side: [it for it in items
                             if side_of(f"next_line:{it[0][0]}|{it[0][1]}|{it[0][2]}", self.val_frac, self.test_frac) == side]
                      for side in SIDES}
        self.all_lines = sorted({nxt for _, nxt in items})

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One question of `side`."""
        if not self.items[check_side(side)]:
            raise ValueError("task next_line: no poem lines available (is the corpus built?)")
        (title, author, line), nxt = rng.choice(self.items[side])
        question = rng.choice(_NEXT_TEMPLATES[lang]).format(title=title, author=author, line=line)
        wrong = nxt
        while normalize(wrong) == normalize(nxt):  # another poem's line: same style, wrong content
            wrong = rng.choice(self.all_lines)
        return Example(self.name, lang, question, nxt, nxt, wrong)


_AUTHOR_TEMPLATES = {
    "zh": ["《{title}》的作者是谁？", "《{title}》是谁写的？", "谁写了《{title}》这首诗？", "“{first}”出自哪位诗人的《{title}》？"],
    "en": ["Who wrote the poem 《{title}》?", "Who is the author of 《{title}》?", 'Which poet wrote 《{title}》, which begins "{first}"?'],
}


class Author:
    """Author of a poem; val = a fixed ~30% of titles (whole poems), test the next ~20%."""

    name = "author"
    val_frac = 0.3  # few poems (~360), and the held-out side needs a couple of hundred questions
    test_frac = 0.2

    def __init__(self, poems: list[dict]):
        by_title: dict[str, set[str]] = defaultdict(set)
        for p in poems:
            by_title[p["title"]].add(p["author"])
        items = []
        for p in poems:
            stanzas = verse_lines(p["text"])
            if len(by_title[p["title"]]) == 1 and stanzas:  # "《无题》 by whom?" has several answers
                items.append((p["title"], p["author"], stanzas[0][0]))
        items = sorted(set(items))
        self.items = {side: [it for it in items if side_of(f"author:{it[0]}", self.val_frac, self.test_frac) == side]
                      for side in SIDES}
        self.authors = sorted({it[1] for it in items})

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One question of `side`."""
        if not self.items[check_side(side)] or len(self.authors) < 2:
            raise ValueError("task author: not enough poems (is the corpus built?)")
        title, author, first = rng.choice(self.items[side])
        question = rng.choice(_AUTHOR_TEMPLATES[lang]).format(title=title, first=first)
        wrong = author
        while wrong == author:
            wrong = rng.choice(self.authors)
        return Example(self.name, lang, question, author, author, wrong)


# ----------------------------------------------------------------------------------------------------
# Identity

# Held-out phrasings are never used in training, so held-out accuracy measures generalisation.
# Many training phrasings: a small model only answers a new way of asking if it has seen many. The held-out
# phrasings ("val", "test") are asked in no form during training; a test checks that no core question is shared.
_IDENTITY_QUESTIONS = {
    ("en", "train"): ["Who are you?", "What is your name?", "What's your name?", "Introduce yourself.",
                    "What should I call you?", "Are you a human?", "What are you?", "Who made you?",
                    "Tell me who you are.", "Describe yourself.", "Who am I chatting with?", "What model are you?",
                    "Do you have a name?", "Say your name.", "Are you an AI?", "Who built you?",
                    "Please tell me about you.", "What assistant is this?", "Who is this?", "Your name, please.",
                    "Can you introduce yourself?", "Give me a short introduction of yourself."],
    ("en", "val"): ["Tell me about yourself.", "Who am I talking to?", "Can you tell me your name?",
                   "What kind of assistant are you?", "Please introduce yourself briefly.", "Identify yourself."],
    ("zh", "train"): ["你是谁？", "你叫什么名字？", "介绍一下你自己。", "你是什么？", "我该怎么称呼你？",
                    "你是人类吗？", "你是哪个模型？", "你是谁呀？", "请介绍一下你自己。", "说说你自己吧。",
                    "你有名字吗？", "告诉我你的名字。", "我在跟谁聊天？", "你是什么模型？", "你是机器人吗？",
                    "谁创造了你？", "简单介绍一下你自己。", "你能介绍一下自己吗？", "自我介绍一下吧。", "你是做什么的？"],
    ("zh", "val"): ["请问你是哪位？", "能说说你是谁吗？", "跟我介绍一下你自己吧。", "你的名字是什么？",
                    "我在和谁说话？", "做个自我介绍。"],
    # written for the test split after every setting was chosen: no sweep has seen them
    ("en", "test"): ["May I know who you are?", "What are you called?", "Which assistant am I speaking with?",
                     "Mind telling me your name?", "Who exactly are you?", "How do you introduce yourself?"],
    ("zh", "test"): ["你到底是谁？", "怎么称呼您？", "你叫啥？", "现在回答我的是谁？", "能自我介绍一下吗？",
                     "你是哪个助手？"],
}
# Greetings a request may start with: identity questions on every side, the open-ended requests' training phrasings
# (data/open_tasks.py), so that a greeting is no cue for the identity line
REQUEST_PREFIXES = {
    "en": ["", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "Excuse me, "],
    "zh": ["", "你好，", "嗨！", "请问，", "打扰一下，"],
}
_IDENTITY_REPLIES = {
    "en": ["I am {name}, a small language model trained from scratch.",
           "My name is {name}. I'm a small language model trained from scratch.",
           "I'm {name}, a small language model built from scratch. How can I help you?"],
    "zh": ["我是{name}，一个从零开始训练的小型语言模型。",
           "我叫{name}，是一个从零训练的小语言模型。",
           "我是{name}，一个从头训练的小型语言模型，有什么可以帮你？"],
}
_OTHER_NAMES = ["ChatGPT", "Claude", "Llama", "Qwen", "MiniMind", "Gemini", "DeepSeek", "Mistral"]


def with_prefix(prefix: str, question: str, lang: str) -> str:
    """`question` after a greeting of REQUEST_PREFIXES (an English question goes on in lower case after ", " / ": ")."""
    if prefix.endswith((", ", ": ")) and lang == "en":
        question = question[0].lower() + question[1:]
    return prefix + question


class Identity:
    """Identity questions; val and test = question phrasings that training never uses (each side its own)."""

    name = "identity"

    def __init__(self, model_name: str):
        if not model_name.strip():
            raise ValueError("identity: the model name must not be empty")
        self.model_name = model_name
        low = model_name.lower()
        # A wrong name must not contain the right one (else check_answer would accept the rejected reply).
        self.others = [n for n in _OTHER_NAMES if low not in n.lower() and n.lower() not in low]

    def questions(self, lang: str, side: str) -> list[str]:
        """Every phrasing of one side: prefix × core question × (as written | lower case, no final mark)."""
        out = []
        for core in _IDENTITY_QUESTIONS[(lang, check_side(side))]:
            for prefix in REQUEST_PREFIXES[lang]:
                q = with_prefix(prefix, core, lang)
                out.append(q)
                out.append(q.lower().rstrip("?.!？。！"))
        return sorted(set(out))

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One question of `side`."""
        question = rng.choice(self.questions(lang, side))
        template = rng.choice(_IDENTITY_REPLIES[lang])
        wrong = template.format(name=rng.choice(self.others))
        return Example(self.name, lang, question, self.model_name, template.format(name=self.model_name), wrong)

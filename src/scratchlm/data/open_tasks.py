"""Open-ended chats from the corpus ("fortune", "recite", "continue"): no single right answer, so they train and
show the chat model, but no held-out accuracy is computed for them (`answers.is_checkable`)."""

from __future__ import annotations

import random

from scratchlm.data.tasks import REQUEST_PREFIXES, Example, check_side, side_of, verse_lines, with_prefix

# Open-ended chats from the corpus: no single right answer, so they train and show the chat model, but no
# held-out accuracy is computed for them (`is_checkable`). Training chats use the corpus train split; the
# held-out prompts use held-out phrasings, val and test each their own (and, for "continue", texts of the corpus
# validation split: a fixed half for val, the other half for test).

_FORTUNE_QUESTIONS = {
    ("en", "train"): ["Tell me a fortune.", "Give me a fortune.", "Tell me a saying.", "Share a quote with me.",
                    "Say something wise.", "Give me a quote.", "Tell me something funny.", "I'd like a fortune cookie.",
                    "Tell me a joke or a saying.", "Share some wisdom.", "Quote something for me.", "fortune please",
                    # questions too: with statements only, a request asked as a question ("Do you ...?") got the
                    # identity line (val, seed 1: 18 of 46 open-ended replies)
                    "Could you share a saying with me?", "Do you know a good proverb?", "What is a good motto?",
                    "Can you tell me a famous quote?", "Teach me a proverb.", "Let me hear a wise saying.",
                    "What would a fortune cookie say?", "Would you give me a maxim?"],
    ("en", "val"): ["Got a fortune for me?", "Any words of wisdom?", "Cheer me up with a quote."],
    ("en", "test"): ["Do you have a saying for today?", "Inspire me with a quote.", "Any fortune for me today?"],
    ("zh", "train"): ["给我讲一句格言。", "说一句名言。", "讲一句有道理的话。", "给我一句箴言吧。", "说句至理名言。",
                    "来一句古人的话。", "讲一句经典名句。", "分享一句话给我。", "说一句论语里的话。", "来一句名言警句。",
                    "你知道什么名言吗？", "能告诉我一句谚语吗？", "有没有好的座右铭？", "你会说格言吗？", "来一句俗语。",
                    "可以送我一句名言吗？"],
    ("zh", "val"): ["有什么人生格言吗？", "送我一句话吧。", "说点有智慧的话。"],
    ("zh", "test"): ["今天有什么金句？", "给我来句警句。", "讲一句让人深思的话。"],
}
_RECITE_QUESTIONS = {
    ("en", "train"): ["Recite a poem by {author}.", "Can you recite a poem by {author}?", "Recite 《{title}》.",
                    "Say a poem written by {author}.", "Please recite the poem 《{title}》.",
                    "Could you recite something by {author}?", "Which poems did {author} write? Recite one.",
                    "Can you say 《{title}》 aloud?", "Show me the poem 《{title}》.", "Do you remember 《{title}》?"],
    ("en", "val"): ["Do you know a poem by {author}? Recite it.", "Let me hear 《{title}》."],
    ("en", "test"): ["I'd love to hear a poem by {author}.", "Could you say 《{title}》 for me?"],
    ("zh", "train"): ["背诵一首{author}的诗。", "请背一首{author}的诗。", "背诵《{title}》。", "请背诵{author}的《{title}》。",
                    "念一首{author}的诗给我听。", "你会背《{title}》吗？", "你能背一首{author}的诗吗？",
                    "《{title}》的全文是什么？", "请把《{title}》念出来。", "{author}有哪些诗？念一首。"],
    ("zh", "val"): ["{author}写过什么诗？背一首。", "来一首《{title}》。"],
    ("zh", "test"): ["给我念念{author}的诗。", "《{title}》怎么背？"],
}
_CONTINUE_QUESTIONS = {
    ("en", "train"): ["Continue this text: {head}", "Continue: {head}", "Finish this: {head}", "Complete the text: {head}",
                    "Can you continue this? {head}", "Keep going: {head}", "Carry on from here: {head}",
                    "Write the rest: {head}", "Do you know how this ends? {head}"],
    ("en", "val"): ["How does this go on? {head}"],
    ("en", "test"): ["What comes next? {head}"],
    ("zh", "train"): ["续写：{head}", "接着写下去：{head}", "把这句话补全：{head}", "继续：{head}",
                    "你能接着写吗？{head}", "写完这句：{head}", "把后面的写出来：{head}"],
    ("zh", "val"): ["后面是什么？{head}"],
    ("zh", "test"): ["请往下写：{head}"],
}
OPEN_TASKS = ("fortune", "recite", "continue")
_OPEN_MAX_CHARS = {"en": 160, "zh": 72}  # replies short enough for the demo's 128-token SFT rows


def ask(rng: random.Random, table: dict[tuple[str, str], list[str]], lang: str, side: str, **fields: str) -> str:
    """A request of `side` from `table`'s phrasings; on the training side, half of them after a greeting (as the
    identity questions are asked), drawn only there, so the held-out prompts stay what they were."""
    side = check_side(side)
    question = rng.choice(table[(lang, side)]).format(**fields)
    if side == "train" and rng.random() < 0.5:
        question = with_prefix(rng.choice(REQUEST_PREFIXES[lang][1:]), question, lang)
    return question


class _CorpusTask:
    """Base of the open-ended tasks: corpus documents per side (the corpus train split for "train"; a fixed half
    of another split each for "val" and "test")."""

    name = "open"

    def __init__(self, docs: dict[str, list[dict]]):
        self.docs = {side: [d for d in ds if self.usable(d)] for side, ds in docs.items()}

    def usable(self, doc: dict) -> bool:
        """Whether a document can be a reply of this task."""
        return 12 <= len(doc["text"].strip()) <= _OPEN_MAX_CHARS[doc["lang"]]

    def pick(self, rng: random.Random, side: str, lang: str) -> dict:
        pool = [d for d in self.docs[side] if d["lang"] == lang] or self.docs[side]
        if not pool:
            raise ValueError(f"task {self.name}: no usable corpus documents (is the corpus built?)")
        return rng.choice(pool)


class Fortune(_CorpusTask):
    """"Tell me a fortune" → a short fortune / saying of the asked language."""

    name = "fortune"

    def usable(self, doc: dict) -> bool:
        return "author" not in doc and doc["source"] not in ("ascii-art", "translate-me") and super().usable(doc)

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One request of `side` (held-out = that side's own phrasings)."""
        reply = self.pick(rng, "train", lang)["text"].strip()
        wrong = self.pick(rng, "train", "zh" if lang == "en" else "en")["text"].strip()  # the other language
        question = ask(rng, _FORTUNE_QUESTIONS, lang, side)
        return Example(self.name, lang, question, reply, reply, wrong)


class Recite(_CorpusTask):
    """"Recite a poem by AUTHOR" / "recite 《TITLE》" → the poem (short poems of the train split)."""

    name = "recite"

    def usable(self, doc: dict) -> bool:
        return "author" in doc and "title" in doc and super().usable(doc)

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One request of `side` (held-out = that side's own phrasings)."""
        poem = self.pick(rng, "train", "zh")
        body = "\n".join(line for st in verse_lines(poem["text"]) for line in st)
        reply = f"《{poem['title']}》\n{body}"
        others = [d for d in self.docs["train"] if d["author"] != poem["author"]]
        wrong_poem = rng.choice(others) if others else poem
        wrong = f"《{wrong_poem['title']}》\n" + "\n".join(line for st in verse_lines(wrong_poem["text"]) for line in st)
        question = ask(rng, _RECITE_QUESTIONS, lang, side, author=poem["author"], title=poem["title"])
        return Example(self.name, lang, question, reply, reply, wrong)


class Continue(_CorpusTask):
    """"Continue this text: HEAD" → the rest of a corpus document (validation-split texts when held out)."""

    name = "continue"

    def usable(self, doc: dict) -> bool:
        return "author" not in doc and len(doc["text"].strip()) >= 24 and super().usable(doc)

    def sample(self, rng: random.Random, side: str, lang: str) -> Example:
        """One request of `side`: its text is cut at a space (English) or a character (Chinese)."""
        doc = self.pick(rng, check_side(side), lang)
        text = " ".join(doc["text"].split()) if lang == "en" else doc["text"].strip()
        cut = int(len(text) * rng.uniform(0.3, 0.6))
        if lang == "en" and " " in text[cut:]:
            cut = text.index(" ", cut)
        head, tail = text[:cut].strip(), text[cut:].strip()
        wrong = self.pick(rng, "train", lang)["text"].strip()  # a different text: no continuation of this one
        question = ask(rng, _CONTINUE_QUESTIONS, lang, side, head=head)
        return Example(self.name, lang, question, tail, tail, wrong)


def open_task_docs(train: list[dict], held_out: list[dict]) -> dict[str, list[dict]]:
    """The documents of each side: `train` for training, `held_out` cut in two fixed halves for val and test."""
    halves = {"val": [], "test": []}
    for d in held_out:
        halves[side_of(f"open:{d['text']}", 0.5, 0.5)].append(d)
    return {"train": train, **halves}


def is_checkable(task: str) -> bool:
    """Whether `check_answer` can grade a task (the open-ended corpus chats have no single right answer)."""
    return task not in OPEN_TASKS

"""Open-ended chats from the corpus ("fortune", "recite", "continue"): no single right answer, so they train and
show the chat model, but no held-out accuracy is computed for them (`answers.is_checkable`)."""

from __future__ import annotations

import random

from scratchlm.data.tasks import Example, verse_lines

# Open-ended chats from the corpus: no single right answer, so they train and show the chat model, but no
# held-out accuracy is computed for them (`is_checkable`). Training chats use the corpus train split; the
# held-out prompts use held-out phrasings (and, for "continue", texts of the validation split).

_FORTUNE_QUESTIONS = {
    ("en", False): ["Tell me a fortune.", "Give me a fortune.", "Tell me a saying.", "Share a quote with me.",
                    "Say something wise.", "Give me a quote.", "Tell me something funny.", "I'd like a fortune cookie.",
                    "Tell me a joke or a saying.", "Share some wisdom.", "Quote something for me.", "fortune please"],
    ("en", True): ["Got a fortune for me?", "Any words of wisdom?", "Cheer me up with a quote."],
    ("zh", False): ["给我讲一句格言。", "说一句名言。", "讲一句有道理的话。", "给我一句箴言吧。", "说句至理名言。",
                    "来一句古人的话。", "讲一句经典名句。", "分享一句话给我。", "说一句论语里的话。", "来一句名言警句。"],
    ("zh", True): ["有什么人生格言吗？", "送我一句话吧。", "说点有智慧的话。"],
}
_RECITE_QUESTIONS = {
    ("en", False): ["Recite a poem by {author}.", "Can you recite a poem by {author}?", "Recite 《{title}》.",
                    "Say a poem written by {author}.", "Please recite the poem 《{title}》."],
    ("en", True): ["Do you know a poem by {author}? Recite it.", "Let me hear 《{title}》."],
    ("zh", False): ["背诵一首{author}的诗。", "请背一首{author}的诗。", "背诵《{title}》。", "请背诵{author}的《{title}》。",
                    "念一首{author}的诗给我听。", "你会背《{title}》吗？"],
    ("zh", True): ["{author}写过什么诗？背一首。", "来一首《{title}》。"],
}
_CONTINUE_QUESTIONS = {
    ("en", False): ["Continue this text: {head}", "Continue: {head}", "Finish this: {head}", "Complete the text: {head}"],
    ("en", True): ["How does this go on? {head}"],
    ("zh", False): ["续写：{head}", "接着写下去：{head}", "把这句话补全：{head}", "继续：{head}"],
    ("zh", True): ["后面是什么？{head}"],
}
OPEN_TASKS = ("fortune", "recite", "continue")
_OPEN_MAX_CHARS = {"en": 160, "zh": 72}  # replies short enough for the demo's 128-token SFT rows


class _CorpusTask:
    """Base of the open-ended tasks: corpus documents of one language per side (train split / another)."""

    name = "open"

    def __init__(self, docs: dict[bool, list[dict]]):
        self.docs = {val: [d for d in ds if self.usable(d)] for val, ds in docs.items()}

    def usable(self, doc: dict) -> bool:
        """Whether a document can be a reply of this task."""
        return 12 <= len(doc["text"].strip()) <= _OPEN_MAX_CHARS[doc["lang"]]

    def pick(self, rng: random.Random, val: bool, lang: str) -> dict:
        pool = [d for d in self.docs[val] if d["lang"] == lang] or self.docs[val]
        if not pool:
            raise ValueError(f"task {self.name}: no usable corpus documents (is the corpus built?)")
        return rng.choice(pool)


class Fortune(_CorpusTask):
    """"Tell me a fortune" → a short fortune / saying of the asked language."""

    name = "fortune"

    def usable(self, doc: dict) -> bool:
        return "author" not in doc and doc["source"] not in ("ascii-art", "translate-me") and super().usable(doc)

    def sample(self, rng: random.Random, val: bool, lang: str) -> Example:
        """One request of the `val` side (held-out = held-out phrasings)."""
        reply = self.pick(rng, False, lang)["text"].strip()
        wrong = self.pick(rng, False, "zh" if lang == "en" else "en")["text"].strip()  # the other language
        question = rng.choice(_FORTUNE_QUESTIONS[(lang, val)])
        return Example(self.name, lang, question, reply, reply, wrong)


class Recite(_CorpusTask):
    """"Recite a poem by AUTHOR" / "recite 《TITLE》" → the poem (short poems of the train split)."""

    name = "recite"

    def usable(self, doc: dict) -> bool:
        return "author" in doc and "title" in doc and super().usable(doc)

    def sample(self, rng: random.Random, val: bool, lang: str) -> Example:
        """One request of the `val` side (held-out = held-out phrasings)."""
        poem = self.pick(rng, False, "zh")
        body = "\n".join(line for st in verse_lines(poem["text"]) for line in st)
        reply = f"《{poem['title']}》\n{body}"
        others = [d for d in self.docs[False] if d["author"] != poem["author"]]
        wrong_poem = rng.choice(others) if others else poem
        wrong = f"《{wrong_poem['title']}》\n" + "\n".join(line for st in verse_lines(wrong_poem["text"]) for line in st)
        question = rng.choice(_RECITE_QUESTIONS[(lang, val)]).format(author=poem["author"], title=poem["title"])
        return Example(self.name, lang, question, reply, reply, wrong)


class Continue(_CorpusTask):
    """"Continue this text: HEAD" → the rest of a corpus document (validation-split texts when held out)."""

    name = "continue"

    def usable(self, doc: dict) -> bool:
        return "author" not in doc and len(doc["text"].strip()) >= 24 and super().usable(doc)

    def sample(self, rng: random.Random, val: bool, lang: str) -> Example:
        """One request of the `val` side: its text is cut at a space (English) or a character (Chinese)."""
        text = " ".join(self.pick(rng, val, lang)["text"].split()) if lang == "en" else self.pick(rng, val, lang)["text"].strip()
        cut = int(len(text) * rng.uniform(0.3, 0.6))
        if lang == "en" and " " in text[cut:]:
            cut = text.index(" ", cut)
        head, tail = text[:cut].strip(), text[cut:].strip()
        wrong = self.pick(rng, False, lang)["text"].strip()  # a different text: no continuation of this one
        question = rng.choice(_CONTINUE_QUESTIONS[(lang, val)]).format(head=head)
        return Example(self.name, lang, question, tail, tail, wrong)


def is_checkable(task: str) -> bool:
    """Whether `check_answer` can grade a task (the open-ended corpus chats have no single right answer)."""
    return task not in OPEN_TASKS

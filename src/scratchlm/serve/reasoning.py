"""Split a model's `<think>…</think>` block from its answer, also when the text arrives in pieces.

The server returns the block as `reasoning_content` (DeepSeek's API, vLLM's reasoning parsers) and as
`reasoning` (newer vLLM), apart from `content`. Only a reply that *starts* with `<think>` (after
whitespace) has reasoning; an unterminated block (the reply ran out of tokens) is all reasoning."""

from __future__ import annotations

START, END = "<think>", "</think>"


class ThinkSplitter:
    """Incremental splitter: `feed(delta)` → (reasoning delta, content delta); `finish()` flushes."""

    def __init__(self) -> None:
        self._state = "start"  # start → (think →) content
        self._buf = ""  # text held back because it may be the start of a tag
        self.opened = False  # the reply began with <think>

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and content parts of the next piece of generated text."""
        self._buf += text
        reasoning, content = "", ""
        if self._state == "start":
            stripped = self._buf.lstrip()
            if stripped.startswith(START):
                self._state, self._buf, self.opened = "think", stripped[len(START):], True
            elif START.startswith(stripped):  # still could be "<thi…": wait (whitespace-only too)
                return "", ""
            else:
                self._state = "content"
        if self._state == "think":
            end = self._buf.find(END)
            if end < 0:
                keep = _partial_suffix(self._buf, END)  # "…</thi" may become "</think>"
                reasoning, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                return reasoning, ""
            reasoning, self._buf = self._buf[:end], self._buf[end + len(END):]
            self._state = "after"
        if self._state == "after":
            # The answer follows the block; the newlines a template puts between them are not part of it.
            self._buf = self._buf.lstrip("\n")
            if not self._buf:
                return reasoning, ""
            self._state = "content"
        content, self._buf = self._buf, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Whatever is still held back, once the text is complete."""
        rest, self._buf = self._buf, ""
        if self._state == "think":
            return rest, ""
        if self._state == "after":
            return "", rest.lstrip("\n")
        return "", rest


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole reply."""
    s = ThinkSplitter()
    r1, c1 = s.feed(text)
    r2, c2 = s.finish()
    return (r1 + r2 if s.opened else None), c1 + c2


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0

"""Incremental detokenisation with stop strings: each new token costs a decode of a few tokens, not of the
whole output (the old engine re-decoded every row's whole output every step).

Byte-level BPE tokens need not end on a character boundary, so the text of the newest tokens is decoded
together with a few tokens before them (from `prefix`), and held back while it ends in an incomplete UTF-8
sequence (U+FFFD). Stop strings are searched only in the text not yet released plus the longest stop string's
length of what came before; text that could still grow into a stop string is held back, not streamed.
"""

from __future__ import annotations

from typing import Any, Sequence


class IncrementalText:
    """The text of one sample as tokens arrive: `push(token)` → (text safe to stream now, stopped)."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer, self.stops = tokenizer, list(stop_strings)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already added to `text`
        self.read = 0
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.released = 0  # characters of `text` handed out
        self.stop_at: int | None = None  # character where the stop string began

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return the newly releasable text and whether a stop string ended the sample."""
        self.ids.append(int(token))
        if self.tokenizer is None:
            return "", False
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return "", False  # an incomplete character: wait for the next token
        searched_from = max(0, len(self.text) - self.longest + 1)
        self.text += now[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        if self.stops:
            hits = [i for i in (self.text.find(s, searched_from) for s in self.stops) if i >= 0]
            if hits:
                self.stop_at = min(hits)
                self.text = self.text[:self.stop_at]
                return self._release(len(self.text)), True
            return self._release(self._safe_end()), False
        return self._release(len(self.text)), False

    def _safe_end(self) -> int:
        """Where the text may be released up to: before the longest tail that starts some stop string."""
        for i in range(max(self.released, len(self.text) - self.longest + 1), len(self.text)):
            tail = self.text[i:]
            if any(s.startswith(tail) for s in self.stops):
                return i
        return len(self.text)

    def _release(self, end: int) -> str:
        out = self.text[self.released:end]
        self.released = max(self.released, end)
        return out

    def flush(self) -> str:
        """The held-back text, when the sample ends for another reason (stop id, length)."""
        return self._release(len(self.text))

    def ids_before_stop(self, ids: list[int]) -> list[int]:
        """The leading tokens of `ids` whose text lies wholly before the stop string."""
        if self.stop_at is None:
            return ids
        m = len(ids)
        while m > 0 and len(self._decode(ids[:m])) > self.stop_at:
            m -= 1
        return ids[:m]

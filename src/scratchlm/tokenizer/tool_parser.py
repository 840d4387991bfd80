"""Tool calls out of generated text, whole or as it streams (the Hermes format of tokenizer/tools.py).

One grammar for both, so a streamed reply reassembles to exactly what the whole-text parse returns: a
`<tool_call>` block whose body starts `{"name": "NAME", "arguments": ` is a call to NAME whose arguments are the
rest of the body less the closing `}` (the model's own text, so re-rendering a call gives back the tokens it
wrote; like OpenAI's, they are not guaranteed to be valid JSON). A block in another key order that is valid JSON
is a call too, its arguments re-serialised; any other block stays text. Text before the first call is content
(its trailing whitespace dropped); whitespace between and after calls is dropped. An unterminated last block
(the reply ran out of tokens) is parsed the same way at `finish()`.

`ToolCallStream.feed(text)` returns deltas as vLLM's hermes parser streams them: content text, then per call
first its index, id and name, then argument fragments."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from scratchlm.tokenizer.tools import CALL_CLOSE, CALL_OPEN

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"\s*,\s*"arguments"\s*:\s*', re.DOTALL)
_TAIL = re.compile(r"\s*\}?\s*$")  # what may still turn out to be the body's closing brace


@dataclass
class ToolCall:
    """One parsed call: `arguments` is a JSON string (as OpenAI's API carries it)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def openai(self) -> dict:
        """{"id", "type": "function", "function": {"name", "arguments"}}."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Delta:
    """A piece of parsed output: content text, or a call's start (index, id, name) or an argument fragment."""

    content: str = ""
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _json_ok(s: str) -> bool:
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


def final_arguments(rest: str) -> str:
    """The arguments of a block whose body after `"arguments": ` is `rest`: less trailing space and the body's
    own closing brace (kept when only its removal would break valid JSON, or when braces say it is the
    arguments' own)."""
    r = rest.rstrip()
    if not r.endswith("}"):
        return r
    r2 = r[:-1].rstrip()
    if _json_ok(r2):
        return r2
    if _json_ok(r):
        return r
    return r2 if r.count("}") > r.count("{") else r


class ToolCallStream:
    """Incremental parser: `feed(text)` → list of `Delta`; `finish()` flushes; `calls` holds the calls so far."""

    def __init__(self) -> None:
        self._state = "content"  # content → call → between → call ...
        self._buf = ""  # text not yet decided (a possible tag start, trailing space, a block's body)
        self._emitted = 0  # characters of the current call's arguments already sent
        self._named = False  # the current call's name has been sent
        self.calls: list[ToolCall] = []
        self.content = ""

    def feed(self, text: str) -> list[Delta]:
        """The deltas that `text` (the next piece of generated text) makes certain."""
        self._buf += text
        out: list[Delta] = []
        while True:
            if self._state in ("content", "between"):
                at = self._buf.find(CALL_OPEN)
                if at < 0:
                    keep = _partial_suffix(self._buf, CALL_OPEN)
                    head = self._buf[: len(self._buf) - keep]
                    sure = head.rstrip()  # trailing space waits: it is dropped if a call follows
                    if sure and self._state == "between":
                        self._state = "content"  # text after a call: more content
                    if sure:
                        out.append(self._text(sure))
                        self._buf = self._buf[len(sure):]
                    return out
                before = self._buf[:at].rstrip()
                if before:
                    out.append(self._text(before))
                self._buf = self._buf[at + len(CALL_OPEN):]
                self._state, self._emitted, self._named = "call", 0, False
            end = self._buf.find(CALL_CLOSE)
            body = self._buf if end < 0 else self._buf[:end]
            if end < 0:
                out.extend(self._partial(body[: len(body) - _partial_suffix(body, CALL_CLOSE)]))
                return out
            out.extend(self._close(body, closed=True))
            self._buf = self._buf[end + len(CALL_CLOSE):]
            self._state = "between"

    def finish(self) -> list[Delta]:
        """Whatever is still held back, once the text is complete (an open block is closed as it stands)."""
        rest, self._buf = self._buf, ""
        if self._state == "call":
            self._state = "between"
            return self._close(rest, closed=False)
        if rest and (self._state == "content" or rest.strip()):
            return [self._text(rest)]
        return []  # space after a call

    # --- steps -------------------------------------------------------------------------------------

    def _text(self, s: str) -> Delta:
        self.content += s
        return Delta(content=s)

    def _start(self, name: str) -> Delta:
        self.calls.append(ToolCall(name, ""))
        self._named = True
        c = self.calls[-1]
        return Delta(index=len(self.calls) - 1, id=c.id, name=name)

    def _args(self, piece: str) -> list[Delta]:
        if not piece:
            return []
        self.calls[-1].arguments += piece
        self._emitted += len(piece)
        return [Delta(index=len(self.calls) - 1, arguments=piece)]

    def _partial(self, body: str) -> list[Delta]:
        """Deltas of an open block's body so far: the name once the head is complete, then the arguments except
        a tail that may be the body's closing brace."""
        m = _HEAD.match(body)
        if m is None:
            return []  # the head is not complete yet
        out = [] if self._named else [self._start(m.group(1))]
        rest = body[m.end():]
        sure = rest[: _TAIL.search(rest).start()]
        return out + self._args(sure[self._emitted:])

    def _close(self, body: str, closed: bool) -> list[Delta]:
        """Deltas that end a block: the arguments' last fragment, or the whole call (or text) if its head was
        never recognised while it streamed."""
        m = _HEAD.match(body)
        if m is not None:
            out = [] if self._named else [self._start(m.group(1))]
            final = final_arguments(body[m.end():])
            return out + self._args(final[self._emitted:])
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and isinstance(obj.get("arguments", {}), dict):
            return [self._start(obj["name"]), *self._args(json.dumps(obj.get("arguments", {}), ensure_ascii=False))]
        return [self._text(CALL_OPEN + body + (CALL_CLOSE if closed else ""))]


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole reply: the same grammar as `ToolCallStream`, so the two always agree."""
    p = ToolCallStream()
    p.feed(text)
    p.finish()
    return p.content, p.calls

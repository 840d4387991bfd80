"""schemathesis hooks for tests/test_serve_fuzz.py, loaded by `schemathesis run` through SCHEMATHESIS_HOOKS.

schemathesis 4 cannot be told to send lone surrogates: its string alphabet is `st.characters(codec="utf-8")`
(and with `--generation-codec` of None it excludes category Cs on purpose), and a codec that can encode
surrogates (`--generation-codec unicode_escape`) draws them from the whole code space, so they appear in about
one string of several hundred. Nor does it send strings longer than the schema allows in positive mode, and the
schema states no character cap (the cap depends on the model). So `flatmap_body` rewrites string leaves of the
bodies it generates:

- a lone surrogate (U+D800..U+DFFF) inserted at a drawn position: the request JSON carries it as a `\\udXXX`
  escape (requests serialises with `ensure_ascii`), which is valid JSON but not valid Unicode;
- the string padded past FUZZ_OVER_CAP_CHARS characters (the server's longest text cap, under its 1 MiB body
  limit), so the length checks run.

`after_call` appends one JSON line per request actually sent to FUZZ_SENT_LOG, read from the request bytes on the
wire (not from the generated case): the path, the status, whether a string held a lone surrogate, the longest
string. The test counts those lines, so a run that sent no such case fails."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, Iterator

import schemathesis
from hypothesis import strategies as st

from scratchlm.tokenizer.bpe import lone_surrogate

# The test sets it from the model; 20,000 is over any cap of the small test models and keeps two padded fields
# (4-byte characters escaped as 12 JSON bytes) under the 1 MiB body limit.
OVER_CAP = int(os.environ.get("FUZZ_OVER_CAP_CHARS", "20000"))
SENT_LOG = os.environ.get("FUZZ_SENT_LOG")

Path = tuple[Any, ...]


def _string_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_paths(v, (*path, i))


def _replace(value: Any, path: Path, new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


def _get(value: Any, path: Path) -> Any:
    for p in path:
        value = value[p]
    return value


# Which mutation comes next, and whether a body is kept as generated, go round in turn rather than being drawn:
# hypothesis' draws favour their first choice this early in a run (13 mutations in 80 bodies, 12 of them
# surrogates, once the chat schema grew its tool fields), so the counts the test checks hung on the schema's shape.
_TURN = itertools.count()
_KEEP = itertools.count()


@st.composite
def _mutated(draw: st.DrawFn, body: Any, paths: list[Path]) -> Any:
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=2, unique=True)):
        old = _get(body, path)
        if next(_TURN) % 2:
            at = draw(st.integers(0, len(old)))
            new = old[:at] + draw(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)) + old[at:]
        else:
            new = old + draw(st.sampled_from("xé字🙂")) * (OVER_CAP + 1 - len(old) + draw(st.integers(0, 64)))
        body = _replace(body, path, new)
    return body


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    """A quarter of the bodies keep their strings; the rest get a lone surrogate or an over-cap length in one or two
    of them (schemathesis' coverage phase, which does not pass through this hook, sends bodies as generated)."""
    paths = list(_string_paths(body))
    if not paths:
        return st.just(body)
    # The texts the server checks for Unicode and length (a surrogate in `role` only meets the enum's 400); other
    # string fields when a body has none.
    text = [p for p in paths if any(k in ("content", "prompt", "stop", "text") for k in p if isinstance(k, str))]
    paths = text or paths
    return st.just(body) if next(_KEEP) % 4 == 0 else _mutated(body, paths)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """One line per request sent: what its wire bytes held, and the status it got."""
    if not SENT_LOG:
        return
    raw = response.request.body or b""
    raw = raw.encode() if isinstance(raw, str) else raw
    try:
        strings = list(_strings(json.loads(raw)))  # Python's json keeps a lone "\ud800" escape as a lone surrogate
    except ValueError:
        strings = []
    try:
        code, message = response.json()["error"]["code"], response.json()["error"]["message"][:200]
    except Exception:
        code = message = None
    line = {"method": case.method, "path": case.path, "status": response.status_code, "code": code, "message": message,
            "surrogate": any(lone_surrogate(s) for s in strings), "longest": max(map(len, strings), default=0)}
    with open(SENT_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")

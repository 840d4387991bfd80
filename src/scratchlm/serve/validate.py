"""The edge check every request passes before any tokenising, embedding or retrieval: each text is well-formed
Unicode (a lone UTF-16 surrogate such as JSON "\\ud800" is refused, naming the field), no text is longer than
the context could hold, stop strings are short, and OpenAI fields that would change the answer but are not
implemented are refused rather than silently ignored. Tools are checked here too: names, unique, schemas that are
JSON-schema objects of bounded depth and size, a `tool_choice` that names a listed tool, calls only in assistant
messages. All of it is O(characters): cheap on the event loop."""

from __future__ import annotations

import json
from typing import Any, Iterator

from scratchlm.serve import protocol as P
from scratchlm.serve.errors import APIError
from scratchlm.tokenizer.bpe import lone_surrogate
from scratchlm.tokenizer.tools import TOOL_NAME


# Fields OpenAI defines that would change the answer, and the values that leave it unchanged (accepted as if
# absent). Harmless fields (`user`, `metadata`, `store`, `service_tier`, ...) are not listed: they are ignored.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
}


def check_text(text: str, param: str) -> None:
    """400 naming `param` when `text` holds a lone surrogate (it has no UTF-8 form: nothing downstream can
    encode it)."""
    bad = lone_surrogate(text)
    if bad:
        raise APIError(400, f"{param} is not valid Unicode: a lone UTF-16 surrogate U+{ord(bad[1]):04X} at "
                       f"character {bad[0]} (send well-formed text; in JSON a surrogate escape must be one "
                       f"half of a pair)", param=param, code="invalid_unicode")


def _message_texts(req: P.ChatCompletionRequest) -> Iterator[tuple[str, str]]:
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            yield m.content, f"messages[{i}].content"
        elif m.content:
            for j, part in enumerate(m.content):
                yield part.text, f"messages[{i}].content[{j}].text"
        for j, call in enumerate(m.tool_calls or []):
            yield call.function.name, f"messages[{i}].tool_calls[{j}].function.name"
            yield call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments"


def _depth(obj: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile schema cannot overflow the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if d > P.MAX_SCHEMA_DEPTH:
            break
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _tool_name(name: str, param: str) -> None:
    if not TOOL_NAME.match(name):
        raise APIError(400, f"{param}={name[:80]!r} is not a valid function name: 1-64 letters, digits, '_' or '-'",
                       param=param, code="invalid_tool")


def _check_tools(req: P.ChatCompletionRequest) -> list[tuple[str, str]]:
    """400 naming the field for a bad `tools` / `tool_choice` / call in the history; the tools' JSON texts (they go
    into the prompt, so they count towards its length)."""
    texts: list[tuple[str, str]] = []
    names: set[str] = set()
    total = 0
    for i, t in enumerate(req.tools or []):
        f = t.function
        _tool_name(f.name, f"tools[{i}].function.name")
        if f.name in names:
            raise APIError(400, f"tools[{i}].function.name={f.name!r} is listed twice", param=f"tools[{i}].function.name",
                           code="invalid_tool")
        names.add(f.name)
        if f.parameters is not None:
            where = f"tools[{i}].function.parameters"
            if f.parameters.get("type", "object") != "object":
                raise APIError(400, f"{where} must be a JSON schema of type 'object' (the arguments are an object), "
                               f"not {f.parameters.get('type')!r}", param=where, code="invalid_tool")
            if _depth(f.parameters) > P.MAX_SCHEMA_DEPTH:
                raise APIError(400, f"{where} is nested deeper than {P.MAX_SCHEMA_DEPTH} levels", param=where,
                               code="invalid_tool")
        text = json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False)
        total += len(text)
        if total > P.MAX_TOOLS_CHARS:
            raise APIError(400, f"tools take {total}+ characters of JSON; at most {P.MAX_TOOLS_CHARS}", param="tools",
                           code="invalid_tool")
        check_text(text, f"tools[{i}]")
        texts.append((text, f"tools[{i}]"))
    choice = req.tool_choice
    if isinstance(choice, P.NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names {choice.function.name[:80]!r}, which is not in tools "
                           f"({', '.join(sorted(names)) or 'none given'})", param="tool_choice", code="invalid_tool")
    elif choice == "required" and not names:
        raise APIError(400, "tool_choice='required' needs tools to call; none were given", param="tool_choice",
                       code="invalid_tool")
    for i, m in enumerate(req.messages):
        if m.tool_calls and m.role != "assistant":
            raise APIError(400, f"messages[{i}].tool_calls: only assistant messages carry tool calls, not {m.role!r}",
                           param=f"messages[{i}].tool_calls")
        for j, call in enumerate(m.tool_calls or []):
            _tool_name(call.function.name, f"messages[{i}].tool_calls[{j}].function.name")
        if m.role == "tool" and m.content is None:
            raise APIError(400, f"messages[{i}].content is missing: a tool message carries the tool's result",
                           param=f"messages[{i}].content")
    return texts


def _prompt_texts(req: P.CompletionRequest) -> Iterator[tuple[str, str]]:
    if isinstance(req.prompt, str):
        yield req.prompt, "prompt"
    else:
        for k, p in enumerate(req.prompt):
            if isinstance(p, str):
                yield p, f"prompt[{k}]"


def _check_common(req: P._Sampling) -> None:
    for name, harmless in UNSUPPORTED.items():
        if name in (req.model_extra or {}) and req.model_extra[name] not in harmless:
            raise APIError(400, f"{name} is not supported by this server (it would change the answer); "
                           f"leave it out", param=name, code="unsupported_parameter")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > P.MAX_STOP:
        raise APIError(400, f"stop has {len(stops)} strings; at most {P.MAX_STOP}", param="stop")
    for k, s in enumerate(stops):
        where = "stop" if isinstance(req.stop, str) else f"stop[{k}]"
        if len(s) > P.MAX_STOP_CHARS:
            raise APIError(400, f"{where} has {len(s)} characters; at most {P.MAX_STOP_CHARS}", param=where)
        check_text(s, where)
    if req.user is not None:
        check_text(req.user, "user")
    if req.model is not None:
        check_text(req.model, "model")


def _check_length(texts: list[tuple[str, str]], max_chars: int, what: str, param: str) -> None:
    total = sum(len(t) for t, _ in texts)
    if total > max_chars:
        raise APIError(400, f"{what} has {total} characters, more than this model's context could hold (at most "
                       f"{max_chars}: the context length × the longest token's bytes)", param=param,
                       code="context_length_exceeded")


def max_text_chars(tokenizer: Any, max_seq_len: int) -> int:
    """Characters above which a text cannot fit `max_seq_len` tokens: a character is at least one UTF-8 byte and
    a token at most the longest vocabulary entry's bytes, so the check never refuses a text that would fit."""
    longest = max((len(tokenizer.decode([i]).encode("utf-8", "replace")) for i in range(tokenizer.vocab_size)),
                  default=1)
    return max_seq_len * max(longest, 1)


def check_chat(req: P.ChatCompletionRequest, max_chars: int) -> None:
    """Refuse (400) a chat request whose texts are not well-formed Unicode, too long for the context, or that
    asks for what is not implemented — before any tokenising or retrieval."""
    _check_common(req)
    tools = _check_tools(req)
    texts = list(_message_texts(req))
    for text, where in texts:
        check_text(text, where)
    texts += tools
    if texts:
        _check_length(texts, max_chars, "the conversation", "messages")


def check_completion(req: P.CompletionRequest, max_chars: int) -> None:
    """The same for /v1/completions: each text prompt on its own (a list is a batch)."""
    _check_common(req)
    for text, where in _prompt_texts(req):
        check_text(text, where)
        _check_length([(text, where)], max_chars, where, where)

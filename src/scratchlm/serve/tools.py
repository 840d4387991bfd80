"""Tool calling for the chat endpoint: what `tools` / `tool_choice` ask of the prompt (the tools in the system
turn; for a forced call, its opening put in the model's mouth) and of the output (calls parsed out of the text,
whole or streamed as OpenAI-style deltas). How each `tool_choice` is honoured is in docs/tools.md."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from scratchlm.serve import protocol as P
from scratchlm.serve.reasoning import ThinkSplitter
from scratchlm.tokenizer.tool_parser import Delta, ToolCallStream
from scratchlm.tokenizer.tools import CALL_OPEN, call_prefix

NAME_OPEN = CALL_OPEN + '\n{"name": "'  # `required` with several tools: the model writes the name from here
MAX_NAME_TOKENS = 24  # a name is at most 64 characters; a few tokens more than a typical one is plenty


@dataclass
class ToolPlan:
    """What a request's tools mean for its prompt and output."""

    tools: list[dict] | None = None  # rendered into the system turn (None: no tools block)
    parse: bool = False  # parse calls out of the reply
    forced: str | None = None  # the reply is a call to this function (prefilled)
    choose: bool = False  # `required` with several tools: the model picks the name first
    names: list[str] = field(default_factory=list)
    parallel: bool = True  # False: only the first call is returned


def plan_tools(req: P.ChatCompletionRequest) -> ToolPlan:
    """The plan of a (validated) request: no tools or `tool_choice: none` → no tools block and no parsing (as vLLM
    leaves them out); `auto` (the default with tools) → parse; `required` → a call is forced (the name prefilled
    when there is one tool, else chosen by the model and snapped to a listed name); a named function → forced."""
    if not req.tools or req.tool_choice == "none":
        return ToolPlan()
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    names = [t.function.name for t in req.tools]
    plan = ToolPlan(tools=tools, parse=True, names=names, parallel=req.parallel_tool_calls is not False)
    choice = req.tool_choice
    if isinstance(choice, P.NamedToolChoice):
        plan.forced = choice.function.name
    elif choice == "required":
        if len(names) == 1:
            plan.forced = names[0]
        else:
            plan.choose = True
    return plan


def snap_name(written: str, names: list[str]) -> str:
    """The listed name closest to what the model wrote (itself when listed)."""
    written = written.split('"', 1)[0].strip()
    if written in names:
        return written
    close = difflib.get_close_matches(written, names, n=1, cutoff=0.0)
    return close[0] if close else names[0]


def request_messages(req: P.ChatCompletionRequest) -> list[dict]:
    """The request's messages as the template takes them (developer → system; calls with their JSON-string
    arguments, which the template writes as given)."""
    out = []
    for m in req.messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            d["tool_calls"] = [{"name": c.function.name, "arguments": c.function.arguments} for c in m.tool_calls]
        out.append(d)
    return out


class ReplyParser:
    """One sample's reply as it streams: reasoning split off first, then calls out of the content."""

    def __init__(self, plan: ToolPlan, prefill: str = ""):
        # A prefilled call opened the reply: no <think> block can come now, so nothing is split off.
        self.think = None if prefill else ThinkSplitter()
        self.calls = ToolCallStream() if plan.parse else None
        self.parallel = plan.parallel
        self._pending = self.calls.feed(prefill) if (self.calls is not None and prefill) else []
        self.reasoning = ""
        self.content = ""

    def feed(self, text: str, last: bool) -> tuple[str, str, list[Delta]]:
        """(reasoning, content, call deltas) of the next piece of text; `last` flushes everything held."""
        r, c = ("", text) if self.think is None else self.think.feed(text)
        if last and self.think is not None:
            r2, c2 = self.think.finish()
            r, c = r + r2, c + c2
        self.reasoning += r
        if self.calls is None:
            self.content += c
            return r, c, []
        deltas, self._pending = self._pending + self.calls.feed(c), []
        if last:
            deltas += self.calls.finish()
        if not self.parallel:
            deltas = [d for d in deltas if d.index is None or d.index == 0]
        content = "".join(d.content for d in deltas)
        self.content += content
        return r, content, [d for d in deltas if d.index is not None]

    @property
    def has_calls(self) -> bool:
        """Whether the reply so far holds a call."""
        return self.calls is not None and bool(self.calls.calls)

    def tool_calls(self) -> list[P.ToolCallOut]:
        """The calls of the whole reply."""
        calls = self.calls.calls if self.calls is not None else []
        calls = calls if self.parallel else calls[:1]
        return [P.ToolCallOut(id=c.id, function=P.FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls]


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    """OpenAI's: a reply that ended on its own after calling tools finished with "tool_calls"."""
    return "tool_calls" if has_calls and reason == "stop" else reason


def delta_tool_calls(deltas: list[Delta]) -> list[dict]:
    """The `delta.tool_calls` of one chunk: per call, its start (index, id, type, name) and/or argument text."""
    out: list[dict] = []
    for d in deltas:
        if out and out[-1]["index"] == d.index and d.name is None:
            out[-1]["function"]["arguments"] += d.arguments
            continue
        item: dict[str, Any] = {"index": d.index, "function": {"arguments": d.arguments}}
        if d.name is not None:
            item = {"index": d.index, "id": d.id, "type": "function", "function": {"name": d.name,
                                                                                   "arguments": d.arguments}}
        out.append(item)
    return out


def forced_prefill(plan: ToolPlan, name: str | None = None) -> str:
    """The text a forced call's reply starts with (empty when nothing is forced)."""
    name = name or plan.forced
    return call_prefix(name) if name else ""

"""Tools as typed Python functions: `function_tool(fn)` derives the JSON schema the model sees from the type hints
and the docstring (first paragraph = description, an `Args:` section = each parameter's description), and a
`ToolRegistry` runs a call from the model's text. Whatever goes wrong in a call — an unknown tool, arguments that
are not a JSON object, a missing, unknown or mistyped argument, the tool raising — comes back as an error
observation for the model to read, never as an exception out of the agent loop."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args, get_origin

from scratchlm.tokenizer.tools import TOOL_NAME

MAX_OBSERVATION_CHARS = 2000  # what one tool result may put into the context


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the tool's schema."""


@dataclass
class Tool:
    """A callable the model may use: `fn(**arguments) -> str`, with the JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    check: bool = True  # validate arguments against `parameters` here (False: the tool validates, e.g. over MCP)

    def schema(self) -> dict:
        """The OpenAI-style tool entry the template lists."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_schema(tp: Any, where: str) -> dict:
    """JSON schema of a type hint: str, int, float, bool, list[X], Literal[...], X | None."""
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    origin = get_origin(tp)
    if origin is Literal:
        values = list(get_args(tp))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}
    if origin in (list, tuple):
        args = get_args(tp)
        return {"type": "array", **({"items": _type_schema(args[0], where)} if args else {})}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _type_schema(args[0], where)
    raise TypeError(f"{where}: type {tp!r} has no JSON schema here (use str, int, float, bool, list, Literal)")


def _doc_parts(fn: Callable) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring."""
    doc = inspect.getdoc(fn) or ""
    head, _, rest = doc.partition("\nArgs:")
    description = " ".join(head.split("\n\n")[0].split())
    params: dict[str, str] = {}
    name = None
    for line in rest.splitlines():
        m = re.match(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if m:
            name = m.group(1)
            params[name] = m.group(2).strip()
        elif name and line.strip() and line.startswith(" " * 6):
            params[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break  # the next section (Returns:, ...)
    return description, params


def function_tool(fn: Callable[..., Any], name: str | None = None) -> Tool:
    """A `Tool` from a typed function: its schema from the hints, its description from the docstring."""
    name = name or fn.__name__
    if not TOOL_NAME.match(name):
        raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    hints = typing.get_type_hints(fn)
    description, docs = _doc_parts(fn)
    props: dict[str, dict] = {}
    required = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{name}: *args/**kwargs have no schema")
        if p.name not in hints:
            raise TypeError(f"{name}: parameter {p.name!r} needs a type hint")
        props[p.name] = _type_schema(hints[p.name], f"{name}.{p.name}")
        if p.name in docs:
            props[p.name]["description"] = docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    schema = {"type": "object", "properties": props, "required": required}
    return Tool(name, description, schema, fn)


def _check_value(value: Any, schema: dict, where: str) -> None:
    kind = schema.get("type")
    ok = {"string": lambda v: isinstance(v, str),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "boolean": lambda v: isinstance(v, bool),
          "array": lambda v: isinstance(v, list),
          "object": lambda v: isinstance(v, dict)}.get(kind, lambda v: True)
    if not ok(value):
        raise ToolArgumentError(f"{where} must be of type {kind}, got {json.dumps(value, ensure_ascii=False)[:60]}")
    if "enum" in schema and value not in schema["enum"]:
        raise ToolArgumentError(f"{where} must be one of {schema['enum']}, got {value!r}")
    if kind == "array" and "items" in schema:
        for k, v in enumerate(value):
            _check_value(v, schema["items"], f"{where}[{k}]")


def check_arguments(tool: Tool, arguments: Any) -> dict:
    """The arguments as a dict that fits the tool's schema; ToolArgumentError saying what is wrong."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as e:
            raise ToolArgumentError(f"the arguments are not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(arguments, dict):
        raise ToolArgumentError(f"the arguments must be a JSON object, got {type(arguments).__name__}")
    if not tool.check:
        return arguments
    props = tool.parameters.get("properties", {})
    unknown = [k for k in arguments if k not in props]
    if unknown:
        raise ToolArgumentError(f"unknown argument {unknown[0]!r}; {tool.name} takes: {', '.join(props) or 'none'}")
    missing = [k for k in tool.parameters.get("required", []) if k not in arguments]
    if missing:
        raise ToolArgumentError(f"missing argument {missing[0]!r}")
    for k, v in arguments.items():
        _check_value(v, props[k], k)
    return arguments


@dataclass
class Observation:
    """What a call gave back: the text the model reads, and whether it is an error."""

    text: str
    error: bool = False


class ToolRegistry:
    """The tools of one agent, by name."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools or []:
            self.add(t)

    def add(self, tool: Tool) -> None:
        """Register a tool; names are unique."""
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool

    def schemas(self) -> list[dict]:
        """The tools as the chat template lists them."""
        return [t.schema() for t in self.tools.values()]

    def call(self, name: str, arguments: Any) -> Observation:
        """Run one call; every failure is an error observation naming what went wrong."""
        tool = self.tools.get(name)
        if tool is None:
            return Observation(f"error: there is no tool named {name!r}; the tools are: {', '.join(self.tools)}", True)
        try:
            args = check_arguments(tool, arguments)
        except ToolArgumentError as e:
            return Observation(f"error: {name}: {e}", True)
        try:
            out = tool.fn(**args)
        except Exception as e:  # a tool's failure is the model's to read and recover from, not the loop's crash
            return Observation(f"error: {name} failed: {e}", True)
        text = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)
        if len(text) > MAX_OBSERVATION_CHARS:
            text = text[:MAX_OBSERVATION_CHARS] + f" … [cut: {len(text)} characters in all]"
        return Observation(text)

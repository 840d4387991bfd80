"""Tool calls in the chat template (the Qwen2.5 / Hermes convention, so exported models work with tools that
speak it): the tools' JSON schemas in the system turn inside `<tools>…</tools>`, one per line; a call as
`<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>` in the assistant turn; tool results as role `tool`,
rendered inside a user turn as `<tool_response>\\n…\\n</tool_response>` (consecutive results share one turn).

`chat_turns` lowers a chat with tools to plain ChatML turns; `Tokenizer.render_chat` / `encode_chat` render those,
and `CHAT_TEMPLATE` (the Jinja that exports carry) renders the same text, so transformers' `apply_chat_template(
messages, tools=...)` gives the same ids. Pure Python, no torch."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# What a model that wrote an unreadable call reads back, in the agent loop and in agentic RL's rollouts alike.
MALFORMED_CALL = ('error: the tool call could not be read; write <tool_call>\n{"name": <tool name>, "arguments": '
                  '{<argument>: <value>}}\n</tool_call>')
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names

# The system-turn text around the schemas. The format it shows is the protocol; the wording is ours.
TOOLS_HEAD = ("# Tools\n\nYou can call the functions below to help with the user's request. Their JSON signatures "
              "are listed inside <tools></tools>:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nTo call a function, answer with a JSON object holding its name and arguments inside "
              "<tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call>")


def _jinja_str(s: str) -> str:
    """`s` as a single-quoted Jinja string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# What `chat_turns` + ChatML produce, as the Jinja transformers runs (compiled with trim_blocks/lstrip_blocks;
# the `-` markers keep the template's own layout out of the output). A string `arguments` is written as it is,
# a dict through tojson (transformers' own: json.dumps with ensure_ascii=False), exactly as `format_call` does.
# enable_thinking=false puts an empty <think></think> after the generation prompt (Qwen3's switch, as
# serve/prompt.py does).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(skip=false) -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}{%- set ns.skip = true -%}"
    "{%- endif -%}"
    "{{- " + _jinja_str(TOOLS_HEAD) + " -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- " + _jinja_str(TOOLS_TAIL) + " + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and ns.skip -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{- '<|im_start|>user\\n' -}}"
    "{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_response>\\n' + message['content'] + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if message['content'] -%}{{- message['content'] + '\\n' -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- if call['function'] is defined -%}{%- set call = call['function'] -%}{%- endif -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' -}}"
    "{%- if call['arguments'] is string -%}{{- call['arguments'] -}}"
    "{%- else -%}{{- call['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think></think>' -}}{%- endif -%}"
    "{%- endif -%}"
)


def tools_text(tools: Sequence[dict]) -> str:
    """The tools block of the system turn: the schemas one JSON object per line inside <tools>…</tools>."""
    return TOOLS_HEAD + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_TAIL


def call_function(call: dict) -> dict:
    """The {"name", "arguments"} part of a call given in OpenAI's form ({"function": {...}}) or bare."""
    return call["function"] if isinstance(call.get("function"), dict) else call


def format_call(name: str, arguments: Any) -> str:
    """One call as the model writes it; `arguments` a dict (serialised) or a JSON string (written as given)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": {args}}}\n{CALL_CLOSE}'


def call_prefix(name: str) -> str:
    """The start of a call to `name`, up to where its arguments begin (what a forced call puts in the model's
    mouth)."""
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": '


def check_tools(tools: Any) -> list[dict]:
    """Tools as OpenAI sends them ({"type": "function", "function": {"name", "description", "parameters"}});
    ValueError naming the index and field of the first bad one."""
    if not isinstance(tools, (list, tuple)):
        raise ValueError(f"tools must be a list, got {type(tools).__name__}")
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("function"), dict):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
        if t.get("type", "function") != "function":
            raise ValueError(f"tools[{i}].type={t.get('type')!r}: only 'function' tools exist")
        name = t["function"].get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ValueError(f"tools[{i}].function.name={name!r} must be 1-64 letters, digits, '_' or '-'")
        if name in seen:
            raise ValueError(f"tools[{i}].function.name={name!r} is listed twice")
        seen.add(name)
    return list(tools)


def chat_turns(messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[dict]:
    """Plain ChatML turns ({"role", "content"}, an assistant's "weight" kept) of a chat that may hold tools, calls and tool results: the tools go
    into the system turn (after the first system message's text, if any), calls after the assistant's text, and
    each run of consecutive `tool` messages becomes one user turn of <tool_response> blocks."""
    out: list[dict] = []
    rest = list(messages)
    if tools:
        system = ""
        if rest and rest[0]["role"] == "system":
            system = rest[0]["content"] + "\n\n"
            rest = rest[1:]
        out.append({"role": "system", "content": system + tools_text(tools)})
    for m in rest:
        if m["role"] == "tool":
            block = f"{RESPONSE_OPEN}\n{m['content']}\n{RESPONSE_CLOSE}"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [format_call(f["name"], f["arguments"]) for f in map(call_function, m["tool_calls"])]
            out.append({"role": "assistant", "content": "\n".join(([m["content"]] if m.get("content") else []) + calls)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
        if "weight" in m:  # an assistant turn shown as context, not learnt (OpenAI's fine-tuning key)
            out[-1]["weight"] = m["weight"]
    for t in out:
        t.pop("_tool", None)
    return out

"""Tool calling through the real server with the official `openai` client: a tiny model trained to call the
calculator runs a whole tool loop (call → the real calculator → answer), streamed and not; forced calls
(`tool_choice` named / required) on a prompt the model never learnt; `tool_choice: none`; and the edge checks
that refuse bad tools with a 400 naming the field."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from scratchlm.agent.calculator import calculate
from serve_util import serving
from tool_util import ANSWER, CALC, CALL_ARGS, QUESTION

pytestmark = pytest.mark.usefixtures("one_thread")

DATE = {"type": "function", "function": {"name": "today", "description": "The current date.",
                                          "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server(tool_run):
    with serving(tool_run) as (srv, engine):
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def _stream(client, **kw):
    """(content, [(id, name, arguments)], finish_reason, raw deltas) of a streamed completion, reassembled the way
    a client must: by index, the name from the first delta of each call, then the argument fragments."""
    content, calls, finish, deltas = "", {}, None, []
    for chunk in client.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        deltas.append(d)
        content += d.content or ""
        for tc in d.tool_calls or []:
            if tc.index not in calls:
                assert tc.id and tc.type == "function" and tc.function.name, "a call's first delta names it"
                calls[tc.index] = [tc.id, tc.function.name, ""]
            else:
                assert tc.function.name is None and tc.id is None
            calls[tc.index][2] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, [tuple(c) for _, c in sorted(calls.items())], finish, deltas


def test_the_openai_client_runs_a_whole_tool_loop(client):
    messages = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=[CALC], temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content  # the call is not in the text
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "calculator"
    args = json.loads(call.function.arguments)
    assert args == CALL_ARGS
    # the loop: the client runs the tool and sends the result back as a `tool` message
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": calculate(**args)})
    r2 = client.chat.completions.create(model="tiny", messages=messages, tools=[CALC], temperature=0, max_tokens=60)
    assert r2.choices[0].finish_reason == "stop" and r2.choices[0].message.content == ANSWER
    assert not r2.choices[0].message.tool_calls

    # streamed: the same call as deltas (id and name first, then the arguments), never as <tool_call> text
    content, calls, finish, deltas = _stream(client, model="tiny", messages=messages[:1], tools=[CALC],
                                             temperature=0, max_tokens=60)
    assert finish == "tool_calls" and content == ""
    assert [(n, a) for _, n, a in calls] == [(call.function.name, call.function.arguments)]
    assert not any("<tool_call>" in (d.content or "") or "tool_call" in (d.content or "") for d in deltas)
    first = next(d for d in deltas if d.tool_calls)
    assert first.tool_calls[0].function.name == "calculator"
    content, calls, finish, _ = _stream(client, model="tiny", messages=messages, tools=[CALC], temperature=0,
                                        max_tokens=60)
    assert (content, calls, finish) == (ANSWER, [], "stop")


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "today"}}, "required"])
def test_forced_calls_on_a_prompt_never_learnt(client, choice):
    # the model only learnt to greet for "hello": the call is forced by prefilling its opening
    tools = [CALC, DATE] if isinstance(choice, dict) else [DATE]
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], tools=tools, tool_choice=choice,
              temperature=0, max_tokens=12, seed=1)
    r = client.chat.completions.create(**kw)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "today"
    assert r.choices[0].finish_reason in ("tool_calls", "length")
    content, calls, finish, _ = _stream(client, **kw)
    assert [(n, a) for _, n, a in calls] == [(call.function.name, call.function.arguments)]
    assert finish == r.choices[0].finish_reason and content == (r.choices[0].message.content or "")


def test_required_with_several_tools_calls_a_listed_one(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                       tools=[DATE, CALC], tool_choice="required", temperature=0, max_tokens=60)
    [call] = r.choices[0].message.tool_calls
    # the name the model writes after `<tool_call>\n{"name": "` (it learnt "calculator"), not the first listed
    assert call.function.name == "calculator"
    assert r.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_leaves_the_tools_out(client):
    base = dict(model="tiny", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=30)
    r = client.chat.completions.create(tools=[CALC], tool_choice="none", **base)
    plain = client.chat.completions.create(**base)
    auto = client.chat.completions.create(tools=[CALC], **base)
    assert r.usage.prompt_tokens == plain.usage.prompt_tokens < auto.usage.prompt_tokens
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls"


def _error(server, body: dict) -> dict:
    """The 400 error of posting `body` (as ASCII JSON: a lone surrogate travels as its \\u escape)."""
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(body),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    return r.json()["error"]


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [CALC, CALC]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties":
        {"x": json.loads("[" * 40 + "]" * 40)}}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 70000}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "\ud800"}}]}, "tools[0]"),
    ({"tools": [CALC], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "tool"}]}, "messages[0].content"),
])
def test_bad_tools_are_refused_naming_the_field(server, body, param):
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    err = _error(server, body)
    assert err["param"] == param, err


@pytest.mark.parametrize("body, words", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameter": {}}}]}, "parameter"),
    ({"tools": [{"type": "retrieval"}]}, "type"),
    ({"tools": [CALC] * 129}, "129"),
    ({"tools": [CALC], "tool_choice": "sometimes"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_malformed_tool_fields_are_400(server, body, words):
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    err = _error(server, body)
    assert words in err["message"] or words == err.get("param"), err

"""The agent: the calculator (right answers; refuses anything but arithmetic, never evaluates code), tool schemas
from type hints, every failure of a call as an error observation, the file tool kept inside its folder, the date
and RAG tools, the shipped MCP server started as a real subprocess (listed and called), and the ReAct loop — driven
by scripted replies on the real tools and by a tiny model trained to call the calculator, through the CLI too."""

from __future__ import annotations

import builtins
import datetime as dt
import io
import json
import os
from typing import Literal, Optional

import pytest
import torch

from scratchlm.agent.builtin import builtin_tools, calculator, date_tool, files_tool, rag_tool, resolve_inside
from scratchlm.agent.calculator import CalcError, calculate
from scratchlm.agent.loop import MALFORMED, ScriptedPolicy, print_trace, run_agent
from scratchlm.agent.mcp_tools import McpServer
from scratchlm.agent.tools import ToolRegistry, function_tool
from scratchlm.tokenizer.tools import format_call

MCP_EXAMPLE = "python -m scratchlm.agent.mcp_example"


# ------------------------------------------------------------------------------------------ calculator

@pytest.mark.parametrize("expr, value", [
    ("1234 * 5678", "7006652"), ("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("7 / 2", "3.5"), ("7 // 2", "3"),
    ("-3 % 5", "2"), ("2 ** 10", "1024"), ("-(-4)", "4"), ("0.1 + 0.2", "0.3"), ("12 × 34 ÷ 2", "204.0"[:3]),
    ("2^8", "256"), ("98765432109876 * 12345678901234", str(98765432109876 * 12345678901234)),
    ("2 ** -1", "0.5"), ("1e3 + 1", "1001"), ("  42  ", "42"),
])
def test_calculator_computes(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr, words", [
    ("x + 1", "the name 'x'"), ("__import__('os').system('true')", "function call"), ("abs(-1)", "function call"),
    ("(1).__class__", "attribute"), ("'a' * 3", "str"), ("True + 1", "bool"), ("1j * 2", "complex"),
    ("1 < 2", "Compare"), ("[1, 2]", "List"), ("lambda: 1", "Lambda"), ("[i for i in range(9)]", "ListComp"),
    ("2 ** 2 ** 2", "tower"), ("(2 ** 2) ** 2", "tower"), ("2 ** 5000", "exponent"), ("10 ** 1025", "exponent"),
    ("99 ** 1000", "bits"), ("-" * 40 + "1", "nested"), ("1" + "+1" * 150, "characters"), ("1 / 0", "division by zero"),
    ("0 ** -1", "zero"), ("(-8) ** 0.5", "fractional"), ("1e308 * 10", "finite"), ("", "empty"), ("1 +", "not an arith"),
    ("a = 1", "not an arith"), ("1; 2", "not an arith"),
])
def test_calculator_refuses(expr, words):
    with pytest.raises(CalcError, match=words):
        calculate(expr)


def test_calculator_never_evaluates_code(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("eval/exec was called")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    assert calculate("6 * 7") == "42"
    with pytest.raises(CalcError):
        calculate("__import__('os').getcwd()")


# ------------------------------------------------------------------------------------------ tools and registry

def test_schema_from_hints_and_docstring():
    assert function_tool(calculator).schema() == {"type": "function", "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.",
        "parameters": {"type": "object", "properties": {"expression": {
            "type": "string", "description": 'The arithmetic to compute, e.g. "1234 * 5678".'}},
            "required": ["expression"]}}}

    def pick(kind: Literal["a", "b"], sizes: list[int], note: Optional[str] = None, strict: bool = False) -> str:
        """Pick one.

        Longer text that is not the description.

        Args:
            kind: Which kind,
                over two lines.
            sizes: Sizes.
        Returns:
            the pick
        """
        return kind

    f = function_tool(pick).schema()["function"]
    assert f["description"] == "Pick one."
    assert f["parameters"] == {"type": "object", "required": ["kind", "sizes"], "properties": {
        "kind": {"type": "string", "enum": ["a", "b"], "description": "Which kind, over two lines."},
        "sizes": {"type": "array", "items": {"type": "integer"}, "description": "Sizes."},
        "note": {"type": "string"}, "strict": {"type": "boolean"}}}
    with pytest.raises(TypeError, match="needs a type hint"):
        function_tool(lambda x: x, name="f")


def test_every_bad_call_is_an_error_observation():
    reg = ToolRegistry(builtin_tools(["calculator"]))

    def explode(n: int) -> str:
        """Fail."""
        raise RuntimeError(f"boom {n}")

    reg.add(function_tool(explode))
    cases = {
        ("nope", "{}"): "there is no tool named 'nope'; the tools are: calculator, explode",
        ("calculator", '{"expression": '): "not valid JSON",
        ("calculator", "[1]"): "must be a JSON object",
        ("calculator", "{}"): "missing argument 'expression'",
        ("calculator", '{"expression": "1", "x": 2}'): "unknown argument 'x'",
        ("calculator", '{"expression": 5}'): "expression must be of type string",
        ("calculator", '{"expression": "x"}'): "calculator failed: only numbers",
        ("explode", '{"n": true}'): "n must be of type integer",
        ("explode", '{"n": 3}'): "explode failed: boom 3",
    }
    for (name, args), words in cases.items():
        obs = reg.call(name, args)
        assert obs.error and words in obs.text, (name, args, obs.text)
    ok = reg.call("calculator", {"expression": "6*7"})
    assert not ok.error and ok.text == "42"
    with pytest.raises(ValueError, match="already registered"):
        reg.add(function_tool(calculator))


def test_date_tool_reads_the_clock():
    reg = ToolRegistry([date_tool(lambda: dt.datetime(2026, 12, 7, 3, 0))])
    assert reg.call("date", "{}").text == "2026-12-07 (Monday)"
    assert reg.call("date", "").text == "2026-12-07 (Monday)"  # no arguments at all is fine too


# ------------------------------------------------------------------------------------------ files

@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "root"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "todo.txt").write_text("buy milk\n", encoding="utf-8")
    (root / "long.txt").write_text("x" * 5000, encoding="utf-8")
    (tmp_path / "secret.txt").write_text("the password", encoding="utf-8")
    (root / "link_out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "dir_out").symlink_to(tmp_path)
    (root / "link_in.txt").symlink_to(root / "notes" / "todo.txt")
    return root


@pytest.mark.parametrize("path, words", [
    ("../secret.txt", "'..'"), ("notes/../../secret.txt", "'..'"), ("ABSOLUTE", "absolute"), ("~/x", "absolute"),
    ("link_out.txt", "outside the folder"), ("dir_out/secret.txt", "outside the folder"), ("notes", "not a file"),
    ("missing.txt", "no such file"), ("a\x00b", "NUL"), ("", "relative"),
])
def test_the_file_tool_cannot_leave_its_folder(folder, path, words):
    path = str(folder.parent / "secret.txt") if path == "ABSOLUTE" else path
    reg = ToolRegistry(list(files_tool(folder)))
    obs = reg.call("read_file", {"path": path})
    assert obs.error and words in obs.text and "password" not in obs.text, obs.text


def test_the_file_tool_reads_inside(folder):
    reg = ToolRegistry(list(files_tool(folder)))
    assert reg.call("read_file", {"path": "notes/todo.txt"}).text == "buy milk\n"
    assert reg.call("read_file", {"path": "link_in.txt"}).text == "buy milk\n"  # a link that stays inside is fine
    first = reg.call("read_file", {"path": "long.txt"}).text
    assert first.startswith("x" * 1500 + "\n") and "offset=1500" in first
    assert reg.call("read_file", {"path": "long.txt", "offset": 4500}).text == "x" * 500
    listing = reg.call("list_files", {}).text.splitlines()
    assert listing == ["long.txt", "notes/todo.txt"]  # links are not listed
    assert resolve_inside(folder, "notes/todo.txt") == (folder / "notes" / "todo.txt").resolve()


# ------------------------------------------------------------------------------------------ rag

def _cat_db(tmp_path):
    from scratchlm.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.txt").write_text("The cat sat on the mat. Cats sleep sixteen hours a day.", encoding="utf-8")
    (docs / "dogs.txt").write_text("Dogs bark at the postman every morning.", encoding="utf-8")
    db = tmp_path / "docs.db"
    assert main(["rag", "index", str(docs), "--db", str(db), "--embedder", "hash", "--quiet"]) == 0
    return db


def test_rag_search_tool_over_an_indexed_db(tmp_path):
    reg = ToolRegistry([rag_tool(_cat_db(tmp_path), k=1)])
    text = reg.call("search", {"query": "how long do cats sleep"}).text
    assert text.startswith("[cats.txt#0]") and "sixteen hours" in text
    with pytest.raises(FileNotFoundError, match="no such rag database"):
        rag_tool(tmp_path / "none.db")


# ------------------------------------------------------------------------------------------ MCP

def test_the_shipped_mcp_server_is_listed_and_called():
    with McpServer(MCP_EXAMPLE) as server:
        reg = ToolRegistry(server.tools)
        assert set(reg.tools) == {"word_count", "convert_units"}
        params = reg.tools["convert_units"].parameters
        assert params["required"] == ["value", "from_unit", "to_unit"] and params["properties"]["value"]["type"] == "number"
        assert reg.call("word_count", {"text": "the cat sat 你好"}) .text == "5"
        assert reg.call("convert_units", '{"value": 3, "from_unit": "km", "to_unit": "mi"}').text == "1.86411 mi"
        bad = reg.call("convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"})
        assert bad.error and "cannot convert 'km' to 'kg'" in bad.text
        wrong = reg.call("word_count", {"txt": "a"})
        assert wrong.error and "text" in wrong.text
        pid_alive = server._thread.is_alive()
    assert pid_alive and not server._thread.is_alive()


# ------------------------------------------------------------------------------------------ the loop

def _call(name, **args):
    return format_call(name, args)


def test_loop_calls_a_tool_reads_the_observation_and_answers(tmp_path):
    reg = ToolRegistry(builtin_tools(["calculator", "date"]))
    policy = ScriptedPolicy(["<think>big numbers: use the calculator</think>\n" + _call("calculator", expression="1234*5678"),
                             "1234 × 5678 = 7006652."])
    trace = run_agent(policy, reg, "What is 1234 × 5678?")
    assert trace.stopped == "answer" and trace.answer == "1234 × 5678 = 7006652."
    [s1, s2] = trace.steps
    assert s1.thought == "big numbers: use the calculator"
    assert [(c.name, c.observation, c.error) for c in s1.calls] == [("calculator", "7006652", False)]
    # the observation reached the model as a tool message, after its own call
    second = policy.seen[1]
    assert second[-1] == {"role": "tool", "content": "7006652"}
    assert second[-2]["tool_calls"] == [{"name": "calculator", "arguments": '{"expression": "1234*5678"}'}]
    out = trace.write(tmp_path / "t.json")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["answer"] == trace.answer and data["steps"][0]["calls"][0]["observation"] == "7006652"
    assert data["tools"] == ["calculator", "date"]
    from rich.console import Console

    buf = io.StringIO()
    print_trace(trace, Console(file=buf, width=120))
    shown = buf.getvalue()
    assert "Action: calculator" in shown and "Observation: 7006652" in shown and "answer:" in shown


def test_malformed_and_unknown_calls_become_observations_and_the_loop_goes_on():
    reg = ToolRegistry(builtin_tools(["calculator"]))
    policy = ScriptedPolicy(["<tool_call>\ncalculator(2+2)\n</tool_call>",
                             _call("abacus", expression="2+2"),
                             _call("calculator", expr="2+2"),
                             "4"])
    trace = run_agent(policy, reg, "2+2?")
    assert trace.stopped == "answer" and trace.answer == "4"
    obs = [c.observation for s in trace.steps for c in s.calls]
    assert obs[0] == MALFORMED
    assert "no tool named 'abacus'" in obs[1] and "unknown argument 'expr'" in obs[2]
    assert all(c.error for s in trace.steps for c in s.calls)
    assert policy.seen[1][-1] == {"role": "tool", "content": MALFORMED}


def test_the_step_limit_holds():
    reg = ToolRegistry(builtin_tools(["calculator"]))
    policy = ScriptedPolicy([_call("calculator", expression="1+1")] * 10)
    trace = run_agent(policy, reg, "loop forever", max_steps=3)
    assert trace.stopped == "step_limit" and trace.answer is None and len(trace.steps) == 3
    assert len(policy.seen) == 3
    with pytest.raises(ValueError, match="max_steps"):
        run_agent(policy, reg, "x", max_steps=0)


def test_loop_with_the_real_mcp_server():
    with McpServer(MCP_EXAMPLE) as server:
        reg = ToolRegistry(builtin_tools(["calculator"]) + server.tools)
        policy = ScriptedPolicy([_call("convert_units", value=5, from_unit="mi", to_unit="km"), "8.04672 km"])
        trace = run_agent(policy, reg, "5 miles in km?")
    assert trace.steps[0].calls[0].observation == "8.04672 km" and trace.answer == "8.04672 km"
    assert any(t["function"]["name"] == "word_count" for t in _schemas(reg))


def test_self_consistency_votes_on_the_runs_answers(tmp_path):
    from scratchlm.agent.vote import vote_agent

    reg = ToolRegistry(builtin_tools(["calculator"]))
    # run i replies as scripted: the calculator, then an answer; runs 1 and 3 miscopy it, run 4 never answers
    finals = ["408", "The answer is 418.", "408.", "418", None]

    def make(i):
        tail = [finals[i]] if finals[i] is not None else [_call("calculator", expression="1+1")] * 3
        return ScriptedPolicy([_call("calculator", expression="12*34"), *tail])

    vote = vote_agent(make, reg, "What is 12 × 34?", 5, answer_kind="number", max_steps=3)
    assert vote.answers == ["408", "418", "408", "418", None]
    # a 2-2 tie goes to the answer seen first; its first run is the pick; the run with no answer has no vote
    assert vote.votes == {"408": 2, "418": 2} and vote.index == 0 and vote.picked.answer == "408"
    assert vote.traces[4].stopped == "step_limit"
    vote = vote_agent(lambda i: make(i + 1), reg, "What is 12 × 34?", 4, answer_kind="number", max_steps=3)
    assert vote.index == 0 and vote.picked.answer == "The answer is 418."  # now 418 comes first
    data = json.loads(vote.write(tmp_path / "v.json").read_text(encoding="utf-8"))
    assert data["answer"] == "The answer is 418." and len(data["runs"]) == 4 and data["votes"] == {"418": 2, "408": 1}
    with pytest.raises(ValueError, match="n >= 1"):
        vote_agent(make, reg, "x", 0)
    with pytest.raises(ValueError, match="unknown task"):
        vote_agent(make, reg, "x", 2, answer_kind="poem")


def _schemas(reg):
    return reg.schemas()


# ------------------------------------------------------------------------------------------ a real model

def test_a_trained_tiny_model_runs_the_loop(tool_run, tmp_path):
    from scratchlm.agent.loop import EnginePolicy
    from scratchlm.engine.offline import LLM
    from tool_util import ANSWER, QUESTION

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = EnginePolicy(LLM.from_run(tool_run, "cpu"), max_new_tokens=60)
        trace = run_agent(policy, ToolRegistry(builtin_tools(["calculator"])), QUESTION)
        assert [(c.name, json.loads(c.arguments), c.observation) for c in trace.steps[0].calls] == \
            [("calculator", {"expression": "12*34"}, "408")]
        assert trace.stopped == "answer" and trace.answer == ANSWER and len(trace.steps) == 2

        from scratchlm.cli import main

        out = tmp_path / "trace.json"
        rc = main(["agent", str(tool_run), QUESTION, "--tools", "calculator", "--device", "cpu", "--json", str(out),
                   "--max-new-tokens", "60"])
        data = json.loads(out.read_text(encoding="utf-8"))
        assert rc == 0 and data["answer"] == ANSWER and data["steps"][0]["calls"][0]["observation"] == "408"
        rc = main(["agent", str(tool_run), QUESTION, "--tools", "calculator", "--device", "cpu", "--max-steps", "1",
                   "--max-new-tokens", "60"])
        assert rc == 3  # stopped by the step limit: not an answer
        rc = main(["agent", str(tool_run), QUESTION, "--tools", "calculator", "--device", "cpu", "--json", str(out),
                   "--max-new-tokens", "60", "--self-consistency", "3", "--temperature", "0.7", "--answer", "number"])
        data = json.loads(out.read_text(encoding="utf-8"))
        # the tiny model learnt the chat by heart: sampled runs still agree, and the vote's JSON holds all three
        assert rc == 0 and len(data["runs"]) == 3 and data["answer"] == ANSWER
        assert data["votes"] == {data["answers"][data["picked"]]: 3}
    finally:
        torch.set_num_threads(n)


def test_cli_refuses_tools_without_what_they_need(tool_run, capsys):
    from scratchlm.cli import main

    assert main(["agent", str(tool_run), "x", "--tools", "files"]) == 1
    assert "--files-root" in capsys.readouterr().err
    assert main(["agent", str(tool_run), "x", "--tools", "calculator,web"]) == 1
    assert "unknown tool 'web'" in capsys.readouterr().err
    assert main(["agent", str(tool_run), "x", "--tools", "calculator", "--self-consistency", "4"]) == 1
    assert "--temperature" in capsys.readouterr().err  # greedy runs would all be the same
    assert main(["agent", str(tool_run), "x", "--tools", "calculator", "--self-consistency", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err
    assert os.environ.get("SCRATCHLM_DEBUG") is None

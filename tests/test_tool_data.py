"""The tool-use SFT set (agent/tool_data.py): splits, rendering with the tools, the calculator's real results, the
loss mask, and the agent-vs-alone measurement on a tiny trained model."""

from __future__ import annotations

import json
import re

import pytest
import torch

from scratchlm.agent.builtin import calculator
from scratchlm.agent.tool_data import build_tool_sft, held_out_problems, tool_schemas, tool_use_accuracy
from scratchlm.agent.tools import function_tool
from scratchlm.data.answers import check_answer
from scratchlm.data.tasks import Arithmetic
from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("tool_sft")
    build_tool_sft(d, (300, 60, 60), direct_share=0.3, seed=1)
    return {split: [json.loads(x) for x in (d / f"sft_{split}.jsonl").read_text(encoding="utf-8").splitlines()]
            for split in ("train", "val", "test")} | {
        f"prompt_{split}": [json.loads(x) for x in (d / f"prompt_{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tool_data_tok")
    (d / "t.txt").write_text("\n".join(f"what is {i} times {i}? calculator expression 计算 {i * i}" for i in range(80)))
    return Tokenizer.load(train_tokenizer(d / "tok", vocab_size=320, inputs=[d / "t.txt"], show_progress=False))


def _operands(row):
    call = row["conversations"][1]["tool_calls"][0]["arguments"]["expression"]
    a, b = [int(x) for x in re.findall(r"\d+", call)]
    return tuple(sorted((a, b), reverse=True)), call


def test_tools_are_the_agents_own_schemas(built):
    # the same schema object the agent lists (one definition: the function's hints and docstring)
    assert tool_schemas(("calculator",)) == [function_tool(calculator).schema()]
    for row in built["train"][:20]:
        assert row["tools"] == tool_schemas()


def test_calculator_chats_carry_the_calculators_real_result(built):
    calc = [r for split in ("train", "val", "test") for r in built[split] if r["tool"] == "calculator"]
    assert len(calc) > 200
    for r in calc:
        user, call, result, final = r["conversations"]
        assert [m["role"] for m in r["conversations"]] == ["user", "assistant", "tool", "assistant"]
        assert call["content"] == "" and call["tool_calls"][0]["name"] == "calculator"
        expr = call["tool_calls"][0]["arguments"]["expression"]
        assert result["content"] == calculator(expr)  # what the agent's calculator returns
        assert final["content"] == result["content"]  # the answer copies the result and restates nothing
        assert check_answer(r["task"], final["content"], result["content"])
        assert all(len(x) >= 4 for x in re.findall(r"\d+", expr))
        # the call copies the question's arithmetic as written; words become the symbol, spaced
        assert expr in user["content"] or re.fullmatch(r"\d+ [+\-×] \d+", expr), (user["content"], expr)
        if any(w in user["content"] for w in ("plus", "minus", "times", "加", "减", "乘以")):
            op = "+" if any(w in user["content"] for w in ("plus", "加")) else "-" if any(
                w in user["content"] for w in ("minus", "减")) else "×"
            assert expr == " ".join([re.findall(r"\d+", expr)[0], op, re.findall(r"\d+", expr)[1]])
        else:
            assert expr in user["content"]


def test_direct_chats_answer_without_a_call(built):
    direct = [r for r in built["train"] if r["tool"] == "none"]
    assert 0.2 < len(direct) / len(built["train"]) < 0.4
    assert {r["task"] for r in direct} == {"identity", "next_line", "author"}
    for r in direct:
        assert [m["role"] for m in r["conversations"]] == ["user", "assistant"]
        assert "tool_calls" not in r["conversations"][1]


def test_splits_never_share_an_operand_pair(built):
    sides = {}
    for split in ("train", "val", "test"):
        sides[split] = {(r["task"], _operands(r)[0]) for r in built[split] if r["tool"] == "calculator"}
    assert sides["val"] and sides["test"]
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    # and each pair is on the side Arithmetic's own rule puts it
    for split, items in sides.items():
        for task, pair in items:
            a, b = sorted(pair, reverse=True)
            op = {"add": "+", "sub": "-", "mul": "×"}[task[:3]]
            assert Arithmetic(task)._side(a, b, op) == split
    for split in ("val", "test"):  # the eval's problems come from the held-out side too
        for p in held_out_problems(30, split):
            pair = tuple(sorted(map(int, re.findall(r"\d+", p["question"])), reverse=True))
            assert (p["task"], pair) not in sides["train"]
            assert Arithmetic(p["task"])._side(*pair, {"add": "+", "sub": "-", "mul": "×"}[p["task"][:3]]) == split


def test_render_through_encode_chat_with_tools_and_mask_leaves_results_out(built, tok):
    row = next(r for r in built["train"] if r["tool"] == "calculator")
    ids, mask = tok.encode_chat(row["conversations"], tools=row["tools"])
    text = tok.render_chat(row["conversations"], tools=row["tools"])
    assert "<tools>" in text and '"name": "calculator"' in text and "<tool_response>" in text
    assert ids == tok.encode(text, allow_special=True)
    result = row["conversations"][2]["content"]
    learnt = tok.decode([t for t, m in zip(ids, mask) if m])
    assert '{"name": "calculator", "arguments": {"expression": ' in learnt  # the call is learnt
    assert row["conversations"][3]["content"] in learnt  # the answer is learnt
    # the tool's result is context: its tokens carry mask 0 (it only occurs in the learnt text inside the answer)
    assert learnt.count(result) == 1
    resp = text.index("<tool_response>")
    start = len(tok.encode(text[:resp], allow_special=True))
    end = len(tok.encode(text[:text.index("</tool_response>") + len("</tool_response>")], allow_special=True))
    assert sum(mask[start:end]) == 0 and end > start
    direct = next(r for r in built["train"] if r["tool"] == "none")
    assert "<tools>" in tok.render_chat(direct["conversations"], tools=direct["tools"])


def test_prompt_rows_match_the_sft_rows(built):
    for split in ("train", "val", "test"):
        for s, p in zip(built[split], built[f"prompt_{split}"]):
            assert p["prompt"] == s["conversations"][:1] and p["tools"] == s["tools"] and p["task"] == s["task"]
            assert check_answer(p["task"], s["conversations"][-1]["content"], p["answer"])


def test_several_questions_per_chat_each_with_its_own_call(tmp_path, built):
    one = tmp_path / "one"
    build_tool_sft(one, (300, 60, 60), direct_share=0.3, seed=1, questions=(1, 1))
    # (1, 1) draws nothing more: the single-question set is the default one, line for line
    assert [json.loads(x) for x in (one / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()] == built["train"]
    many = tmp_path / "many"
    build_tool_sft(many, (200, 20, 20), direct_share=0.3, seed=1, questions=(2, 4))
    rows = [json.loads(x) for x in (many / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = [json.loads(x) for x in (many / "prompt_train.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = set()
    for row, prompt in zip(rows, prompts):
        conv = row["conversations"]
        users = [i for i, m in enumerate(conv) if m["role"] == "user"]
        counts.add(len(users))
        assert prompt["prompt"] == conv[:1]  # the prompt file asks the chat's first question
        for i, start in enumerate(users):  # each question is a whole exchange: a direct reply or call → result → answer
            turn = conv[start:users[i + 1] if i + 1 < len(users) else len(conv)]
            roles = [m["role"] for m in turn]
            assert roles in (["user", "assistant"], ["user", "assistant", "tool", "assistant"])
            if len(turn) == 4:
                expr = turn[1]["tool_calls"][0]["arguments"]["expression"]
                assert turn[2]["content"] == calculator(expr) == turn[3]["content"]
                # the call copies this question's operands, not an earlier one's
                assert sorted(re.findall(r"\d+", expr)) == sorted(re.findall(r"\d{4,}", turn[0]["content"]))
    assert counts == {2, 3, 4}
    with pytest.raises(ValueError, match="questions"):
        build_tool_sft(tmp_path / "bad", (5, 1, 1), questions=(0, 2))
    with pytest.raises(ValueError, match="questions"):
        build_tool_sft(tmp_path / "bad", (5, 1, 1), questions=(3, 2))


def test_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="4\\+-digit"):
        build_tool_sft(tmp_path, (5, 1, 1), calc_tasks=("mul2",))
    with pytest.raises(ValueError, match="calculator"):
        build_tool_sft(tmp_path, (5, 1, 1), tools=("date",))
    with pytest.raises(ValueError, match="held-out"):
        held_out_problems(3, "train")


@pytest.fixture(scope="module")
def calc_run(tmp_path_factory, built):
    """A tiny model that learnt one held-out calculator chat of the set (call, then the answer) and, alone (no
    tools listed), a reply without the number."""
    from ground_util import make_chat_run

    row = next(r for r in built["val"] if r["tool"] == "calculator" and r["lang"] == "en")
    alone = [row["conversations"][0], {"role": "assistant", "content": "I cannot compute that."}]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_chat_run(tmp_path_factory.mktemp("calc_run"), [(row["conversations"], row["tools"]),
                                                                   (alone, None)], max_seq_len=512), row
    finally:
        torch.set_num_threads(n)


def test_tool_use_accuracy_runs_the_agent_loop(calc_run):
    from scratchlm.engine.offline import LLM

    run, row = calc_run
    llm = LLM.from_run(run, "cpu")
    problem = {"question": row["conversations"][0]["content"], "answer": row["conversations"][2]["content"],
               "task": row["task"], "lang": "en"}
    out = tool_use_accuracy(llm, [problem])
    # the model learnt the whole loop: it calls the calculator, and copies the result from the observation
    assert out["called_calculator"]["all"] == 1.0 and out["agent"] == {"all": 1.0, "en": 1.0}, out["samples"]
    assert out["direct"]["all"] == 0.0  # alone it has no result to copy
    wrong = tool_use_accuracy(llm, [{**problem, "answer": str(int(problem["answer"]) + 1)}])
    assert wrong["agent"]["all"] == 0.0
    voted = tool_use_accuracy(llm, [problem], votes=3, temperature=0.7)
    assert voted["agent_vote"] == voted["agent_sampled"] == {"all": 1.0, "en": 1.0}, voted
    assert "agent_vote" not in out  # one run: no vote


def test_data_tools_command_writes_several_questions_and_names_bad_flags(tmp_path, capsys):
    from scratchlm.cli import main

    assert main(["data", "tools", "--out", str(tmp_path / "t"), "--sizes", "20,2,2", "--questions", "2:3"]) == 0
    meta = json.loads((tmp_path / "t" / "meta.json").read_text(encoding="utf-8"))
    assert meta["questions"] == [2, 3]
    rows = [json.loads(x) for x in (tmp_path / "t" / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {sum(m["role"] == "user" for m in r["conversations"]) for r in rows} <= {2, 3}
    for bad, msg in (("two", "--questions: expected FEWEST:MOST"), ("3:2", "questions must be")):
        with pytest.raises(SystemExit, match=msg):
            main(["data", "tools", "--out", str(tmp_path / "bad"), "--questions", bad])
    assert main(["data", "tools", "--out", str(tmp_path / "s"), "--sizes", "20,0,0", "--calc-tasks", "sub4, sub5",
                 "--direct-share", "0"]) == 0
    meta = json.loads((tmp_path / "s" / "meta.json").read_text(encoding="utf-8"))
    assert meta["calc_tasks"] == ["sub4", "sub5"] and set(meta["counts"]["train"]) == {"sub4", "sub5"}
    with pytest.raises(SystemExit, match="scratchlm data tools: add2: the calculator chats are for 4\\+-digit"):
        main(["data", "tools", "--out", str(tmp_path / "bad"), "--calc-tasks", "add2"])

"""The demo's tool-use data: tool chats written by its data step reach the SFT shards with their tools, calls and
loss mask; the settings that make room for them."""

import json

import pytest

from scratchlm.shards.datasets import open_shards


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from scratchlm.demo.data import prepare_demo_data
    from scratchlm.demo.settings import quick_settings

    s = quick_settings()
    s.tool_sizes, s.tool_direct_share = (12, 2, 2), 0.25
    out = tmp_path_factory.mktemp("demo_tools")
    return out, prepare_demo_data(out, s)


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_tool_chats_survive_prepare_with_tools_calls_and_mask(demo_data):
    from scratchlm.data.clean import clean_messages
    from scratchlm.tokenizer.bpe import Tokenizer

    out, paths = demo_data
    tok = Tokenizer.load(paths["tokenizer"])
    synth = _lines(out / "data" / "synth" / "sft_train.jsonl")
    tools = _lines(out / "data" / "tools" / "sft_train.jsonl")
    assert len(tools) == 12 and {r["tool"] for r in tools} == {"calculator", "none"}
    ds = open_shards(paths["sft"])
    assert ds.n_docs == len(synth) + len(tools)  # the tool chats follow the task chats
    for j, rec in enumerate(tools):
        ids, mask = ds.doc(len(synth) + j).tolist(), ds.doc_mask(len(synth) + j).tolist()
        # as the template renders the chat (prepare's NFKC cleaning: "？" → "?")
        assert (ids, mask) == tuple(map(list, tok.encode_chat(clean_messages(rec["conversations"]), tools=rec["tools"])))
        learnt = tok.decode([i for i, m in zip(ids, mask) if m])
        shown = tok.decode([i for i, m in zip(ids, mask) if not m])
        assert '"name": "calculator"' in shown  # the tools' system turn, as context
        if rec["tool"] == "calculator":
            call, answer = rec["conversations"][1]["tool_calls"][0], rec["conversations"][3]["content"]
            result = rec["conversations"][2]["content"]
            # the tool's result only shown, the call and the answer learnt
            assert "<tool_response>" not in learnt and f"<tool_response>\n{result}\n</tool_response>" in shown
            expr = call["arguments"]["expression"]
            assert f'"name": "calculator", "arguments": {{"expression": "{expr}"}}' in learnt
            assert learnt.endswith(f"{answer}<|im_end|>")
        else:
            assert "<tool_call>" not in learnt and rec["conversations"][1]["content"] in learnt
    # the tokenizer learnt from the tool chats' text too (their system turn is one of its pieces)
    pieces = [json.loads(x)["text"] for x in (out / "data" / "tokenizer_chats.jsonl").read_text().splitlines()]
    assert any(p.startswith("system\n# Tools") and '"calculator"' in p for p in pieces)


def test_tool_settings_lengthen_sft_rows_and_the_model(demo_data):
    from scratchlm.config import load_config
    from scratchlm.demo.data import check_chats_fit
    from scratchlm.demo.settings import DemoSettings, stage_sets

    off = DemoSettings(tool_sizes=(0, 0, 0))
    on = DemoSettings(tool_sizes=(2000, 100, 100), tool_seq_len=320, tool_batch=10)
    cfg_off, cfg_on = load_config(off.preset, stage_sets(off, "sft")), load_config(on.preset, stage_sets(on, "sft"))
    assert (cfg_off.train.seq_len, cfg_off.train.batch_size) == (off.sft_seq_len, off.sft_batch)
    assert (cfg_on.train.seq_len, cfg_on.train.batch_size, cfg_on.model.max_seq_len) == (320, 10, 640)
    assert load_config(on.preset, stage_sets(on, "pretrain")).model.max_seq_len == 640  # the SFT model's shape
    out, paths = demo_data
    longest = check_chats_fit(paths["sft"], 4096)
    assert longest == max(len(open_shards(paths["sft"]).doc(i)) for i in range(open_shards(paths["sft"]).n_docs))
    with pytest.raises(SystemExit, match=f"is {longest} tokens, longer than tool_seq_len=100"):
        check_chats_fit(paths["sft"], 100)
    with pytest.raises(SystemExit, match=rf"longer than tools_stage_seq_len=100 \+ 1; raise it \(--setting tools_stage_seq_len={longest}\)"):
        check_chats_fit(paths["sft"], 100, "tools_stage_seq_len")


def test_summary_reports_tool_use_accuracy():
    from scratchlm.eval.summary import summary_rows

    tu = {"n": 2, "tools": ["calculator"], "agent": {"all": 0.5}, "direct": {"all": 0.0},
          "called_calculator": {"all": 1.0}}
    rows = dict(summary_rows({"settings": {"eval_split": "test"}, "tool_use_accuracy": tu}))
    key = next(k for k in rows if k.startswith("tool use (tool chats in SFT):"))
    assert "(2 problems)" in key and "calculator" in key and rows[key] == "0.500 / 0.000 / 1.000"
    assert not any(k.startswith("tool") for k in dict(summary_rows({"settings": {"eval_split": "test"}})))
    # the tools step: the same row, and what it kept of the SFT model's tasks (before → after)
    step = {**tu, "agent": {"all": 0.75}, "tasks": {"add2": [1.0, 0.96]}}
    rows = dict(summary_rows({"settings": {"eval_split": "test"}, "tools": step}))
    assert rows[next(k for k in rows if k.startswith("tools step: test 4-5 digit"))] == "0.750 / 0.000 / 1.000"
    assert rows["tools step (from SFT): test add2 before → after"] == "1.000 → 0.960"
    assert not any(k.startswith("tool use") for k in rows)


def test_tools_stage_refuses_bad_settings_before_training(tmp_path):
    from scratchlm.demo.pipeline import run_demo
    from scratchlm.demo.settings import quick_settings
    from scratchlm.demo.tools import check_tools_stage, run_tools_stage

    cases = [("tools_stage_sizes", (40, 4, 4), r"tools_stage_sizes must be \[train, val\] chats, each >= 1"),
             ("tools_stage_sizes", (40, 0), r"tools_stage_sizes must be \[train, val\] chats, each >= 1"),
             *[("tools_stage_questions", bad, r"tools_stage_questions must be \[fewest, most\] questions per chat")
               for bad in ((0, 2), (3, 2), (1, 2, 3))],
             ("tools_stage_calc_tasks", ("add4", "plus4"), r"tools_stage_calc_tasks: not an arithmetic task name: 'plus4'"),
             ("tools_stage_calc_tasks", ("add4", "sub3"),
              r"tools_stage_calc_tasks: sub3: the calculator chats are for 4\+-digit problems \(it has 3 digit\(s\)"),
             ("tools_stage_calc_tasks", (), r"tools_stage_calc_tasks: no calculator tasks")]
    for key, bad, message in cases:
        s = quick_settings()
        s.stages = ["pretrain", "sft", "tools"]
        setattr(s, key, bad)
        with pytest.raises(SystemExit, match=message):
            check_tools_stage(s)
        with pytest.raises(SystemExit, match=message):
            run_tools_stage(tmp_path, s, {}, {}, False)
        with pytest.raises(SystemExit, match=message):  # the demo refuses before its data and pretraining
            run_demo(tmp_path / "demo", settings=s, progress=False)
        assert not (tmp_path / "data").exists() and not (tmp_path / "demo").exists()
    s = quick_settings()
    assert check_tools_stage(s) == tuple(s.tools_stage_questions)


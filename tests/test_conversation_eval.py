"""eval/conversation.py: the three ways a held-out question is asked (alone, as the third turn of a chat, with
thinking off), on the tiny chat run of tests/serve_util.py, and the chat each third turn is asked in."""

from __future__ import annotations

import json

import pytest

from scratchlm.eval.conversation import MODES, _items, conversation_scores, third_turn_chat
from scratchlm.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompt_file(tmp_path, rows):
    f = tmp_path / "prompt_test.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f


def _row(task, q, answer, **extra):
    return {"prompt": [{"role": "user", "content": q}], "answer": answer, "task": task, "lang": "en", **extra}


def test_items_interleave_tasks_and_skip_open_and_unseen(tmp_path):
    rows = [_row("add2", f"What is {i} plus 1?", str(i + 1)) for i in range(5)]
    rows += [_row("identity", "who are you?", "scratchlm"), _row("identity", "your name?", "scratchlm")]
    rows += [_row("add2", "12+1=?", "13", phrasing="unseen"), _row("fortune", "Tell me a fortune.", "")]
    items = _items(_prompt_file(tmp_path, rows), per_task=3)
    assert [it["task"] for it in items] == ["add2", "identity", "add2", "identity", "add2"]
    assert all(it.get("phrasing") != "unseen" for it in items)
    # the third turn: two earlier exchanges (wrapping around), answers without their reasoning, then the question
    alone = ["<think>0+1=1</think>1", "I am scratchlm.", "<think>1+1=2</think>2", "I'm scratchlm", "3"]
    chat = third_turn_chat(items, alone, 1)
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in chat] == ["What is 2 plus 1?", "3", "What is 0 plus 1?", "1", "who are you?"]


def test_conversation_scores_on_the_tiny_chat_run(chat_run, tmp_path):
    model, tok, _ = load_run(chat_run)
    rows = [_row("add2", "What is 2 plus 3?", "5") for _ in range(4)]
    scores = conversation_scores(model, tok, _prompt_file(tmp_path, rows), per_task=3, max_new_tokens=12)
    assert set(scores) == {*MODES, "samples"}
    for mode in MODES:
        assert scores[mode]["add2"][1] == 3
    # learned by heart, with thinking on and off: asked alone, every answer is right both ways
    assert scores["alone"]["add2"] == [3, 3] and scores["think_off"]["add2"] == [3, 3]
    chat = scores["samples"][0]["chat"]
    assert chat == ["What is 2 plus 3?", "5", "What is 2 plus 3?", "5", "What is 2 plus 3?"]  # reasoning left out
    with pytest.raises(ValueError, match="has 1 checkable prompts; need at least 3"):
        conversation_scores(model, tok, _prompt_file(tmp_path, rows[:1]), per_task=3, max_new_tokens=4)

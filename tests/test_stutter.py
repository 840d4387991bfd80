"""The stutter metric on hand-made strings: the longest run of one unit, distinct-2, pass/fail at the bounds, the
identity-line share, and the open-ended prompts of a synth file."""

from __future__ import annotations

import json

import pytest

from scratchlm.eval.stutter import (distinct_n, longest_run, open_ended_prompts, reply_stutter, stutter_summary,
                                    units)


def test_longest_run_by_hand():
    assert longest_run("") == 0 and longest_run("a") == 1
    assert longest_run("江江江江江日") == 5 and longest_run("日江江江江江") == 5
    assert longest_run("abcabc") == 1 and longest_run("aabbbcc") == 3
    assert longest_run([7, 7, 3, 7, 7, 7]) == 3  # token ids too


def test_units_split_cjk_by_character_and_latin_by_word():
    assert units("床前明月光，疑是地上霜。") == list("床前明月光，疑是地上霜。")
    assert units("Don't stop, 2 more!") == ["Don't", "stop", ",", "2", "more", "!"]
    assert units("我是Nova。") == ["我", "是", "Nova", "。"]


def test_distinct_2_by_hand():
    assert distinct_n(list("abab"), 2) == pytest.approx(2 / 3)  # ab ba ab: 2 distinct of 3
    assert distinct_n(list("abcd"), 2) == 1.0 and distinct_n(list("aaaa"), 2) == pytest.approx(1 / 3)
    assert distinct_n(["x"], 2) == 1.0 and distinct_n(list("aaaa"), 1) == 0.25
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n("ab", 0)


def test_reply_passes_only_within_both_bounds():
    assert reply_stutter("床前明月光，疑是地上霜。")["ok"]
    five = reply_stutter("江江江江江日")
    assert five["run"] == 5 and not five["ok"]
    assert reply_stutter("哈哈哈哈，好")["ok"]  # four of one character is allowed
    loop = reply_stutter("夜来 夜来 夜来 夜来 夜来 夜来")  # no long run of one character, but one bigram over and over
    assert loop["run"] == 1 and loop["distinct2"] == pytest.approx(2 / 11) and not loop["ok"]
    assert reply_stutter("a a a a a a")["run"] == 6  # spaces do not break a run of one word


def test_summary_shares_worst_and_identity_line():
    replies = ["床前明月光，疑是地上霜。", "江江江江江江江", "I am scratchlm, a small language model.", "Keep going."]
    s = stutter_summary(replies, identity="scratchlm")
    assert s["replies"] == 4 and s["pass"] == 0.75 and s["run_ok"] == 0.75 and s["identity_line"] == 0.25
    assert s["worst"]["reply"] == "江江江江江江江" and s["worst"]["run"] == 7
    assert "identity_line" not in stutter_summary(replies)
    with pytest.raises(ValueError, match="no replies"):
        stutter_summary([])


def test_open_ended_prompts_are_the_distinct_unscorable_requests(tmp_path):
    f = tmp_path / "prompt_test.jsonl"
    rows = [{"task": "add2", "prompt": [{"role": "user", "content": "1+1?"}]},
            {"task": "fortune", "prompt": [{"role": "user", "content": "Any fortune for me today?"}]},
            {"task": "fortune", "prompt": [{"role": "user", "content": "Any fortune for me today?"}]},
            {"task": "recite", "prompt": [{"role": "user", "content": "来一首《静夜思》。"}]}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = open_ended_prompts(f)
    assert [p[0]["content"] for p in got] == ["Any fortune for me today?", "来一首《静夜思》。"]
    assert [p[0]["content"] for p in open_ended_prompts(f, tasks=["add2"])] == ["1+1?"]

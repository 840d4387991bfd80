"""Inference-time scaling (engine/scaling.py, eval/scaling.py, the server's `scaling` extension), on the real engine
with the tiny chat model the serving tests train: N samples from one shared prefill, the majority vote by hand
(ties included), best-of-N by a real reward model and by a verifier, N = 1 equal to the plain sample, the eval CLI
and the API end to end through the real server."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest
import torch

from scratchlm.data.answers import check_answer, extract_answer
from scratchlm.engine.sampling import SamplingParams
from scratchlm.engine.scaling import (best_of, load_reward_run, majority_vote, reward_scorer, sample_n,
                                      self_consistency, verifier_scorer)
from serve_util import LiveServer, serving

pytestmark = pytest.mark.usefixtures("one_thread")

ADD = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def reward_run(chat_run, tmp_path_factory):
    """A real reward-model run folder: the chat run's trunk under a seeded score head, saved as `load_run` opens it."""
    from scratchlm.config import load_config
    from scratchlm.model.reward import RewardModel
    from scratchlm.runs import load_run, save_run

    lm, _, cfg = load_run(chat_run)
    torch.manual_seed(1)
    rm = RewardModel(lm)
    rcfg = load_config("debug", [f"model.vocab_size={cfg.model.vocab_size}", f"model.max_seq_len={cfg.model.max_seq_len}",
                                 "train.objective=reward"])
    return save_run(tmp_path_factory.mktemp("reward") / "run", rm, rcfg, chat_run)


@pytest.fixture(scope="module")
def engine(chat_run):
    from scratchlm.engine.llm_engine import LLMEngine
    from scratchlm.runs import load_run

    model, tok, _ = load_run(chat_run)
    return LLMEngine(model, tok)


# ------------------------------------------------------------------------------------------------
# The pick, by hand


@pytest.mark.parametrize("answers, index, votes", [
    (["6", "5", "6"], 0, {"6": 2, "5": 1}),
    (["5", "6", "6"], 1, {"5": 1, "6": 2}),  # the majority's first sample, not the first sample
    (["7", "5", "5", "7"], 0, {"7": 2, "5": 2}),  # a tie: the answer seen first in sample order
    (["5", "7", "7", "5"], 0, {"5": 2, "7": 2}),
    ([None, "3", "4", "4", "3"], 1, {"3": 2, "4": 2}),  # a tie; None never votes
    ([None, None, "9"], 2, {"9": 1}),
    ([None, None], 0, {}),  # no answer anywhere: sample 0
])
def test_majority_vote_by_hand_with_ties(answers, index, votes):
    assert majority_vote(answers) == (index, votes)


def test_self_consistency_votes_on_the_extracted_answer():
    # add1 reads the number after the last "=": three spellings of 5 outvote two of 6
    replies = ["<think>2+3=6</think>6", "2+3=5", "it is 5", "x = 6", "<think>2+3=5</think>5", "no idea"]
    pick = self_consistency(replies, "add1")
    assert pick.answers == ["6", "5", "5", "6", "5", None] and pick.votes == {"6": 2, "5": 3} and pick.index == 1
    # 2 against 2: the answer seen first (sample 0's "6") wins
    assert self_consistency(replies[:4], "add1").index == 0
    # author answers vote as check_answer compares them: wrappers, case and punctuation aside
    pick = self_consistency(["Du Fu", "The author is Li Bai.", "li bai", "作者是李白。"], "author")
    assert pick.votes == {"dufu": 1, "libai": 2, "李白": 1} and pick.index == 1


@pytest.mark.parametrize("task, completion, answer", [
    ("add2", "<think>1+1=2</think>1,234", "1234"), ("add2", "= 12 apples", "12"), ("add2", "twelve", "12"),
    ("author", "作者是李白。", "李白"), ("author", "The author is Du Fu", "李白"), ("next_line", "疑是地上霜。", "疑是地上霜"),
    ("grounded_title", "It is from 静夜思 [poems#3]", "静夜思"), ("grounded_author", "李白 [src#1]", "李白"),
])
def test_extracted_answers_grade_as_check_answer_does(task, completion, answer):
    assert check_answer(task, completion, answer) == (extract_answer(task, completion) == extract_answer(task, answer))


def test_best_of_with_a_verifier_picks_the_verified_one_ties_to_the_first():
    verify = verifier_scorer(lambda prompt, c: check_answer("add1", c, "5"))
    assert best_of(ADD, ["4", "6", "5", "5"], verify).index == 2
    pick = best_of(ADD, ["1", "2"], verifier_scorer(lambda p, c: len(c)))
    assert pick.index == 0 and pick.scores == [1.0, 1.0]
    assert best_of(ADD, ["x", "yyy", "zz"], verifier_scorer(lambda p, c: len(c))).index == 1


@pytest.mark.parametrize("reply, score", [
    ("<think>4+7=11 3+5+1=9</think>91", 1.0),  # 38 + 47 (the question is never read)
    ("<think>9+9=18 9+9+1=19</think>198", 1.0),  # the last total is written whole
    ("<think>4+7=11 3+5+1=9</think>81", 4 / 5),  # the answer is not what the steps say
    ("<think>4+7=12 3+5+1=9</think>92", 4 / 5),  # a wrong sum (the answer follows it)
    ("<think>4+7=11 3+5=8</think>81", 4 / 5),  # a dropped carry
    ("<think>4+3=7 3+5+1=9</think>97", 4 / 5),  # a carry from nowhere
    ("91", 0.0), ("<think>4+7=11 x</think>1", 0.0), ("", 0.0),
])
def test_addition_trace_verifier_by_hand(reply, score):
    from scratchlm.eval.scaling import addition_trace_verifier

    assert addition_trace_verifier(ADD, reply) == pytest.approx(score)


def test_best_of_with_the_trace_verifier_picks_the_consistent_trace():
    from scratchlm.eval.scaling import addition_trace_verifier

    replies = ["<think>4+7=11 3+5=8</think>81", "<think>4+7=11 3+5+1=9</think>91", "91"]
    assert best_of(ADD, replies, verifier_scorer(addition_trace_verifier)).index == 1


# ------------------------------------------------------------------------------------------------
# The engine


def test_n_samples_share_one_prefill(engine):
    tok = engine.tokenizer
    ids = list(tok.encode_chat(ADD, add_generation_prompt=True)[0])
    before = engine.stats()
    outs = sample_n(engine, [ids], SamplingParams(temperature=1.5, max_new_tokens=8, seed=3), 8)[0]
    after = engine.stats()
    assert len(outs) == 8 and len({tuple(o) for o in outs}) > 1  # eight samples, not eight copies
    # the prompt went through the model once (forked over the KV cache), not eight times, and not by cache hits
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == len(ids)
    assert after["prefix_cache_hit_blocks"] == before["prefix_cache_hit_blocks"]


def test_n_equal_one_is_the_plain_sample(engine):
    tok = engine.tokenizer
    ids = list(tok.encode_chat(ADD, add_generation_prompt=True)[0])
    params = SamplingParams(temperature=1.5, max_new_tokens=8, seed=11)
    plain = engine.generate([ids], params)[0]
    one = sample_n(engine, [ids], params, 1)[0]
    text = [tok.decode(one[0], skip_special_tokens=True)]
    assert one == [plain]
    assert self_consistency(text, "number").index == 0 and best_of(ADD, text, verifier_scorer(lambda p, c: 0)).index == 0
    assert sample_n(engine, [ids], params, 4)[0][0] == plain  # sample 0 of N is seeded as the plain sample


def test_best_of_n_picks_the_reward_models_highest(engine, reward_run):
    from scratchlm.model.reward import score_texts

    rm, rtok = load_reward_run(reward_run)
    tok = engine.tokenizer
    ids = list(tok.encode_chat(ADD, add_generation_prompt=True)[0])
    outs = sample_n(engine, [ids], SamplingParams(temperature=2.0, max_new_tokens=6, seed=0), 6)[0]
    texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
    pick = best_of(ADD, texts, reward_scorer(rm, rtok))
    scores = score_texts(rm, rtok, [ADD] * len(texts), texts)
    assert pick.scores == pytest.approx(scores) and len(set(scores)) > 1
    assert pick.index == max(range(len(scores)), key=scores.__getitem__)


def test_reward_run_must_be_a_reward_model(chat_run, tmp_path):
    with pytest.raises(ValueError, match="--reward-run .*no such run folder"):
        load_reward_run(tmp_path / "nope")
    with pytest.raises(ValueError, match="not a reward-model run .*'sft'"):
        load_reward_run(chat_run)


# ------------------------------------------------------------------------------------------------
# The eval CLI


def test_eval_cli_self_consistency_and_best_of(chat_run, reward_run, tmp_path, capsys):
    from scratchlm.cli import main

    synth = tmp_path / "prompt_val.jsonl"
    synth.write_text("".join(json.dumps({"prompt": ADD, "answer": a, "task": "add1"}) + "\n" for a in ("5", "6")))
    base = ["eval", str(chat_run), "--tasks", "synth", "--synth", str(synth), "--max-new-tokens", "12"]
    out = tmp_path / "e.json"
    assert main(base + ["--self-consistency", "4", "--best-of", "4", "--reward-run", str(reward_run),
                        "--temperature", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["scaling"]
    row = res["add1"]
    # at temperature 0 every sample is the greedy answer, 5: right for the first item, wrong for the second
    assert row["n_items"] == 2 and row["greedy"] == row["self_consistency"] == row["best_of"] == 0.5
    assert row["mean_sample"] == row["pass_at_n"] == 0.5
    assert res["n"] == 4 and {p["method"] for s in res["samples"] for p in s["picks"]} == {"self_consistency", "best_of"}
    assert "self-consistency@4" in capsys.readouterr().out
    assert main(base + ["--best-of", "2", "--verifier", "addition_trace", "--temperature", "0", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["scaling"]["add1"]
    assert row["best_of_verifier"] == 0.5 and "best_of" not in row and "best-of-2 verifier" in capsys.readouterr().out
    for extra, msg in [(["--best-of", "4"], "--best-of N needs --reward-run REWARD_RUN (a reward-model run, e.g. "
                                            "the demo's RUNS/reward) or --verifier NAME"),
                       (["--best-of", "4", "--reward-run", str(tmp_path / "missing")], "--reward-run .*no such run"),
                       (["--self-consistency", "0"], "--self-consistency 0: N must be between 1 and 64"),
                       (["--self-consistency", "2", "--best-of", "3", "--reward-run", str(reward_run)], "same N")]:
        assert main(base + extra) == 1
        assert msg.split(".*")[0] in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The API


@contextlib.contextmanager
def serving_with_reward(run, reward_run, **engine_kwargs):
    from scratchlm.serve.app import create_app
    from scratchlm.serve.cli import open_engine

    engine, tokenizer, _ = open_engine(str(run), device="cpu", **engine_kwargs)
    try:
        scorer = reward_scorer(*load_reward_run(reward_run))
        with LiveServer(create_app(engine, tokenizer, "tiny", reward=scorer)) as server:
            yield server, engine
    finally:
        engine.shutdown()


def is_reply(choice: dict, text: str) -> bool:
    """Whether a chat choice's message is `text` split into reasoning and content."""
    from scratchlm.serve.reasoning import split_reasoning

    reasoning, content = split_reasoning(text)
    return (choice["message"].get("reasoning_content"), choice["message"]["content"]) == (reasoning, content)


def test_api_self_consistency_and_best_of_end_to_end(chat_run, reward_run):
    from scratchlm.model.reward import score_texts

    with serving_with_reward(chat_run, reward_run, max_num_seqs=8) as (srv, engine):
        c = httpx.Client(base_url=srv.url, timeout=60)
        before = engine.stats()["prompt_tokens_total"]
        body = {"messages": ADD, "temperature": 1.5, "seed": 5, "max_tokens": 10,
                "scaling": {"method": "self_consistency", "samples": 6, "answer": "number"}}
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        sc, choice = out["scaling"], out["choices"]
        cands = sc["candidates"]
        assert len(choice) == 1 and len(cands) == 6 and sc["samples"] == 6 and len(set(cands)) > 1
        # the vote, redone by hand from the candidates, picks the same sample, and that sample is the answer
        answers = [extract_answer("number", t) for t in cands]
        assert sc["answers"] == answers and sc["picked"] == majority_vote(answers)[0]
        assert is_reply(choice[0], cands[sc["picked"]]) and choice[0]["index"] == 0
        # one prefill for the six samples
        assert engine.stats()["prompt_tokens_total"] - before == out["usage"]["prompt_tokens"]

        rm, rtok = load_reward_run(reward_run)
        for seed in range(20):  # until the pick is not sample 0, so that returning sample 0 would show
            body.update(seed=seed, scaling={"method": "best_of", "samples": 5})
            out = c.post("/v1/chat/completions", json=body).json()
            sc = out["scaling"]
            cands = sc["candidates"]
            scores = score_texts(rm, rtok, [ADD] * 5, cands)
            assert sc["scores"] == pytest.approx(scores) and sc["picked"] == max(range(5), key=scores.__getitem__)
            assert is_reply(out["choices"][0], cands[sc["picked"]])
            if not is_reply(out["choices"][0], cands[0]):
                break
        else:
            raise AssertionError("every best-of pick was sample 0's reply")

        def refused(extra: dict, param: str, *words: str, path: str = "/v1/chat/completions") -> None:
            r = c.post(path, json={"messages": ADD, "max_tokens": 4, **extra})
            assert r.status_code == 400, (extra, r.status_code, r.text)
            err = r.json()["error"]
            assert all(w in err["message"] for w in words), err
            assert param is None or err["param"] == param, err

        refused({"scaling": {"method": "self_consistency", "samples": 9}}, "scaling.samples",
                "scaling.samples=9", "limit of 8")
        refused({"scaling": {"method": "best_of", "samples": 17}}, None, "scaling.samples", "16")
        refused({"scaling": {"method": "best_of", "samples": 0}}, None, "scaling.samples", "1")
        refused({"scaling": {"method": "vote", "samples": 2}}, None, "scaling.method")
        refused({"scaling": {"method": "self_consistency", "samples": 2, "answer": "bogus"}}, "scaling.answer",
                "'bogus' is not a way to read an answer")
        refused({"scaling": {"method": "self_consistency", "samples": 2, "sample": 3}}, None, "scaling.sample")
        refused({"n": 2, "scaling": {"method": "self_consistency", "samples": 2}}, "n", "n must be 1")
        refused({"stream": True, "scaling": {"method": "self_consistency", "samples": 2}}, "stream", "stream")
        r = c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2,
                                            "scaling": {"method": "best_of", "samples": 2}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "scaling"


def test_api_best_of_without_a_reward_model_is_a_400(chat_run):
    with serving(chat_run) as (srv, _):
        r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60,
                       json={"messages": ADD, "scaling": {"method": "best_of", "samples": 2}})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "scaling.method" and "--reward-run" in err["message"]

"""Agentic RL (agent/rl.py, train/multiturn.py): multi-turn tool-use rollouts through the real engine on a tiny
model trained by heart to call the calculator, to write an unreadable call, and to call again forever; the loss
mask of the batches (tool results 0, the model's own tokens 1, as encode_chat masks the same chat); the error
observation; the turn limit; and `scratchlm train agent` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchlm.agent.rl import AgentGRPO, agent_rewards
from scratchlm.config import ConfigError, load_config
from scratchlm.runs import load_run, read_metrics
from scratchlm.shards.datasets import Prompt
from scratchlm.tokenizer.bpe import Tokenizer
from scratchlm.train.batches import IGNORE
from scratchlm.train.multiturn import MALFORMED, chat_of_prompt
from tool_util import CALC, LOOP, QUESTION, RESULT

pytestmark = pytest.mark.usefixtures("one_thread")

BREAK_Q = "Break the tool."
BREAK = [{"role": "user", "content": BREAK_Q},
         {"role": "assistant", "content": "<tool_call>\n{not json}\n</tool_call>"},
         {"role": "tool", "content": MALFORMED},
         {"role": "assistant", "content": "I could not call it."}]
AGAIN_Q = "Count again."
_CALL = {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}}]}
AGAIN = [{"role": "user", "content": AGAIN_Q}] + [_CALL, {"role": "tool", "content": "2"}] * 4 + [_CALL]
# (question, answer, task) of the prompts: the calculator one is right when its answer holds 408
PROMPTS = [(QUESTION, RESULT, "identity"), (BREAK_Q, "never", "identity"), (AGAIN_Q, "2", "identity")]


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory):
    """A debug-preset run that knows LOOP, BREAK and AGAIN by heart (calculator listed, as rl.tools=calculator)."""
    from run_util import train_by_heart
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import train_tokenizer

    root = tmp_path_factory.mktemp("agent_rl")
    chats = [LOOP, BREAK, AGAIN]
    text = root / "text.txt"
    text.write_text("the quick brown fox\n" * 5, encoding="utf-8")
    tok = Tokenizer.load(train_tokenizer(root / "tok0", vocab_size=300, inputs=[text], show_progress=False))
    text.write_text("\n".join([tok.render_chat(c, tools=[CALC]) for c in chats] * 20), encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=512, inputs=[text], show_progress=False)
    tok = Tokenizer.load(tok_dir)
    cfg = load_config("debug", [f"model.vocab_size={tok.vocab_size}", "model.max_seq_len=512", "train.objective=sft"])
    model = train_by_heart(cfg, [tok.encode_chat(c, tools=[CALC]) for c in chats], 300)
    return save_run(root / "run", model, cfg, tok_dir)


class PromptShards:
    """In-memory prompt dataset with Shards' prompt API (ids as `prepare --kind prompt` writes them: no tools)."""

    kind = "prompt"

    def __init__(self, tok):
        self.items = [Prompt(np.asarray(tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True)[0]),
                             a, {"task": t}) for q, a, t in PROMPTS]
        self.n_docs = len(self.items)

    def prompt(self, i: int) -> Prompt:
        return self.items[i]


def _objective(run, *extra):
    model, _, cfg0 = load_run(run)
    tok = Tokenizer.load(run)
    cfg = load_config("debug", [f"model.vocab_size={cfg0.model.vocab_size}", "model.max_seq_len=512",
                                "train.objective=agent", "train.batch_size=3", "rl.num_generations=2",
                                "rl.max_new_tokens=48", "rl.temperature=0", "rl.tools=calculator", *extra])
    obj = AgentGRPO(cfg, PromptShards(tok), tokenizer=tok)
    obj.setup(obj.info, model)
    return obj, tok


def _spans(mask):
    """(start, end) of each run of 1s."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_chat_of_prompt_gives_back_the_messages(agent_run):
    tok = Tokenizer.load(agent_run)
    chat = [{"role": "system", "content": "be brief\n<|im_end|> not an end"}, {"role": "user", "content": "a\nb"}]
    assert chat_of_prompt(tok, tok.encode_chat(chat, add_generation_prompt=True)[0]) == chat


def test_tool_results_carry_mask_0_and_the_models_tokens_1(agent_run):
    obj, tok = _objective(agent_run)
    prompts, trajs = obj.sample_agents(obj.policy, [0, 1, 2], seed=0)
    calc = trajs[0]
    assert calc.calls == 1 and calc.stopped == "answer" and "408" in calc.answer  # the calculator loop ran
    assert [m["role"] for m in calc.messages] == ["user", "assistant", "tool", "assistant"]
    assert calc.messages[2]["content"] == RESULT
    for t in trajs:
        ids, mask = tok.encode_chat(t.messages, tools=[CALC])
        assert (t.ids, t.mask) == (ids, mask)  # the chat as encode_chat renders and masks it
        # the 1s are exactly the model's replies, each with its <|im_end|>
        replies = [m["content"] for m in t.messages[t.prompt_len:] if m["role"] == "assistant"]
        assert [tok.decode(t.ids[a:b]) for a, b in _spans(t.mask)] == [r + "<|im_end|>" for r in replies]
        for a, b in _spans(t.mask):  # what the engine sampled is what is trained (canonical BPE here)
            assert t.ids[a:b] in t.replies
    # every <tool_response> … </tool_response> and the system turn with the tools are context
    text_ids = calc.ids
    open_id, close_id = tok.token_to_id("<tool_response>"), tok.token_to_id("</tool_response>")
    a, b = text_ids.index(open_id), text_ids.index(close_id)
    assert sum(calc.mask[a:b + 1]) == 0 and RESULT in tok.decode(text_ids[a:b + 1])
    first, _ = tok.encode_chat(calc.messages[:1], add_generation_prompt=True, tools=[CALC])
    assert text_ids[:len(first)] == first and sum(calc.mask[:len(first)]) == 0 and calc.mask[len(first)] == 1
    # the training batch: targets exactly where the next token is the model's
    batch = obj.rollout([0, 1, 2], seed=0)
    y = batch["targets"]
    for r, t in enumerate(trajs):
        want = [tok_id if m else IGNORE for tok_id, m in zip(t.ids[1:], t.mask[1:])]
        assert y[r, :len(want)].tolist() == want and (y[r, len(want):] == IGNORE).all()
    assert batch["advantages"].shape == (6,) and batch["old_logp"].shape == y.shape


def test_a_malformed_call_becomes_an_error_observation(agent_run):
    obj, _ = _objective(agent_run)
    _, trajs = obj.sample_agents(obj.policy, [1], seed=0)
    for t in trajs:
        assert t.bad_calls == 1 and t.calls == 1
        assert t.messages[2] == {"role": "tool", "content": MALFORMED}
        assert t.stopped == "answer" and t.answer == "I could not call it."
    total, stats = obj.score_agents([obj.shards.prompt(1)] * 1, trajs)
    assert stats["rewards/format/mean"] == 0.0  # an unreadable call costs the format reward
    # an unknown tool or bad arguments: the registry's error observation, in the same place
    text, error = obj._run_tool("nope", "{}")
    assert error and "no tool named 'nope'" in text


@pytest.mark.parametrize("max_turns", [1, 3])
def test_the_turn_limit_holds(agent_run, max_turns):
    obj, tok = _objective(agent_run, f"rl.max_turns={max_turns}")
    _, trajs = obj.sample_agents(obj.policy, [2], seed=0)
    for t in trajs:
        assert len(t.replies) == max_turns and t.stopped == "turn_limit" and t.answer is None
        assert t.calls == max_turns - 1  # the last reply's call is not run: nothing would read its result
        assert t.messages[-1]["role"] == "assistant"
        assert [m["role"] for m in t.messages].count("tool") == max_turns - 1


def test_rewards_and_config_errors(agent_run):
    obj, _ = _objective(agent_run, "rl.reward_funcs=answer,format,length", "rl.reward_weights=1,0.1,0.01")
    prompts, trajs = obj.sample_agents(obj.policy, [0, 1, 2], seed=0)
    total, stats = obj.score_agents(prompts, trajs)
    # calculator: right and well-formed; broken: wrong, malformed; again: no answer
    want = [1 + 0.1, 1 + 0.1, 0, 0, 0, 0]
    lengths = [-t.generated_tokens / (3 * 48) * 0.01 for t in trajs]
    torch.testing.assert_close(total, torch.tensor(want) + torch.tensor(lengths))
    assert stats["tool_calls"] == pytest.approx((1 + 1 + 1 + 1 + 2 + 2) / 6)
    with pytest.raises(ConfigError, match="unknown think"):
        agent_rewards("answer,think", "1,1")
    with pytest.raises(ConfigError, match="rl.tools"):
        _objective(agent_run, "rl.tools=rag")
    with pytest.raises(ConfigError, match="rl.max_turns"):
        load_config("debug", ["rl.max_turns=0"])


def test_train_agent_end_to_end(agent_run, tmp_path):
    from scratchlm.cli import main
    from scratchlm.shards.prepare import prepare

    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "answer": a, "task": t}) + "\n"
                           for q, a, t in PROMPTS), encoding="utf-8")
    prepare("prompt", agent_run, [src], tmp_path / "data")
    out = tmp_path / "agent"
    rc = main(["train", "agent", "--config", "debug", "--init-from", str(agent_run), "--data", str(tmp_path / "data"),
               "--out", str(out), "--no-progress", "--set", "train.max_steps=2", "--set", "train.batch_size=3",
               "--set", "rl.num_generations=2", "--set", "rl.max_new_tokens=48", "--set", "rl.tools=calculator",
               "--set", "rl.loss_agg=cispo", "--set", "train.log_every=1", "--set", "train.eval_every=0",
               "--set", "train.save_every=0", "--set", "train.lr=1e-4"])
    assert rc == 0
    model, tok, cfg = load_run(out)
    assert cfg.train.objective == "agent" and cfg.rl.loss_agg == "cispo" and cfg.rl.max_turns == 3
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert len(rows) == 2
    for r in rows:
        assert np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1
        assert {"reward", "rewards/answer/mean", "rewards/format/mean", "tool_calls", "turns"} <= set(r)
    assert rows[0]["tool_calls"] > 0

"""train.compile=true on every objective: the blocks run compiled (one graph, no graph break) and each step's loss
equals the eager run's from the same seed, for packed/document-masked SFT, LoRA, DPO, GRPO (in CI) and pretraining,
the reward model, PPO and distillation (slow).

Each compiled run starts from `torch._dynamo.reset()`, so what it counts is its own; inductor's on-disk cache still
makes later compiles of the same graphs fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from scratchlm.config import load_config
from scratchlm.model.transformer import Block, compile_blocks
from scratchlm.runs import build_model, load_run, save_run
from scratchlm.train.distill import Distill
from scratchlm.train.dpo import DPO
from scratchlm.train.grpo import GRPO
from scratchlm.train.loop import train
from scratchlm.train.objectives import SFT, Pretrain
from scratchlm.train.ppo import PPO
from scratchlm.train.reward_objective import Reward
from tests.test_dpo import PairShards, _base
from tests.test_grpo import PromptShards
from tests.test_train_loop import ArrayShards, _sft_shards, tok  # noqa: F401  (tok is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["train.log_every=1", "train.eval_every=0", "train.save_every=0", "train.warmup_steps=1", "train.max_steps=3"]
RL = ["model.init_std=0.2", "train.batch_size=4", "rl.max_new_tokens=8", "rl.reward_funcs=length",
      "rl.reward_weights=1"]


def _case(name: str, tok, tmp_path):  # noqa: F811
    """(config overrides, objective factory, init_from) for one objective on in-memory data."""
    v = f"model.vocab_size={tok.vocab_size}"
    if name == "pretrain":
        ids = np.tile(np.random.default_rng(0).integers(0, 512, 97), 40)
        return ["train.batch_size=2", "train.seq_len=16"], lambda c: Pretrain(c, ArrayShards(ids)), None
    if name in ("sft_packed", "sft_lora", "distill"):
        shards, _ = _sft_shards(tok)
        sets = [v, "train.batch_size=2", "train.seq_len=56", "train.packing=true", "train.objective=sft"]
        if name == "sft_lora":
            base_cfg = load_config("debug", [v, "model.init_std=0.2"])
            torch.manual_seed(2)
            save_run(tmp_path / "lora-base", build_model(base_cfg), base_cfg)
            return (sets + ["lora.rank=4", "lora.targets=wq,wv,w2", "train.lr=1e-2"], lambda c: SFT(c, shards),
                    tmp_path / "lora-base")
        if name == "distill":
            torch.manual_seed(1)
            teacher = build_model(load_config("debug", [v, "model.init_std=0.2"])).eval()
            return ([v, "train.batch_size=2", "train.seq_len=48", "train.packing=false", "train.objective=distill"],
                    lambda c: Distill(c, shards, teacher=teacher), None)
        return sets, lambda c: SFT(c, shards), None
    if name in ("dpo", "reward"):
        sets = ["train.batch_size=4", "train.seq_len=24", f"train.objective={name}"]
        make = (lambda c: DPO(c, PairShards(40))) if name == "dpo" else (lambda c: Reward(c, PairShards(40)))
        return sets, make, _base(tmp_path)
    if name == "grpo":
        return [v, *RL, "train.objective=grpo", "rl.num_generations=4"], \
            lambda c: GRPO(c, PromptShards(tok), tokenizer=tok), None
    if name == "ppo":
        def make(c):
            torch.manual_seed(7)
            return PPO(c, PromptShards(tok), tokenizer=tok, reference=build_model(c))
        return [v, *RL, "train.objective=ppo", "rl.num_generations=2"], make, None
    raise ValueError(name)


def check_compiled_equals_eager(name: str, tok, tmp_path) -> None:  # noqa: F811
    sets, make, init_from = _case(name, tok, tmp_path)
    losses = {}
    for compiled in (False, True):
        cfg = load_config("debug", COMMON + sets + [f"train.compile={str(compiled).lower()}"])
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = build_model(cfg)
        obj = make(cfg)
        res = train(cfg, obj, tmp_path / f"{name}-{compiled}", model, init_from=init_from, progress=False)
        losses[compiled] = res.losses
        blocks = [m for m in model.modules() if isinstance(m, Block)]
        assert blocks and all(b.compiled == compiled for b in blocks)
        if compiled:
            # the blocks went through dynamo: graphs were captured, none broke (a break would run part eager)
            assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
            assert not counters["graph_break"], dict(counters["graph_break"])
    assert len(losses[True]) == 3 and all(np.isfinite(losses[True]))
    # fp32, same data and seeds: inductor's fused kernels reorder sums, nothing more
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sft_packed", "sft_lora", "dpo", "grpo"])
def test_compiled_step_equals_eager(name, tok, tmp_path):  # noqa: F811
    check_compiled_equals_eager(name, tok, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pretrain", "reward", "ppo", "distill"])
def test_compiled_step_equals_eager_slow(name, tok, tmp_path):  # noqa: F811
    check_compiled_equals_eager(name, tok, tmp_path)


def test_compile_blocks_marks_every_block_and_decoding_stays_eager():
    """compile_blocks reaches the trunk and the MTP depths; a forward with a KV cache never enters dynamo."""
    cfg = load_config("debug", ["model.mtp_depth=1"])
    model = build_model(cfg).eval()
    assert compile_blocks(model) == cfg.model.n_layers + 1
    torch._dynamo.reset()
    counters.clear()
    from scratchlm.model.cache import KVCache

    ids = torch.randint(0, cfg.model.vocab_size, (1, 5))
    with torch.no_grad():
        cached = model(ids, cache=KVCache(cfg.model, batch_size=1, max_len=8)).logits
        assert not counters["stats"], "a cached forward went through torch.compile"
        full = model(ids).logits
    assert counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)


def test_saved_run_of_a_compiled_model_has_plain_weights(tmp_path):
    """Compiling in place changes no parameter name: the run folder loads into an eager model."""
    cfg = load_config("debug", [])
    model = build_model(cfg)
    compile_blocks(model)
    save_run(tmp_path / "r", model, cfg)
    loaded = load_run(tmp_path / "r")[0]
    assert set(loaded.state_dict()) == set(build_model(cfg).state_dict())
    assert not any(b.compiled for b in loaded.modules() if isinstance(b, Block))

"""The one-GPU recipe presets (configs/minimind-26m-gpu.toml and its MoE twin): they load, validate, carry
MiniMind's shapes and pretraining schedule, and build the model of the expected size, which runs on CPU."""

import math

import pytest
import torch

from scratchlm.config import list_presets, load_config
from scratchlm.model.info import count_params
from scratchlm.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameter counts (tied embedding counted once): dense = 6400·512 + 8 blocks of GQA attention 8/2 heads and a
# 1408-wide SwiGLU + norms, the 25.8 M that MiniMind calls 26M; MoE = 4 routed + 1 shared expert per block,
# 2 routed + the shared one active.
EXPECTED = {"minimind-26m-gpu": (25_829_888, 25_829_888), "minimind-moe-gpu": (95_052_288, 60_449_280)}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_has_minimind_shape_and_schedule(preset):
    assert preset in list_presets()
    cfg = load_config(preset)
    m, t = cfg.model, cfg.train
    assert (m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.max_seq_len) == (6400, 512, 8, 8, 2, 512)
    assert m.tie_embeddings and m.ffn_hidden == 1408 and m.rope_theta == 1e6
    # MiniMind's train_pretrain.py: batch 32 × accumulation 8, lr 5e-4 cosine to lr/10, clip 1.0, bf16, AdamW defaults
    assert (t.objective, t.batch_size, t.grad_accum, t.seq_len) == ("pretrain", 32, 8, 512)
    assert (t.lr, t.schedule, t.min_lr_ratio, t.warmup_steps, t.grad_clip) == (5e-4, "cosine", 0.1, 0, 1.0)
    assert (t.weight_decay, t.beta1, t.beta2) == (0.01, 0.9, 0.999)
    assert (t.device, t.dtype, t.compile) == ("auto", "bfloat16", True)
    if preset == "minimind-moe-gpu":
        assert (m.n_routed_experts, m.n_shared_experts, m.top_k, m.aux_loss_coef) == (4, 1, 2, 0.1)
    else:
        assert not m.is_moe
    # The GPU preset is the shipped shape preset plus a schedule: the model sections must not drift apart.
    base = load_config("minimind-26m" if preset == "minimind-26m-gpu" else "minimind-moe").model
    assert m == base


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_builds_the_expected_model_and_runs_a_cpu_step(preset):
    cfg = load_config(preset)
    total, active = EXPECTED[preset]
    assert count_params(cfg.model) == total and count_params(cfg.model, active=True) == active
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == total
    ids = torch.randint(0, cfg.model.vocab_size, (2, 17))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert out.logits.shape == (2, 16, 6400)
    # A fresh model predicts about uniformly: the loss is near ln(vocab), and it trains (one step lowers it).
    ce = out.ce_loss if out.ce_loss is not None else out.loss  # the MoE twin's loss adds its router aux loss
    assert abs(ce.item() - math.log(6400)) < 0.5
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    out.loss.backward()
    opt.step()
    assert model(ids[:, :-1], targets=ids[:, 1:]).loss.item() < out.loss.item()

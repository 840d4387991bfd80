"""The one per-token log-probability path (Transformer.token_logprobs on layers.token_nll): equal to
log_softmax + gather over full logits, in values and gradients, with ignored positions at 0."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import load_config
from scratchlm.model.layers import cross_entropy_sum, token_nll
from scratchlm.model.transformer import Transformer

VARIANTS = {"gqa": (), "mla_moe_mtp": ("model.attention=mla", "model.n_routed_experts=4", "model.top_k=2",
                                       "model.mtp_depth=1")}


def test_token_nll_matches_log_softmax_and_sums_to_the_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, generator=g, requires_grad=True)
    targets = torch.tensor([3, 0, -100, 10, 5, -100, 1])
    nll = token_nll(logits, targets)
    want = -torch.log_softmax(logits, -1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * (targets != -100)
    torch.testing.assert_close(nll, want)
    torch.testing.assert_close(nll.sum(), cross_entropy_sum(logits, targets))
    w = torch.randn(7, generator=g)  # a different weight per row (as DPO's ±β gives)
    (gx,) = torch.autograd.grad((nll * w).sum(), logits)
    (gw,) = torch.autograd.grad((want * w).sum(), logits)
    torch.testing.assert_close(gx, gw)
    with pytest.raises(ValueError, match=r"logits must be \[N, V\]"):
        token_nll(logits[None], targets)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_token_logprobs_equal_full_logits_gather(variant):
    torch.manual_seed(0)
    model = Transformer(load_config("debug", list(VARIANTS[variant])).model)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, 20), generator=g)
    targets = torch.randint(0, model.config.vocab_size, (3, 20), generator=g)
    targets[0, :5] = -100  # a prompt
    targets[2, 12:] = -100  # right padding
    got = model.token_logprobs(ids, targets)
    full = torch.log_softmax(model(ids).logits.float(), -1)
    want = full.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got[targets == -100] == 0).all()
    # gradients through the trunk agree too (weighted per token, as a policy-gradient loss weights them)
    w = torch.randn(3, 20, generator=g)
    ga = torch.autograd.grad((got * w).sum(), model.layers[0].attn.wo.weight)[0]
    gb = torch.autograd.grad((want * w).sum(), model.layers[0].attn.wo.weight)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    # packed rows: each document's log-probs equal those it gets alone
    docs = torch.tensor([[0] * 8 + [1] * 12] * 3)
    packed = model.token_logprobs(ids, targets, doc_ids=docs)
    alone = model.token_logprobs(ids[:, 8:], targets[:, 8:])
    torch.testing.assert_close(packed[:, 8:], alone, rtol=1e-5, atol=1e-5)


def _pair():
    torch.manual_seed(0)
    model = Transformer(load_config("debug").model)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    targets = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    targets[:, :4] = -100
    return model, ids, targets


def test_forward_per_token_is_token_logprobs():
    # The per-token path through forward (what a DDP / FSDP-wrapped model must be called with) is token_logprobs.
    from scratchlm.train.objectives import token_logprobs

    model, ids, targets = _pair()
    want = model.token_logprobs(ids, targets)
    torch.testing.assert_close(model(ids, targets=targets, per_token=True), want, rtol=0, atol=0)
    torch.testing.assert_close(token_logprobs(model, ids, targets), want, rtol=0, atol=0)
    mask = torch.ones_like(ids)
    mask[:, 8:] = 0  # loss_mask drops targets, as in the ModelOutput path
    got = model(ids, targets=targets, loss_mask=mask, per_token=True)
    assert (got[:, 8:] == 0).all()
    torch.testing.assert_close(got[:, :8], want[:, :8], rtol=0, atol=0)
    with pytest.raises(ValueError, match="per_token=True"):
        model(ids, per_token=True)
    # nothing counted: all zeros, with the head still in the graph (DDP waits for a gradient of every weight)
    none = model(ids, targets=torch.full_like(targets, -100), per_token=True)
    assert (none == 0).all()
    none.sum().backward()
    assert model.lm_head.weight.grad is not None and model.layers[0].attn.wo.weight.grad is not None


def test_token_logprobs_through_ddp_equal_the_plain_model(tmp_path):
    # DDP forwards no attribute but `forward` (model.token_logprobs raises there) and all-reduces only gradients of
    # a forward it ran: objectives.token_logprobs goes through forward. One gloo process is enough to check both.
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from scratchlm.train.objectives import token_logprobs

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    model, ids, targets = _pair()
    want = model.token_logprobs(ids, targets)
    w = model.layers[0].attn.wo.weight
    (g_want,) = torch.autograd.grad(want.sum(), w)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DDP(model)
        with pytest.raises(AttributeError):
            ddp.token_logprobs(ids, targets)
        got = token_logprobs(ddp, ids, targets)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        got.sum().backward()  # the reducer was prepared in forward: backward all-reduces and fills .grad
        torch.testing.assert_close(w.grad, g_want)
    finally:
        dist.destroy_process_group()


def test_per_token_path_keeps_mtp_heads_in_the_graph():
    # DDP waits for a gradient of every trainable weight; the MTP heads take no part in the log-probs, so they get
    # exact zeros (DPO / GRPO / PPO from an MTP run under DDP would otherwise stop at the second step).
    torch.manual_seed(0)
    model = Transformer(load_config("debug", ["model.mtp_depth=1"]).model)
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    lp = model(ids, targets=ids, per_token=True)
    torch.testing.assert_close(lp, model.token_logprobs(ids, ids))
    lp.sum().backward()
    for name, p in model.mtp.named_parameters():
        assert p.grad is not None and not p.grad.any(), name
    with torch.no_grad():  # nothing added outside training
        assert not model.token_logprobs(ids, ids).requires_grad

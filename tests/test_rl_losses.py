"""RL maths on small tensors against hand computation: group advantages (scaled / not), zero-variance groups,
k3 KL, the clipped loss with ε_low/ε_high, and each aggregation (grpo, dapo, dr_grpo, cispo)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.train.rl_losses import group_advantages, k3_kl, policy_loss, zero_variance_groups


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    a = group_advantages(r, 4, scale=False)
    assert a.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of (1, 0, 0, 1)
    scaled = group_advantages(r, 4, scale=True)
    u = 0.5 / (std + 1e-4)
    assert scaled[:4].tolist() == pytest.approx([u, -u, -u, u])
    assert scaled[4:].tolist() == [0.0] * 4  # an all-equal group carries no signal
    assert zero_variance_groups(r, 4).tolist() == [False, True]
    with pytest.raises(ValueError, match="not \\[N·3\\]"):
        group_advantages(r, 3)


def test_k3_kl_is_zero_at_equality_and_matches_the_formula():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    k = k3_kl(logp, ref)
    assert k[0].item() == 0.0
    assert k[1].item() == pytest.approx(math.exp(0.5) - 0.5 - 1)


# Two sequences of up to 3 tokens; the second has 2 real tokens.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
NEW = torch.log(torch.tensor([[0.8, 0.5, 0.3], [0.4, 0.7, 0.9]]))  # ratios 1.6 1.0 0.6 / 0.8 1.4 (1.8 padding)
ADV = torch.tensor([1.0, -1.0])


def per_token_clipped(eps_low: float, eps_high: float) -> torch.Tensor:
    ratio = torch.exp(NEW - OLD)
    A = ADV[:, None]
    return -torch.minimum(ratio * A, ratio.clamp(1 - eps_low, 1 + eps_high) * A)


def test_clipped_loss_each_aggregation_by_hand():
    pt = per_token_clipped(0.2, 0.28)
    # row 0 (A = +1): −min(1.6, 1.28) = −1.28, −1.0, −0.6; row 1 (A = −1): −min(−0.8, −0.8) = 0.8, −min(−1.4, −1.28) = 1.4
    assert pt[0].tolist() == pytest.approx([-1.28, -1.0, -0.6]) and pt[1, :2].tolist() == pytest.approx([0.8, 1.4])
    grpo = ((-1.28 - 1.0 - 0.6) / 3 + (0.8 + 1.4) / 2) / 2
    dapo = (-1.28 - 1.0 - 0.6 + 0.8 + 1.4) / 5
    dr = (-1.28 - 1.0 - 0.6 + 0.8 + 1.4) / (2 * 4)
    for agg, want, extra in (("grpo", grpo, {}), ("dapo", dapo, {}), ("dr_grpo", dr, {"max_len": 4})):
        out = policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.28, agg, **extra)
        assert out.loss.item() == pytest.approx(want, rel=1e-5), agg
    # clipped where the bound was taken: token (0, 0) (1.6 > 1.28, A > 0) only; (1, 1) with A < 0 takes −1.4 < −1.28
    assert policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.28).clip_fraction == pytest.approx(1 / 5)


def test_clip_higher_lets_rare_tokens_rise_further():
    low = policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.2, "dapo").loss.item()
    high = policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.6, "dapo").loss.item()
    assert high == pytest.approx(low - (1.6 - 1.2) / 5)  # token (0, 0) now counts 1.6 instead of 1.2


def test_cispo_caps_the_detached_weight_and_keeps_every_token():
    logp = NEW.clone().requires_grad_(True)
    out = policy_loss(logp, OLD, ADV, MASK, 0.2, 0.28, "cispo")
    w = torch.exp(NEW - OLD).clamp(max=1.28)
    want = (-(w * ADV[:, None] * NEW) * MASK).sum() / 5
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    out.loss.backward()
    # d loss / d logp = −w·A / 5 on every real token (even the capped one), 0 on padding
    torch.testing.assert_close(logp.grad, -(w * ADV[:, None]) * MASK / 5)


def test_kl_term_and_errors():
    ref = OLD
    plain = policy_loss(NEW, OLD, ADV, MASK, agg="dapo", ref_logp=ref, beta=0.0)
    withkl = policy_loss(NEW, OLD, ADV, MASK, agg="dapo", ref_logp=ref, beta=0.1)
    kl = ((k3_kl(NEW, ref) * MASK).sum() / 5).item()
    assert plain.kl == pytest.approx(kl) and withkl.loss.item() == pytest.approx(plain.loss.item() + 0.1 * kl, rel=1e-5)
    with pytest.raises(ValueError, match="agg='ppo'"):
        policy_loss(NEW, OLD, ADV, MASK, agg="ppo")


def test_kl_shaped_rewards_put_the_score_on_the_last_token():
    from scratchlm.train.rl_losses import kl_shaped_rewards

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logp, ref = torch.full((2, 3), -1.0), torch.full((2, 3), -1.5)
    r = kl_shaped_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    # −0.1·(−1 − (−1.5)) = −0.05 per token; the score lands on each row's last real token
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.05, 1.95], [-0.05, -1.05, 0.0]]))


def test_gae_by_hand():
    from scratchlm.train.rl_losses import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.0]])  # 9.0 sits on padding: never read
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    g, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, g, lam)
    # row 0: δ2 = 1 − 0.7 = 0.3; δ1 = 0 + 0.9·0.7 − 0.6 = 0.03; δ0 = 0 + 0.9·0.6 − 0.5 = 0.04
    a2 = 0.3
    a1 = 0.03 + g * lam * a2
    a0 = 0.04 + g * lam * a1
    # row 1: δ1 = 2 − 0.2 = 1.8 (nothing after it); δ0 = 0 + 0.9·0.2 − 0.1 = 0.08
    b1 = 1.8
    b0 = 0.08 + g * lam * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(ret, (adv + values) * mask)


def test_whiten_and_clipped_value_loss_by_hand():
    from scratchlm.train.rl_losses import value_loss, whiten

    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    # token 0: unclipped (1 − 2)² = 1, clipped V = 0.7 → (0.7 − 2)² = 1.69: max 1.69; token 1: 1 and 1
    want = 0.5 * (1.69 + 1.0) / 2
    assert value_loss(v, old, ret, torch.ones(1, 2), clip=0.2).item() == pytest.approx(want)


def test_per_token_advantages_by_hand():
    # PPO's GAE gives one advantage per token: [B, T] broadcasts token by token instead of per row.
    adv = torch.tensor([[1.0, -1.0, 2.0], [0.5, -2.0, 9.0]])  # (1, 2) is padding
    out = policy_loss(NEW, OLD, adv, MASK, 0.2, 0.2, "dapo")
    # ratios 1.6 1.0 0.6 / 0.8 1.4, ε = 0.2: row 0: −min(1.6·1, 1.2·1) = −1.2, −min(−1, −1) = 1.0,
    # −min(0.6·2, 0.8·2) = −1.2; row 1: −min(0.8·0.5, 0.8·0.5) = −0.4, −min(1.4·−2, 1.2·−2) = 2.8
    want = (-1.2 + 1.0 - 1.2 - 0.4 + 2.8) / 5
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.clip_fraction == pytest.approx(1 / 5)  # only token (0, 0) takes the bound
    same = policy_loss(NEW, OLD, ADV[:, None].expand(2, 3), MASK, 0.2, 0.28, "grpo")
    assert same.loss.item() == pytest.approx(policy_loss(NEW, OLD, ADV, MASK, 0.2, 0.28, "grpo").loss.item())

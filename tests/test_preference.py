"""Preference losses against their closed forms at fixed inputs (DPO, cDPO, IPO, SimPO, reward pairwise)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.train.preference import pairwise_reward_loss, preference_loss, reward_metrics

# one pair, summed completion log-probs: policy chosen/rejected, reference chosen/rejected; lengths 4 and 2
PC, PR, RC, RR, LC, LR = -4.0, -6.0, -5.0, -5.5, 4.0, 2.0


def t(x: float) -> torch.Tensor:
    return torch.tensor([x])


def run(loss_type: str, beta: float, eps: float = 0.0, gamma: float = 0.5):
    return preference_loss(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR), beta, loss_type, eps, gamma)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_sigmoid_and_cdpo_closed_form(beta, eps):
    out = run("sigmoid", beta, eps)
    z = beta * ((PC - RC) - (PR - RR))  # 0.1 · (1.0 − (−0.5)) = 0.15
    want = -(1 - eps) * math.log(sig(z)) - eps * math.log(sig(-z))
    assert out.losses.item() == pytest.approx(want, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(beta * (PC - RC))
    assert out.rejected_rewards.item() == pytest.approx(beta * (PR - RR))


def test_ipo_closed_form_on_token_averages():
    beta = 0.1
    h = (PC - RC) / LC - (PR - RR) / LR  # 0.25 + 0.25 = 0.5
    assert run("ipo", beta).losses.item() == pytest.approx((h - 1 / (2 * beta)) ** 2)  # (0.5 − 5)² = 20.25
    assert run("ipo", beta).losses.item() == pytest.approx(20.25)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo"])
def test_rpo_adds_the_chosen_per_token_nll(loss_type):
    plain = preference_loss(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR), 0.1, loss_type)
    rpo = preference_loss(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR), 0.1, loss_type, rpo_alpha=0.5)
    assert rpo.losses.item() == pytest.approx(plain.losses.item() + 0.5 * (-PC / LC))  # + 0.5 · 1.0
    assert rpo.chosen_rewards.item() == plain.chosen_rewards.item()  # the implicit rewards do not change


def test_simpo_is_reference_free_closed_form():
    beta, gamma = 2.0, 0.5
    out = preference_loss(t(PC), t(PR), None, None, t(LC), t(LR), beta, "simpo", 0.0, gamma)
    z = beta * (PC / LC - PR / LR) - gamma  # 2 · (−1 + 3) − 0.5 = 3.5
    assert out.losses.item() == pytest.approx(-math.log(sig(z)))
    assert out.chosen_rewards.item() == pytest.approx(beta * PC / LC)


def test_gradients_push_chosen_up_and_rejected_down():
    pc, pr = t(PC).requires_grad_(), t(PR).requires_grad_()
    preference_loss(pc, pr, t(RC), t(RR), t(LC), t(LR), 0.1).losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending the loss raises log π(chosen), lowers log π(rejected)


def test_metrics_and_bad_arguments():
    m = reward_metrics(run("sigmoid", 0.1))
    assert m["rewards/margins"] == pytest.approx(0.1 * 1.0 - 0.1 * (-0.5)) and m["rewards/accuracies"] == 1.0
    with pytest.raises(ValueError, match="choose one of sigmoid, ipo, simpo"):
        run("kto", 0.1)
    with pytest.raises(ValueError, match="needs the reference"):
        preference_loss(t(PC), t(PR), None, None, t(LC), t(LR), 0.1, "sigmoid")
    with pytest.raises(ValueError, match="label_smoothing"):
        run("sigmoid", 0.1, eps=0.5)


def test_pairwise_reward_loss_closed_form():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(pairwise_reward_loss(rc, rr), torch.tensor([-math.log(sig(1.0)), -math.log(sig(-1.0))]))
    torch.testing.assert_close(pairwise_reward_loss(rc, rr, margin=1.0)[0], torch.tensor(math.log(2.0)))


def test_simpo_label_smoothing_default_gamma_and_rejected_reward():
    # cSimPO: the same label smoothing as cDPO, on SimPO's logits; gamma left at its default 0.5
    beta, eps = 2.0, 0.2
    pc, pr = -6.0, -6.0  # per-token averages −1.5 and −3 (not ±1, so β·avg and β/avg differ)
    out = preference_loss(t(pc), t(pr), None, None, t(LC), t(LR), beta, "simpo", eps)
    z = beta * (pc / LC - pr / LR) - 0.5  # 2 · 1.5 − 0.5 = 2.5
    assert out.losses.item() == pytest.approx(-(1 - eps) * math.log(sig(z)) - eps * math.log(sig(-z)), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-3.0)  # 2 · (−1.5)
    assert out.rejected_rewards.item() == pytest.approx(-6.0)  # 2 · (−3)


def test_dpo_rewards_and_rpo_on_a_batch_of_unequal_pairs():
    # two pairs whose (policy − reference) differences are not ±1 and whose NLLs are not 1, so that a product
    # and a quotient (β·Δ vs β/Δ, α·NLL vs α/NLL) give different numbers
    pc, pr = torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -3.0])
    rc, rr = torch.tensor([-6.0, -8.0]), torch.tensor([-5.5, -4.0])
    lc, lr = torch.tensor([4.0, 3.0]), torch.tensor([2.0, 5.0])
    beta = 0.5
    out = preference_loss(pc, pr, rc, rr, lc, lr, beta, "sigmoid", rpo_alpha=0.25)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([1.0, -0.5]))  # 0.5 · (2, −1)
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.25, 0.5]))  # 0.5 · (−0.5, 1)
    z = [beta * (2.0 + 0.5), beta * (-1.0 - 1.0)]
    nll = [1.0, 3.0]  # −pc / lc: 4/4, 9/3
    want = torch.tensor([-math.log(sig(z[i])) + 0.25 * nll[i] for i in range(2)])
    torch.testing.assert_close(out.losses, want)


def test_reference_needed_on_both_sides():
    for ref_c, ref_r in [(t(RC), None), (None, t(RR))]:
        with pytest.raises(ValueError, match="needs the reference"):
            preference_loss(t(PC), t(PR), ref_c, ref_r, t(LC), t(LR), 0.1, "sigmoid")


def test_reward_metrics_every_key_and_a_tie_is_not_accurate():
    from scratchlm.train.preference import PreferenceLoss

    out = PreferenceLoss(torch.zeros(4), torch.tensor([1.0, 2.0, 0.5, -1.0]), torch.tensor([0.0, 2.0, 1.5, -3.0]))
    m = reward_metrics(out)
    assert m == pytest.approx({"rewards/chosen": 0.625, "rewards/rejected": 0.125, "rewards/margins": 0.5,
                               "rewards/accuracies": 0.5})  # margins 1, 0 (a tie), −1, 2: two of four are > 0
    assert all(type(v) is float for v in m.values())

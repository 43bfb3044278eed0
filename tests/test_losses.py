"""Losses against values computed by hand (math.log / math.exp on plain floats)."""

import math

import pytest
import torch

from hafrm.model.losses import HafObjective, PolicyLoss, bradley_terry_loss, hybrid_loss


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def nll(x):
    return -math.log(sigmoid(x))


def test_bradley_terry_matches_hand_values():
    loss = bradley_terry_loss(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0]))
    assert loss.tolist() == pytest.approx([nll(1.5), nll(-2.0)], rel=1e-6)


def test_bradley_terry_margin_and_centering():
    loss = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]), margin=torch.tensor([1.0]), center_coef=0.01)
    assert loss.item() == pytest.approx(nll(0.5) + 0.01 * 2.5**2, rel=1e-6)


@pytest.mark.parametrize(
    "kind, smoothing, expected",
    [
        ("sigmoid", 0.0, nll(0.1 * 3.0)),
        ("sigmoid", 0.2, 0.8 * nll(0.3) + 0.2 * nll(-0.3)),
        ("robust", 0.2, (0.8 * nll(0.3) - 0.2 * nll(-0.3)) / 0.6),
        ("hinge", 0.0, 1 - 0.3),
        ("ipo", 0.0, (3.0 - 5.0) ** 2),
    ],
)
def test_policy_losses_match_hand_values(kind, smoothing, expected):
    # chosen log-ratio 2.0, rejected -1.0 -> logits 3.0; tau 0.1
    loss = PolicyLoss(kind, tau=0.1, label_smoothing=smoothing)(torch.tensor([2.0]), torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_simpo_applies_label_smoothing_like_trl_cpo():
    # TRL's CPOTrainer (loss_type="simpo"): z = beta * (logits - gamma / beta); (1 - eps) * nll(z) + eps * nll(-z)
    loss = PolicyLoss("simpo", tau=2.0, simpo_gamma=0.5, label_smoothing=0.1)(
        torch.tensor([-2.0]), torch.tensor([-3.0])
    )
    z = 2.0 * (1.0 - 0.5 / 2.0)
    assert loss.item() == pytest.approx(0.9 * nll(z) + 0.1 * nll(-z), rel=1e-6)


@pytest.mark.parametrize("kind", ["ipo", "hinge"])
def test_label_smoothing_is_refused_where_it_has_no_meaning(kind):
    with pytest.raises(ValueError, match="label_smoothing"):
        PolicyLoss(kind, label_smoothing=0.1)


def test_simpo_is_reference_free_and_uses_mean_logps():
    objective = HafObjective("dpo", policy_loss=PolicyLoss("simpo", tau=2.0, simpo_gamma=0.5))
    logps = torch.tensor([-4.0, -9.0])  # chosen then rejected, sums
    counts = torch.tensor([2, 3])
    loss, _ = objective(None, logps, counts, reference_logps=None)
    assert loss.item() == pytest.approx(nll(2.0 * (-2.0 - -3.0) - 0.5), rel=1e-6)


def test_hybrid_total_is_reward_plus_alpha_policy():
    rewards = torch.tensor([1.0, 3.0, 0.0, 1.0])  # chosen [1, 3], rejected [0, 1]
    logps = torch.tensor([-5.0, -6.0, -7.0, -5.0])
    reference = torch.tensor([-6.0, -6.0, -6.0, -6.0])
    counts = torch.tensor([3, 3, 3, 3])
    loss, stats = HafObjective("haf", alpha=0.2)(rewards, logps, counts, reference)
    reward_part = (nll(1.0) + nll(2.0)) / 2
    # log-ratios: chosen [1, 0], rejected [-1, 1] -> logits [2, -1]
    policy_part = (nll(0.2) + nll(-0.1)) / 2
    assert stats["reward_loss"].item() == pytest.approx(reward_part, rel=1e-6)
    assert stats["policy_loss"].item() == pytest.approx(policy_part, rel=1e-6)
    assert loss.item() == pytest.approx(reward_part + 0.2 * policy_part, rel=1e-6)
    assert stats["reward_accuracy"].item() == 1.0
    assert stats["implicit_accuracy"].item() == 0.5


def test_methods_select_their_parts():
    rewards = torch.tensor([1.0, 0.0])
    logps, reference, counts = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5]), torch.tensor([1, 1])
    baseline, stats = HafObjective("baseline")(rewards, None, None, None)
    assert baseline.item() == pytest.approx(nll(1.0)) and "policy_loss" not in stats
    dpo, stats = HafObjective("dpo")(None, logps, counts, reference)
    assert dpo.item() == pytest.approx(nll(0.1 * 1.0)) and "reward_loss" not in stats
    assert not HafObjective("haf", alpha=0.0).trains_policy


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="policy loss"):
        PolicyLoss("nope")
    with pytest.raises(ValueError, match="method"):
        HafObjective("ppo")
    with pytest.raises(ValueError):
        hybrid_loss(None, None, 0.2)

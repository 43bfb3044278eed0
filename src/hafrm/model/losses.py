"""The HAF objective: Bradley-Terry reward loss + alpha * a DPO-family policy loss.

All functions take per-pair tensors of shape (B,) and return per-pair losses of shape (B,), so the
caller chooses the reduction and the tests can check every element by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

POLICY_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "simpo")
METHODS = ("baseline", "dpo", "haf")


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """-log sigmoid(r_w - r_l - margin), plus center_coef * (r_w + r_l)^2 to keep rewards centred at zero."""
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    loss = -F.logsigmoid(difference)
    if center_coef:
        loss = loss + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return loss


@dataclass(frozen=True)
class PolicyLoss:
    """A DPO-family preference loss on response log-probs.

    kind: sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO, Chowdhury et al. 2024) or simpo (reference-free).
    tau is DPO's beta. label_smoothing is the assumed label-flip rate: conservative DPO (cDPO) for sigmoid and
    simpo (as TRL's CPOTrainer applies it to SimPO), rDPO's unbiased form for robust. Note that TRL 1.16's
    DPOTrainer ignores label_smoothing for its sigmoid loss; older TRL and hafrm apply it (cDPO). ipo and hinge
    have no label-smoothed form and refuse it. IPO and SimPO use length-normalised (per-token mean) log-probs;
    the others use sums.
    """

    kind: str = "sigmoid"
    tau: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5

    def __post_init__(self):
        if self.kind not in POLICY_LOSSES:
            raise ValueError(f"policy loss must be one of {', '.join(POLICY_LOSSES)}, got {self.kind!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.label_smoothing and self.kind in ("ipo", "hinge"):
            raise ValueError(
                f"label_smoothing has no meaning for the {self.kind} policy loss (use sigmoid, robust or simpo)"
            )

    @property
    def needs_reference(self) -> bool:
        return self.kind != "simpo"

    @property
    def length_normalised(self) -> bool:
        return self.kind in ("ipo", "simpo")

    def log_ratios(self, logps: torch.Tensor, reference_logps: torch.Tensor | None) -> torch.Tensor:
        """log pi(y|x) - log pi_ref(y|x) per sequence (just log pi for reference-free SimPO)."""
        if not self.needs_reference:
            return logps
        if reference_logps is None:
            raise ValueError(f"the {self.kind} policy loss needs reference log-probs")
        return logps - reference_logps

    def __call__(self, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor) -> torch.Tensor:
        """Loss per pair from the chosen and rejected log-ratios (or log-probs for SimPO)."""
        logits = chosen_ratio - rejected_ratio
        eps = self.label_smoothing
        if self.kind == "hinge":
            return torch.relu(1 - self.tau * logits)
        if self.kind == "ipo":
            return (logits - 1 / (2 * self.tau)) ** 2
        if self.kind == "robust":
            return (-(1 - eps) * F.logsigmoid(self.tau * logits) + eps * F.logsigmoid(-self.tau * logits)) / (
                1 - 2 * eps
            )
        z = self.tau * logits - (self.simpo_gamma if self.kind == "simpo" else 0.0)
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)  # sigmoid (cDPO when eps > 0) and simpo


def hybrid_loss(
    reward_loss: torch.Tensor | None, policy_loss: torch.Tensor | None, alpha: float, policy_only_weight: float = 1.0
) -> torch.Tensor:
    """L = reward loss + alpha * policy loss (either part may be absent: baseline has no policy part; dpo has no
    reward part, and its policy loss is weighted by policy_only_weight)."""
    if reward_loss is None and policy_loss is None:
        raise ValueError("at least one of the reward and the policy loss is needed")
    if reward_loss is None:
        return policy_only_weight * policy_loss
    if policy_loss is None:
        return reward_loss
    return reward_loss + alpha * policy_loss


@dataclass(frozen=True)
class HafObjective:
    """The training objective of one method.

    baseline: Bradley-Terry reward loss only (a plain reward model; the LM head is never evaluated).
    dpo:      dpo_weight * policy loss; the model is then used as a reward model through its implicit reward.
    haf:      reward loss + alpha * policy loss on the shared backbone (the paper uses alpha=0.2, tau=0.1).
    """

    method: str = "haf"
    alpha: float = 0.2
    policy_loss: PolicyLoss = PolicyLoss()
    center_rewards_coef: float = 0.0
    use_margin: bool = False
    dpo_weight: float = 1.0  # the paper code's DPO-as-RM trains 0.2 x the DPO loss

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")

    @property
    def trains_reward(self) -> bool:
        return self.method in ("baseline", "haf")

    @property
    def uses_policy_head(self) -> bool:
        """dpo and haf models are also judged by their implicit reward, so evaluation scores the policy head."""
        return self.method in ("dpo", "haf")

    @property
    def trains_policy(self) -> bool:
        return self.method == "dpo" or (self.method == "haf" and self.alpha > 0)

    def sequence_scores(
        self, logps: torch.Tensor, token_counts: torch.Tensor, reference_logps: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-sequence log-ratio (or log-prob) the policy loss compares, length-normalised for IPO/SimPO."""
        if self.policy_loss.length_normalised:
            counts = token_counts.clamp(min=1)
            logps = logps / counts
            reference_logps = None if reference_logps is None else reference_logps / counts
        return self.policy_loss.log_ratios(logps, reference_logps)

    def implicit_rewards(
        self, logps: torch.Tensor, token_counts: torch.Tensor, reference_logps: torch.Tensor | None
    ) -> torch.Tensor:
        """DPO's implicit reward tau * log-ratio; a model ranks responses by it when used as a reward model."""
        return self.policy_loss.tau * self.sequence_scores(logps, token_counts, reference_logps)

    def __call__(
        self,
        rewards: torch.Tensor | None,
        logps: torch.Tensor | None,
        token_counts: torch.Tensor | None,
        reference_logps: torch.Tensor | None,
        margin: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over the batch and detached statistics. Tensors hold chosen rows then rejected rows (2B)."""
        stats: dict[str, torch.Tensor] = {}
        reward_loss = policy_loss = None
        if self.trains_reward:
            chosen, rejected = rewards.chunk(2)
            reward_loss = bradley_terry_loss(
                chosen, rejected, margin if self.use_margin else None, self.center_rewards_coef
            ).mean()
            stats["reward_loss"] = reward_loss.detach()
            stats["reward_accuracy"] = (chosen > rejected).float().mean()
            stats["reward_margin"] = (chosen - rejected).detach().mean()
        if self.trains_policy:
            chosen, rejected = self.sequence_scores(logps, token_counts, reference_logps).chunk(2)
            policy_loss = self.policy_loss(chosen, rejected).mean()
            stats["policy_loss"] = policy_loss.detach()
            stats["implicit_accuracy"] = (chosen > rejected).float().mean()
            stats["implicit_margin"] = self.policy_loss.tau * (chosen - rejected).detach().mean()
        return hybrid_loss(reward_loss, policy_loss, self.alpha, self.dpo_weight), stats

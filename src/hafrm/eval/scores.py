"""A batch through a hybrid model: the loss inputs, and the scores a reward model is judged by.

One place turns model outputs into (reward, implicit reward) scores, for the Trainer's loss and evaluation, for
`hafrm eval`/`report` and for Best-of-N: the reward head F, DPO's implicit reward tau * log-ratio from the policy
head K, and `combined` (their sum: both are Bradley-Terry scores on their own logit scale, so the sum multiplies the
two preference odds).
"""

from __future__ import annotations

import torch

from hafrm.model.hybrid import HybridOutput, HybridRewardModel
from hafrm.model.losses import HafObjective

HEADS = ("reward", "implicit", "combined")


def forward_batch(
    model, objective: HafObjective, batch: dict, with_logps: bool, reference_source: HybridRewardModel | None = None
) -> tuple[HybridOutput, torch.Tensor | None]:
    """Outputs of one forward pass and the reference log-probs the policy loss compares against: precomputed ones
    from the batch, else from `reference_source` (the unwrapped model: frozen copy, or LoRA base with adapters off)."""
    inputs = (batch["input_ids"], batch["segment_ids"], batch.get("position_ids"))
    outputs = model(*inputs, with_logps=with_logps, trunk_states=batch.get("trunk_states"))
    reference = batch.get("reference_logps")
    if with_logps and reference is None and objective.policy_loss.needs_reference:
        reference = (reference_source or model).reference_logps(*inputs)
    return outputs, reference


def implicit_rewards(objective: HafObjective, outputs: HybridOutput, reference: torch.Tensor | None) -> torch.Tensor:
    """DPO's implicit reward of each response; NaN where the policy head was not evaluated (baseline models)."""
    if outputs.logps is None:
        return torch.full_like(outputs.rewards, float("nan"))
    return objective.implicit_rewards(outputs.logps, outputs.token_counts, reference)


@torch.no_grad()
def batch_scores(
    model: HybridRewardModel, objective: HafObjective, batch: dict, with_implicit: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, implicit rewards) of every response of a batch, on the CPU. Asking for the reward head alone skips
    the LM head and the reference forward."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    outputs, reference = forward_batch(model, objective, batch, with_logps=with_implicit and objective.uses_policy_head)
    return outputs.rewards.float().cpu(), implicit_rewards(objective, outputs, reference).float().cpu()


def check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def head_scores(rewards: torch.Tensor, implicit: torch.Tensor, head: str) -> torch.Tensor:
    """The score a head ranks responses by."""
    check_head(head)
    return {"reward": rewards, "implicit": implicit, "combined": rewards + implicit}[head]

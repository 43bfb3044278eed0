"""The hybrid model: one causal-LM backbone shared by the reward head and the policy (LM) head (hybrid), the
objective (losses) and the frozen trunk's replay (trunk)."""

from hafrm.model.hybrid import HybridRewardModel, LoraSettings
from hafrm.model.losses import HafObjective, PolicyLoss

__all__ = ["HafObjective", "HybridRewardModel", "LoraSettings", "PolicyLoss"]

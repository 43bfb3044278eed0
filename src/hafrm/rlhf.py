"""Hand a trained reward model to online RLHF trainers.

TRL's GRPO and RLOO trainers take `reward_funcs`: callables `f(prompts, completions, **kwargs) -> list[float]`.
`reward_function(model_dir)` builds one from a hafrm output (or any sequence-classification reward
model). TRL's PPO trainer and OpenRLHF load `reward_model/` directly as an
AutoModelForSequenceClassification, or call `hafrm serve` through OpenRLHF's remote reward API.
"""

from __future__ import annotations

from pathlib import Path

from hafrm.scoring import RewardScorer


def _text(value) -> str:
    """A completion given as text or as TRL conversational messages (the last message's content)."""
    if isinstance(value, list):
        return value[-1]["content"] if value else ""
    return value


def reward_function(model_dir: str | Path, max_length: int = 512, batch_size: int = 8):
    """A TRL-style reward function scoring (prompt, completion) pairs with the reward head."""
    scorer = RewardScorer(model_dir, max_length=max_length)

    def hafrm_reward(prompts, completions, **kwargs) -> list[float]:
        return scorer.score(list(prompts), [_text(c) for c in completions], batch_size)

    hafrm_reward.__name__ = f"hafrm_reward_{Path(model_dir).name}"
    return hafrm_reward

"""Hand a trained reward model to online RLHF trainers.

TRL's GRPO and RLOO trainers take `reward_funcs`: callables `f(prompts, completions, **kwargs) -> list[float]`.
`reward_function(model_dir)` builds one from a hafrm output (or any sequence-classification reward
model). TRL's experimental PPO trainer (`trl.experimental.ppo`) and OpenRLHF load `reward_model/` directly as an
AutoModelForSequenceClassification, or OpenRLHF calls `hafrm serve` through its remote reward API.
"""

from __future__ import annotations

from pathlib import Path

from hafrm.eval.scoring import RewardScorer


def _text(value) -> str:
    """A completion given as text or as TRL conversational messages (the last message's content)."""
    if isinstance(value, list):
        return value[-1]["content"] if value else ""
    return value


def reward_function(
    model_dir: str | Path, max_length: int = 512, batch_size: int = 8, dtype: str = "fp32", device: str | None = None
):
    """A TRL-style reward function scoring (prompt, completion) pairs with the reward head.

    Prompts may be chat messages (conversational datasets), plain strings (templated here, as in training), or
    strings already formatted with the chat template (continued as they are, never templated twice). dtype
    (fp32, bf16, fp16) and device (default: CUDA when present) set where the reward model lives; a 7B model in
    fp32 needs about 28 GB.
    """
    scorer = RewardScorer(model_dir, max_length=max_length, dtype=dtype, device=device)

    def hafrm_reward(prompts, completions, **kwargs) -> list[float]:
        sequences = [scorer.encode_completion(p, _text(c)) for p, c in zip(prompts, completions)]
        return scorer.score_ids(sequences, batch_size)

    hafrm_reward.__name__ = f"hafrm_reward_{Path(model_dir).name}"
    return hafrm_reward

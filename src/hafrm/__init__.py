"""hafrm: reward models trained with the Hybrid Alignment Framework (HAF-RM, arXiv 2407.04185).

A reward head and the language-model (policy) head share one transformer backbone; training adds
alpha * (DPO policy loss) to the Bradley-Terry reward loss so the shared backbone is shaped by both.

    from hafrm import TrainConfig, train, load
    result = train(TrainConfig(model="path/to/model", max_steps=100), train_data=rows)
    model = load(result.output_dir)
    model.score(["How do I bake bread?"], ["Mix flour, water and yeast; knead; bake."], head="combined")

The names below are imported when first used, so `import hafrm` does not load torch or transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TrainConfig": "hafrm.training.config",
    "ALIASES": "hafrm.training.config",
    "train": "hafrm.training.pipeline",
    "TrainResult": "hafrm.training.pipeline",
    "HafTrainer": "hafrm.training.trainer",
    "HafObjective": "hafrm.model.losses",
    "PolicyLoss": "hafrm.model.losses",
    "HybridRewardModel": "hafrm.model.hybrid",
    "LoadedModel": "hafrm.training.loading",
    "PairScores": "hafrm.eval.evaluation",
    "load_pairs": "hafrm.data",
    "load_tokenizer": "hafrm.io.pretrained",
    "RewardScorer": "hafrm.eval.scoring",
}

__all__ = ["__version__", "load", *_LAZY]


def load(model_dir, reference: str | None = None, dtype: str = "fp32", device: str | None = None):
    """A trained hafrm output folder as a `LoadedModel`, ready to score with both heads: `.score(prompts, responses,
    head="reward" | "implicit" | "combined")` and `.score_pairs(pairs)`. The implicit reward needs the reference
    policy: the base model recorded at training, or `reference` (a model folder or hub name). device: default the
    GPU where there is one."""
    from hafrm.training.loading import load_trained

    return load_trained(model_dir, reference=reference, dtype=dtype, device=device)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hafrm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

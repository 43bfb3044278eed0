"""A finished run read back for scoring: its exported model, tokenizer and training config, with the reference policy
its implicit reward needs (`hafrm.load`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hafrm.eval.evaluation import PairScores, score_pairs, score_responses
from hafrm.eval.scoring import check_scorable
from hafrm.io.export import POLICY_DIR
from hafrm.io.pretrained import (
    fit_embeddings,
    inference_device,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from hafrm.model.hybrid import METADATA_FILE, HybridRewardModel
from hafrm.training.config import TrainConfig


@dataclass
class LoadedModel:
    """A finished run ready to score with both heads (`hafrm.load`)."""

    model: HybridRewardModel
    tokenizer: object
    config: TrainConfig

    @property
    def objective(self):
        return self.config.objective()

    def score(self, prompts: list, responses: list[str], head: str = "reward", batch_size: int = 8) -> np.ndarray:
        """One score per (prompt, response): head reward, implicit (tau * log-ratio) or combined (their sum)."""
        return score_responses(self, prompts, responses, [head], batch_size=batch_size)[head]

    def score_pairs(self, pairs: list[dict], batch_size: int = 8) -> PairScores:
        """Both heads' scores of canonical pairs ({prompt, chosen, rejected}); `.metrics()` gives the accuracies."""
        return score_pairs(self, pairs, batch_size=batch_size, progress=False)[0]


def load_trained(
    model_dir: str | Path, reference: str | None = None, dtype: str = "fp32", device: str | None = None
) -> LoadedModel:
    """A hafrm output folder, with its reference policy (the base model it was trained from) when it has a policy
    head, on `device` (default: the GPU where there is one, as RewardScorer; the attention kernel is chosen for it)."""
    model_dir = Path(model_dir)
    check_scorable(model_dir)
    metadata_path = model_dir / METADATA_FILE
    if not metadata_path.exists():
        raise FileNotFoundError(
            f"{model_dir} is not a hafrm output folder (no {METADATA_FILE}); `hafrm score` reads any reward model"
        )
    metadata = json.loads(metadata_path.read_text())
    if "config" not in metadata:
        raise ValueError(
            f"{model_dir} was written by HafTrainer.save_model without a run config: load its reward_model/ with "
            "AutoModelForSequenceClassification (or `hafrm score`), which needs none"
        )
    config = TrainConfig(**metadata["config"])
    torch_dtype = resolve_dtype(dtype)
    model = HybridRewardModel.from_pretrained(model_dir, torch_dtype, config.attn_implementation).eval()
    tokenizer = load_tokenizer(str(model_dir / POLICY_DIR))
    objective = config.objective()
    if objective.uses_policy_head and objective.policy_loss.needs_reference:
        base = reference or resolve_model_path(None if metadata["base_model"] == "default" else metadata["base_model"])
        reference_model = load_causal_lm(base, torch_dtype, config.attn_implementation)
        fit_embeddings(reference_model, tokenizer)  # the pad row training added, if it added one
        model.reference_model = reference_model.eval().requires_grad_(False)
    return LoadedModel(model.to(inference_device(device)), tokenizer, config)

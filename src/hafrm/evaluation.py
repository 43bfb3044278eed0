"""Pairwise accuracy of a trained hafrm model: reward head, implicit DPO reward, and both combined."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hafrm.config import TrainConfig
from hafrm.data import PairCollator, PairEncoder, SkipReport
from hafrm.model import METADATA_FILE, HybridRewardModel
from hafrm.pretrained import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from hafrm.trainer import accuracy_from_scores
from hafrm.training import encode_pairs, objective_from_config


@dataclass
class PairScores:
    """Per-pair scores; implicit rewards are NaN for models that have no policy head to judge by."""

    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    chosen_implicit: np.ndarray
    rejected_implicit: np.ndarray
    subsets: list[str | None] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return accuracy_from_scores(self.chosen_rewards, self.rejected_rewards, self.chosen_implicit, self.rejected_implicit)


@dataclass
class LoadedModel:
    model: HybridRewardModel
    tokenizer: object
    config: TrainConfig

    @property
    def objective(self):
        return objective_from_config(self.config)


def load_trained(model_dir: str | Path, reference: str | None = None, dtype: str = "fp32") -> LoadedModel:
    """A hafrm output folder, with its reference policy (the base model it was trained from) when it has a policy head."""
    model_dir = Path(model_dir)
    metadata_path = model_dir / METADATA_FILE
    if not metadata_path.exists():
        raise FileNotFoundError(f"{model_dir} is not a hafrm output folder (no {METADATA_FILE}); `hafrm score` reads any reward model")
    metadata = json.loads(metadata_path.read_text())
    config = TrainConfig(**metadata["config"])
    torch_dtype = resolve_dtype(dtype)
    model = HybridRewardModel.from_pretrained(model_dir, torch_dtype).eval()
    objective = objective_from_config(config)
    if objective.uses_policy_head and objective.policy_loss.needs_reference:
        base = reference or resolve_model_path(None if metadata["base_model"] == "default" else metadata["base_model"])
        model.reference_model = load_causal_lm(base, torch_dtype).eval().requires_grad_(False)
    return LoadedModel(model, load_tokenizer(str(model_dir / "policy")), config)


@torch.no_grad()
def score_pairs(loaded: LoadedModel, pairs: list[dict], max_length: int | None = None, batch_size: int = 8, progress: bool = True) -> tuple[PairScores, SkipReport]:
    """Rewards and implicit rewards of every pair, chosen and rejected scored in one forward pass."""
    tokenizer, model, objective = loaded.tokenizer, loaded.model, loaded.objective
    report = SkipReport(rows_read=len(pairs), rows_used=len(pairs))
    dataset = encode_pairs(pairs, PairEncoder(tokenizer, max_length or loaded.config.max_length), report)
    collator = PairCollator(tokenizer.pad_token_id, tokenizer.padding_side)
    device = next(model.parameters()).device
    columns: list[list[torch.Tensor]] = [[], [], [], []]
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collator), desc="scoring pairs", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"], with_logps=objective.uses_policy_head)
        if objective.uses_policy_head:
            reference = model.reference_logps(batch["input_ids"], batch["attention_mask"], batch["response_mask"]) if objective.policy_loss.needs_reference else None
            implicit = objective.implicit_rewards(outputs.logps, outputs.token_counts, reference)
        else:
            implicit = torch.full_like(outputs.rewards, float("nan"))
        for column, values in zip(columns, (*outputs.rewards.chunk(2), *implicit.chunk(2))):
            column.append(values.float().cpu())
    arrays = [torch.cat(c).numpy() for c in columns]
    return PairScores(*arrays, subsets=[p.get("subset") for p in pairs]), report

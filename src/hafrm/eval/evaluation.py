"""Pairwise accuracy of a trained hafrm model: reward head, implicit DPO reward, and both combined."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from hafrm.data import PairCollator, PairEncoder, SkipReport
from hafrm.data.encoding import batches_by_length, encode_pairs, length_sorted_batches, pad_sequences
from hafrm.data.formats import as_messages
from hafrm.eval.metrics import accuracy_from_scores, pair_correctness
from hafrm.eval.scores import batch_scores, check_head, head_scores
from hafrm.model.hybrid import HybridRewardModel
from hafrm.model.losses import HafObjective


@dataclass
class PairScores:
    """Per-pair scores; implicit rewards are NaN for models that have no policy head to judge by."""

    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    chosen_implicit: np.ndarray
    rejected_implicit: np.ndarray
    subsets: list[str | None] = field(default_factory=list)

    ARRAYS = ("chosen_rewards", "rejected_rewards", "chosen_implicit", "rejected_implicit")

    def metrics(self) -> dict[str, float]:
        return accuracy_from_scores(
            self.chosen_rewards, self.rejected_rewards, self.chosen_implicit, self.rejected_implicit
        )

    def correctness(self) -> dict[str, np.ndarray]:
        return pair_correctness(
            self.chosen_rewards, self.rejected_rewards, self.chosen_implicit, self.rejected_implicit
        )

    @classmethod
    def from_predictions(cls, predictions) -> PairScores:
        """From the Trainer's prediction rows [r_w, r_l, implicit_w, implicit_l]."""
        columns = np.asarray(predictions, dtype=np.float32)
        return cls(*(columns[:, i] for i in range(4)))

    def save(self, path: str | Path) -> None:
        """One .npz per model and test set; `load` reads it back (report, merge and statistics rely on this layout)."""
        subsets = np.asarray([s or "" for s in self.subsets], dtype=str)
        np.savez(path, **{name: getattr(self, name) for name in self.ARRAYS}, subsets=subsets)

    @classmethod
    def load(cls, path: str | Path) -> PairScores:
        with np.load(path, allow_pickle=False) as stored:
            arrays = [stored[name] for name in cls.ARRAYS]
            subsets = [s or None for s in stored["subsets"].tolist()] if "subsets" in stored else []
        return cls(*arrays, subsets=subsets)


def scores_file(folder: str | Path, test_set: str) -> Path:
    """Where a model's per-pair scores on a test set are kept (written by protocols, read by reports)."""
    return Path(folder) / f"scores-{test_set}.npz"


class TrainedModel(Protocol):
    """What scoring needs of a finished run (`hafrm.training.loading.LoadedModel`)."""

    model: HybridRewardModel
    tokenizer: object
    config: object  # its TrainConfig: max_length and truncation are read

    @property
    def objective(self) -> HafObjective: ...


def score_pairs(
    loaded: TrainedModel, pairs: list[dict], max_length: int | None = None, batch_size: int = 8, progress: bool = True
) -> tuple[PairScores, SkipReport]:
    """Rewards and implicit rewards of every pair, each pair's prompt computed once for both responses."""
    tokenizer = loaded.tokenizer
    report = SkipReport(rows_read=len(pairs), rows_used=len(pairs))
    dataset = encode_pairs(
        pairs, PairEncoder(tokenizer, max_length or loaded.config.max_length, loaded.config.truncation), report
    )
    collator = PairCollator(tokenizer.pad_token_id, share_prompt=loaded.model.check_prompt_sharing())
    device = next(loaded.model.parameters()).device
    arrays = [np.zeros(len(dataset), dtype=np.float32) for _ in range(4)]
    for indices, batch in batches_by_length(dataset, collator, batch_size, device, "scoring pairs", progress):
        rewards, implicit = batch_scores(loaded.model, loaded.objective, batch)
        for array, values in zip(arrays, (*rewards.chunk(2), *implicit.chunk(2))):
            array[indices] = values.numpy()
    return PairScores(*arrays, subsets=[p.get("subset") for p in pairs]), report


def score_responses(
    loaded: TrainedModel,
    prompts: list,
    responses: list[str],
    heads: Sequence[str] = ("reward",),
    max_length: int | None = None,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Each head's score per (prompt, response): the reward head, the implicit reward, or both combined (their sum).
    All from one pass, so implicit and combined together cost the policy's and the reference's log-probs once."""
    for head in heads:
        check_head(head)
        if head != "reward" and not loaded.objective.uses_policy_head:
            raise ValueError(
                f"a {loaded.config.method} model has no trained policy head, so no {head} score; use head 'reward'"
            )
    encoder = PairEncoder(loaded.tokenizer, max_length or loaded.config.max_length, loaded.config.truncation)
    encoded = [encoder.encode_single(as_messages(p, "prompt"), r) for p, r in zip(prompts, responses)]
    scores = {head: np.zeros(len(encoded), dtype=np.float32) for head in heads}
    with_implicit = any(head != "reward" for head in heads)
    for indices in length_sorted_batches([len(e["input_ids"]) for e in encoded], batch_size):
        chunk = [encoded[i] for i in indices]
        batch = pad_sequences(
            [e["input_ids"] for e in chunk], [e["prompt_length"] for e in chunk], loaded.tokenizer.pad_token_id
        )
        rewards, implicit = batch_scores(loaded.model, loaded.objective, batch, with_implicit=with_implicit)
        for head in heads:
            scores[head][indices] = head_scores(rewards, implicit, head).numpy()
    return scores

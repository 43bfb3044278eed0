"""Pairwise metrics of reward models: which pairs each head ranks right, accuracies with 95% intervals, and
paired comparisons of two models on the same pairs (difference with its interval, exact McNemar p).

Heads: the reward head, the implicit DPO reward, and `combined` = reward + implicit reward (both heads are
Bradley-Terry models on their own logit scale, so adding them multiplies the two preference odds).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def pair_correctness(chosen_rewards, rejected_rewards, chosen_implicit, rejected_implicit) -> dict[str, np.ndarray]:
    """Per pair, whether each head ranks chosen above rejected; no implicit or combined head without implicit
    rewards."""
    chosen_rewards, rejected_rewards = np.asarray(chosen_rewards), np.asarray(rejected_rewards)
    chosen_implicit, rejected_implicit = np.asarray(chosen_implicit), np.asarray(rejected_implicit)
    correct = {"reward": chosen_rewards > rejected_rewards}
    if not np.isnan(chosen_implicit).any():
        correct["implicit"] = chosen_implicit > rejected_implicit
        correct["combined"] = (chosen_rewards + chosen_implicit) > (rejected_rewards + rejected_implicit)
    return correct


def accuracy_from_scores(chosen_rewards, rejected_rewards, chosen_implicit, rejected_implicit) -> dict[str, float]:
    correct = pair_correctness(chosen_rewards, rejected_rewards, chosen_implicit, rejected_implicit)
    return {f"{head}_accuracy": float(np.mean(values)) for head, values in correct.items()}


def correctness_from_predictions(predictions) -> dict[str, np.ndarray]:
    """Per-pair correctness from the Trainer's predictions: rows of [r_w, r_l, implicit_w, implicit_l]."""
    scores = np.asarray(predictions, dtype=np.float64)
    return pair_correctness(scores[:, 0], scores[:, 1], scores[:, 2], scores[:, 3])


def pairwise_metrics(prediction) -> dict[str, float]:
    """compute_metrics for the Trainer: the accuracy of each head."""
    return {
        f"{head}_accuracy": float(np.mean(values))
        for head, values in correctness_from_predictions(prediction.predictions).items()
    }


def accuracy_interval(correct) -> tuple[float, float, float]:
    """Accuracy and its 95% Wilson score interval (sound near 0 and 1 and for small n)."""
    correct = np.asarray(correct, dtype=bool)
    n = len(correct)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = correct.mean()
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return float(p), float(centre - half), float(centre + half)


def paired_difference(after, before) -> tuple[float, float, float]:
    """Accuracy of `after` minus accuracy of `before` on the same pairs, with a 95% normal interval of the paired
    difference (per-pair differences are -1, 0 or 1; their standard error accounts for the pairing)."""
    difference = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    n = len(difference)
    mean = float(difference.mean())
    half = Z95 * float(difference.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return mean, mean - half, mean + half


def mcnemar_p(better: int, worse: int) -> float:
    """Exact two-sided McNemar test: with no real difference, each pair the two decide differently goes either way
    at 1/2."""
    discordant = better + worse
    tail = sum(math.comb(discordant, k) for k in range(min(better, worse) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_bootstrap_interval(after, before, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of after - before over pairs with a 95% percentile interval from resampling pairs (both arrays are
    per-pair scores on the same pairs, e.g. correctness or its mean over seeds)."""
    difference = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), size=(resamples, len(difference)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(difference.mean()), float(low), float(high)


def discordant_counts(ours, theirs) -> tuple[int, int]:
    """Pairs we get right that they get wrong, and the other way round."""
    ours, theirs = np.asarray(ours, dtype=bool), np.asarray(theirs, dtype=bool)
    return int((ours & ~theirs).sum()), int((~ours & theirs).sum())


def primary_head(method: str) -> str:
    """The head a method is judged by: dpo trains no reward head, so its implicit reward."""
    return "implicit" if method == "dpo" else "reward"


def primary_metrics(method: str):
    """compute_metrics that also names the accuracy used to pick the best checkpoint."""

    def compute(prediction):
        metrics = pairwise_metrics(prediction)
        metrics["accuracy"] = metrics[f"{primary_head(method)}_accuracy"]
        return metrics

    return compute


def reward_mean_std(predictions: list) -> tuple[float, float, int]:
    """Mean and std (n - 1, at least 1e-8, as OpenRLHF computes them) of the reward head's scores of every chosen and
    rejected response in Trainer predictions (rows of [r_w, r_l, implicit_w, implicit_l]), and how many there were."""
    rewards = np.concatenate([np.asarray(p, dtype=np.float64)[:, :2].reshape(-1) for p in predictions])
    std = float(rewards.std(ddof=1)) if len(rewards) > 1 else 0.0
    return float(rewards.mean()), max(std, 1e-8), len(rewards)

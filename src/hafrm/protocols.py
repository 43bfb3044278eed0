"""The paper's evaluation protocols, each a list of (train set, test sets) experiments.

in-distribution (Table 2): train on a data set, test on its own test split.
mixed (Figure 3):          train on an even mix of the five data sets, test on each.
ood-internal (Table 3):    train on one data set, test on the other data sets of its group.
ood-external (Table 3):    train on one data set, test on RewardBench (per subset and section).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hafrm.config import TrainConfig
from hafrm.data.catalog import CATALOG, PAPER_DATASETS, group_members, load_named, mixed
from hafrm.data.errors import DataError
from hafrm.evaluation import LoadedModel, load_trained, score_pairs, scores_file
from hafrm.rewardbench import section_scores, subset_accuracies
from hafrm.training import train

logger = logging.getLogger(__name__)

PROTOCOLS = ("in-distribution", "mixed", "ood-internal", "ood-external")
METHOD_ORDER = ("baseline", "dpo", "haf")


@dataclass
class Experiment:
    train_set: str  # a catalogue name or "mixed"
    test_sets: list[str]


def experiments(protocol: str, datasets: list[str]) -> list[Experiment]:
    if protocol == "in-distribution":
        return [Experiment(name, [name]) for name in datasets]
    if protocol == "mixed":
        return [Experiment("mixed", list(datasets))]
    if protocol == "ood-internal":
        return [Experiment(name, [name] + group_members(name)) for name in datasets]
    if protocol == "ood-external":
        return [Experiment(name, [name, "reward-bench"]) for name in datasets]
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


@dataclass
class ProtocolSettings:
    data_root: str | None = None  # local copies (the layout of ../shared/data); None = the hub
    train_pairs: int | None = None  # per data set (per member for mixed)
    test_pairs: int | None = None
    overrides: dict = field(default_factory=dict)  # TrainConfig fields shared by every run
    skip_unavailable: bool = False  # leave out test sets that cannot be loaded, instead of stopping


@dataclass
class RunResult:
    method: str
    seed: int
    train_set: str
    test_metrics: dict[str, dict]  # test set -> metrics
    log_history: list[dict]
    output_dir: str


def training_pairs(experiment: Experiment, settings: ProtocolSettings, seed: int) -> list[dict]:
    if experiment.train_set == "mixed":
        per_member = settings.train_pairs or min(len(load_named(n, "train", settings.data_root, seed=seed)[0]) for n in experiment.test_sets)
        return mixed(experiment.test_sets, "train", per_member, settings.data_root, seed)
    return load_named(experiment.train_set, "train", settings.data_root, settings.train_pairs, seed)[0]


def load_test_sets(experiment: Experiment, settings: ProtocolSettings, seed: int) -> dict[str, list[dict]]:
    """Every test set's pairs, loaded before any training so that a missing one stops the run at once
    (or, with skip_unavailable, is left out with a warning)."""
    loaded = {}
    for name in experiment.test_sets:
        try:
            loaded[name] = load_named(name, "test", settings.data_root, settings.test_pairs, seed)[0]
        except DataError as error:
            if not settings.skip_unavailable:
                raise DataError(f"test set {name} is not available ({error}); pass --skip-unavailable to leave it out") from error
            logger.warning("Leaving out test set %s: %s", name, error)
    return loaded


def evaluate_test_set(loaded: LoadedModel, model_dir: Path, name: str, pairs: list[dict]) -> dict:
    """Accuracies on one test set; per-pair scores are kept (`scores_file`) for the statistics and plots."""
    scores, _ = score_pairs(loaded, pairs)
    scores.save(scores_file(model_dir, name))
    metrics = {**scores.metrics(), "pairs": len(pairs)}
    if name == "reward-bench":
        for head, (chosen, rejected) in {"reward": (scores.chosen_rewards, scores.rejected_rewards), "implicit": (scores.chosen_implicit, scores.rejected_implicit)}.items():
            if not np.isnan(chosen).any():
                per_subset = subset_accuracies(chosen > rejected, scores.subsets)
                metrics[f"{head}_subsets"] = per_subset
                metrics[f"{head}_sections"] = section_scores(per_subset)
    return metrics


def run_protocol(protocol: str, datasets: list[str], methods: list[str], seeds: list[int], settings: ProtocolSettings, output_dir: str | Path) -> list[RunResult]:
    """Train every method with every seed on every experiment's training data, then score its test sets."""
    unknown = [d for d in datasets if d not in PAPER_DATASETS]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; the paper's are {PAPER_DATASETS}")
    results = []
    for experiment in experiments(protocol, datasets):
        for seed in seeds:
            pairs = training_pairs(experiment, settings, seed)
            tests = load_test_sets(experiment, settings, seed)
            for method in methods:
                run_dir = Path(output_dir) / "runs" / f"{experiment.train_set}-{method}-seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                data_file = run_dir / "train.jsonl"
                data_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
                # Every run is trained afresh into its own folder, so a report run again replaces its runs in place.
                config = TrainConfig(**{**settings.overrides, "method": method, "seed": seed, "train_data": str(data_file),
                                        "eval_data": None, "eval_fraction": 0.0, "output_dir": str(run_dir / "model"),
                                        "overwrite_output_dir": True})
                logger.info("Training %s on %s (seed %d, %d pairs)", method, experiment.train_set, seed, len(pairs))
                trained = train(config)
                loaded = load_trained(trained.output_dir)  # once per run, with its reference policy
                metrics = {name: evaluate_test_set(loaded, trained.output_dir, name, test_pairs) for name, test_pairs in tests.items()}
                result = RunResult(method, seed, experiment.train_set, metrics, trained.log_history, str(trained.output_dir))
                (run_dir / "result.json").write_text(json.dumps(result.__dict__, indent=2, default=str))
                results.append(result)
    return results


def untested_sets(protocol: str, datasets: list[str], results: list[RunResult]) -> list[str]:
    """Titles of the protocol's test sets that no run was scored on (left out as unavailable)."""
    tested = {name for r in results for name in r.test_metrics}
    wanted = dict.fromkeys(name for e in experiments(protocol, datasets) for name in e.test_sets)
    return [dataset_title(name) for name in wanted if name not in tested]


def dataset_title(name: str) -> str:
    return CATALOG[name].title if name in CATALOG else name

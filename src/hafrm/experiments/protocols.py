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

from hafrm.data.catalog import PAPER_DATASETS, group_members, load_named, mixed
from hafrm.data.errors import DataError
from hafrm.eval.evaluation import score_pairs, scores_file
from hafrm.eval.rewardbench import rewardbench_metrics
from hafrm.experiments.runs import RunResult, dataset_title
from hafrm.training.config import TrainConfig
from hafrm.training.loading import LoadedModel, load_trained
from hafrm.training.pipeline import train

logger = logging.getLogger(__name__)

PROTOCOLS = ("in-distribution", "mixed", "ood-internal", "ood-external")


@dataclass
class Experiment:
    train_set: str  # a catalogue name or "mixed"
    test_sets: list[str]


def experiments(protocol: str, datasets: list[str]) -> list[Experiment]:
    if protocol == "in-distribution":
        return [Experiment(train_set=name, test_sets=[name]) for name in datasets]
    if protocol == "mixed":
        return [Experiment(train_set="mixed", test_sets=list(datasets))]
    if protocol == "ood-internal":
        return [Experiment(train_set=name, test_sets=[name] + group_members(name)) for name in datasets]
    if protocol == "ood-external":
        return [Experiment(train_set=name, test_sets=[name, "reward-bench"]) for name in datasets]
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


@dataclass
class ProtocolSettings:
    data_root: str | None = None  # local copies (the layout of ../shared/data); None = the hub
    train_pairs: int | None = None  # per data set (per member for mixed)
    test_pairs: int | None = None
    overrides: dict = field(default_factory=dict)  # TrainConfig fields shared by every run
    skip_unavailable: bool = False  # leave out test sets that cannot be loaded, instead of stopping


def training_pairs(experiment: Experiment, settings: ProtocolSettings, seed: int) -> list[dict]:
    if experiment.train_set == "mixed":
        per_member = settings.train_pairs or min(
            len(load_named(n, "train", settings.data_root, seed=seed)[0]) for n in experiment.test_sets
        )
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
                raise DataError(
                    f"test set {name} is not available ({error}); pass --skip-unavailable to leave it out"
                ) from error
            logger.warning("Leaving out test set %s: %s", name, error)
    return loaded


def evaluate_test_set(loaded: LoadedModel, model_dir: Path, name: str, pairs: list[dict]) -> dict:
    """Accuracies on one test set; per-pair scores are kept (`scores_file`) for the statistics and plots."""
    scores, _ = score_pairs(loaded, pairs)
    scores.save(scores_file(model_dir, name))
    return {**scores.metrics(), "pairs": len(pairs), **rewardbench_metrics(scores)}


def run_protocol(
    protocol: str,
    datasets: list[str],
    methods: list[str],
    seeds: list[int],
    settings: ProtocolSettings,
    output_dir: str | Path,
) -> list[RunResult]:
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
                # Every run is trained afresh into its own folder, so a report run again replaces its runs in place.
                # report runs keep only the exported model, and log every step so the training curves have points
                training_args = {"save_strategy": "no", **settings.overrides.get("training_args", {})}
                config = TrainConfig(
                    **{
                        **settings.overrides,
                        "method": method,
                        "seed": seed,
                        "train_data": None,
                        "eval_data": None,
                        "eval_fraction": 0.0,
                        "output_dir": str(run_dir / "model"),
                        "overwrite_output_dir": True,
                        "logging_steps": 1,
                        "training_args": training_args,
                    }
                )
                logger.info("Training %s on %s (seed %d, %d pairs)", method, experiment.train_set, seed, len(pairs))
                trained = train(config, train_data=pairs)
                loaded = load_trained(trained.output_dir)  # once per run, with its reference policy
                metrics = {
                    name: evaluate_test_set(loaded, trained.output_dir, name, test_pairs)
                    for name, test_pairs in tests.items()
                }
                result = RunResult(
                    method=method,
                    seed=seed,
                    train_set=experiment.train_set,
                    test_metrics=metrics,
                    log_history=trained.log_history,
                    output_dir=str(trained.output_dir),
                )
                (run_dir / "result.json").write_text(json.dumps(result.__dict__, indent=2, default=str))
                results.append(result)
    return results


def untested_sets(protocol: str, datasets: list[str], results: list[RunResult]) -> list[str]:
    """Titles of the protocol's test sets that no run was scored on (left out as unavailable)."""
    tested = {name for r in results for name in r.test_metrics}
    wanted = dict.fromkeys(name for e in experiments(protocol, datasets) for name in e.test_sets)
    return [dataset_title(name) for name in wanted if name not in tested]


def paper_report(
    protocol: str,
    datasets: list[str],
    methods: list[str],
    seeds: list[int],
    settings: ProtocolSettings,
    output_dir: str | Path,
    command: str,
    merge: list[str | Path] | None = None,
) -> Path:
    """Run a paper protocol (or, with merge, only collect the runs of earlier reports) and write its report."""
    from hafrm.experiments.report import load_results, write_report

    if merge:
        sources = ", ".join(f"`{d}` (its command is in `{d}/report.md`)" for d in merge)
        return write_report(load_results(merge), output_dir, command, f"Runs merged from {sources}.")
    results = run_protocol(protocol, datasets, methods, seeds, settings, output_dir)
    text = (
        f"Protocol `{protocol}` on {', '.join(datasets)} with methods {', '.join(methods)}, "
        f"seeds {', '.join(map(str, seeds))}; "
        f"training pairs per data set: {settings.train_pairs or 'all'}, test pairs: {settings.test_pairs or 'all'}; "
        f"data: {settings.data_root or 'Hugging Face hub'}."
    )
    left_out = untested_sets(protocol, datasets, results)
    if left_out:
        text += f" Not available, so not tested: {', '.join(left_out)}."
    return write_report(results, output_dir, command, text)

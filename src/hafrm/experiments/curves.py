"""The claim where the heads have room to separate: learning curves of baseline, haf and dpo over seeds, and the
policy-ratio (alpha) sweep, on prompt-disjoint splits (`hafrm report --protocol learning-curve | alpha-sweep`).

Every run trains to the last of `steps` and is evaluated at each of them on every test set, keeping the per-pair
scores (`<run>/model/eval-scores/step-<N>-<test set>.npz`), so every statistic can be recomputed and runs made on
other machines or days merge into one report. A run that finished is not run again; one that was cut off resumes
from its last checkpoint (written at every evaluation step, and every `--save-steps` steps between them).

Data (test pairs share no question with training pairs; the split seed is fixed, so every method and seed is tested
on the same pairs):
  beaver-safe  the 5,135-pair PKU-SafeRLHF safe-vs-unsafe file, split by prompt into about 4,100 train / 1,000+ test
  hh-harmless, hh-helpful  the test split split by first human turn (1,000+ test); the rest of it plus the 500-pair
               train sample, less any pair whose question is in the test part, for training
Each run is also tested on the other sets' test parts (out of distribution) and on the local RewardBench rows.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hafrm.data.catalog import load_named
from hafrm.data.splits import split_by_prompt, without_prompts_of
from hafrm.experiments.runs import DONE_FILE, SCORES_IN_ORDER, chosen_longer, run_folders
from hafrm.training.config import TrainConfig

logger = logging.getLogger(__name__)

CLAIM_SETS = ("beaver-safe", "hh-harmless", "hh-helpful")
CURVE_STEPS = (16, 32, 64, 128, 256)
VALIDATION = "validation"
SPLIT_SEED = 0  # one split for every method and seed: their test pairs are the same


def claim_split(name: str, data_root: str, test_pairs: int = 1000) -> tuple[list[dict], list[dict]]:
    """(train, test) of a claim data set, disjoint by question (see the module docstring)."""
    if name == "beaver-safe":
        pool, _ = load_named(name, "test", data_root)
        return split_by_prompt(pool, test_pairs, SPLIT_SEED)
    if name in ("hh-harmless", "hh-helpful"):
        rest, test = split_by_prompt(load_named(name, "test", data_root)[0], test_pairs, SPLIT_SEED)
        sample, _ = load_named(name, "train", data_root)
        return without_prompts_of(sample + rest, test), test
    raise ValueError(f"learning curves run on {', '.join(CLAIM_SETS)}, not {name!r}")


@dataclass
class CurveSettings:
    data_root: str
    steps: tuple[int, ...] = CURVE_STEPS
    test_pairs: int = 1000
    overrides: dict = field(default_factory=dict)  # TrainConfig fields shared by every run (freeze_layers, ...)
    ood: bool = True  # also test on the other claim sets and the local RewardBench rows
    validation_pairs: int = 0  # held out of the training part by prompt, evaluated with the tests as "validation"


@dataclass(frozen=True)
class CurveRun:
    train_set: str
    method: str
    seed: int
    alpha: float

    @property
    def name(self) -> str:
        return f"{self.train_set}-{self.method}-alpha{self.alpha:g}-seed{self.seed}"


def evaluation_sets(train_set: str, settings: CurveSettings, split) -> dict[str, list[dict]]:
    """The run's own test part first, then (ood) the other claim sets' test parts and RewardBench's local rows.
    split(name) gives a claim set's (train, test)."""
    tests = {train_set: split(train_set)[1]}
    if settings.ood:
        for other in CLAIM_SETS:
            if other != train_set:
                tests[other] = split(other)[1]
        tests["reward-bench"] = load_named("reward-bench", "test", settings.data_root)[0]
    return tests


def training_and_evaluation_sets(train_set: str, settings: CurveSettings, split) -> tuple[list[dict], dict]:
    """A run's training pairs and its evaluation sets; with validation_pairs, that many pairs (whole prompts) of
    the training part are held out as the "validation" set, for choosing a checkpoint without the test pairs;
    with max_eval_pairs, each evaluation set is its first that many pairs."""
    pairs, tests = split(train_set)[0], evaluation_sets(train_set, settings, split)
    if settings.validation_pairs:
        pairs, tests[VALIDATION] = split_by_prompt(pairs, settings.validation_pairs, SPLIT_SEED)
    cap = settings.overrides.get("max_eval_pairs")  # the first pairs of each set, for every record of the run
    return pairs, {name: test[:cap] for name, test in tests.items()}


def run_curves(runs: list[CurveRun], settings: CurveSettings, output_dir: str | Path) -> list[Path]:
    """Train and evaluate every run not finished yet; returns the run folders (finished ones included)."""
    from hafrm.training.pipeline import RunClock, train

    folders = []
    split = functools.cache(lambda name: claim_split(name, settings.data_root, settings.test_pairs))  # each set once
    data: dict[str, tuple[list[dict], dict[str, list[dict]]]] = {}
    for run in runs:
        folder = Path(output_dir) / "runs" / run.name
        folders.append(folder)
        if (folder / DONE_FILE).exists():
            logger.info("%s finished earlier; kept", run.name)
            continue
        if run.train_set not in data:
            data[run.train_set] = training_and_evaluation_sets(run.train_set, settings, split)
        pairs, tests = data[run.train_set]
        model_dir = folder / "model"
        config = TrainConfig(
            **{
                **settings.overrides,
                "method": run.method,
                "alpha": run.alpha,
                "seed": run.seed,
                "eval_fraction": 0.0,
                "max_steps": max(settings.steps),
                "eval_at_steps": list(settings.steps),
                "keep_eval_scores": True,
                "output_dir": str(model_dir),
                "resume_from_checkpoint": "auto" if model_dir.exists() else None,
            }
        )
        logger.info("Training %s (%d pairs; %d test sets)", run.name, len(pairs), len(tests))
        clock = RunClock()
        train(config, [clock], train_data=pairs, eval_data=tests)
        (folder / DONE_FILE).write_text(
            json.dumps(
                {
                    "run": run.__dict__,
                    "train_pairs": len(pairs),
                    "test_pairs": {k: len(v) for k, v in tests.items()},
                    "wall_s": clock.elapsed(),
                    "config": config.to_dict(),
                    **SCORES_IN_ORDER,
                },
                indent=2,
                default=str,
            )
        )
        chosen_longer(tests, folder)
    return folders


# ---------------------------------------------------------------------------------------- the protocol as a command

PROTOCOLS = ("learning-curve", "alpha-sweep")
SWEEP_ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def planned_runs(
    protocol: str, datasets: list[str], methods: list[str], seeds: list[int], alphas: list[float], alpha: float
) -> list[CurveRun]:
    """learning-curve: every method and seed on every data set (haf at `alpha`); alpha-sweep: haf at every alpha."""
    if protocol == "learning-curve":
        return [CurveRun(d, m, s, alpha if m == "haf" else 0.0) for d in datasets for s in seeds for m in methods]
    if protocol == "alpha-sweep":
        return [CurveRun(d, "haf" if a > 0 else "baseline", s, a) for d in datasets for s in seeds for a in alphas]
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def claim_report(
    protocol: str,
    datasets: list[str],
    methods: list[str],
    seeds: list[int],
    settings: CurveSettings,
    output_dir: str | Path,
    command: str,
    alphas: list[float] | None = None,
    merge: list[str | Path] | None = None,
) -> Path:
    """Run (or, with merge, only collect) the runs of a claim protocol and write its report; returns report.md."""
    from hafrm.experiments.report import CurveResult, write_curve_report

    if merge:
        folders = run_folders(merge)
        text = (
            "Runs merged from "
            + ", ".join(f"`{d}`" for d in merge)
            + " (each run's settings are in its runs/<name>/done.json)."
        )
    else:
        alpha = float(settings.overrides.get("alpha", 0.2))
        folders = run_curves(
            planned_runs(protocol, datasets, methods, seeds, list(alphas or SWEEP_ALPHAS), alpha), settings, output_dir
        )
        shared = {
            k: v
            for k, v in settings.overrides.items()
            if k in ("freeze_layers", "learning_rate", "batch_size", "max_length", "model", "tau")
        }
        text = (
            f"Protocol `{protocol}` on {', '.join(datasets)}; seeds {', '.join(map(str, seeds))}; evaluated at steps "
            f"{', '.join(map(str, settings.steps))}; {settings.test_pairs}+ test pairs per set, "
            f"disjoint by question from training "
            f"(split seed {SPLIT_SEED}); data: {settings.data_root}; shared settings: {shared or 'the defaults'}."
        )
    return write_curve_report([CurveResult.load(f) for f in folders], output_dir, command, text)

"""What a finished run leaves for the reports: its record (done.json, RunResult), its per-pair scores at every
evaluated step, and the per-pair length split. The runners (protocols, curves) write these; report and selection
read them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hafrm.data.catalog import CATALOG
from hafrm.eval.evaluation import PairScores

DONE_FILE = "done.json"
# Per-pair eval scores kept before this marker was written into done.json are in the order the Trainer's
# length-grouped, seed-dependent sampler took the pairs, not the test set's: scripts/reorder_eval_scores.py puts
# them back and writes it.
SCORES_IN_ORDER = {"eval_scores_order": "test set"}


def chosen_longer(tests: dict[str, list[dict]], folder: Path) -> None:
    """For the length split: per test pair, whether the chosen response is longer (in characters) than the rejected."""
    import numpy as np

    np.savez(
        folder / "lengths.npz",
        **{name: np.array([len(p["chosen"]) > len(p["rejected"]) for p in pairs]) for name, pairs in tests.items()},
    )


def step_scores(folder: Path) -> dict[tuple[int, str], PairScores]:
    """(step, test set) -> per-pair scores of one run."""
    scores = {}
    for path in sorted((folder / "model" / "eval-scores").glob("step-*.npz")):
        step, _, test_set = path.stem.removeprefix("step-").partition("-")
        scores[(int(step), test_set)] = PairScores.load(path)
    return scores


def run_folders(report_dirs: list[str | Path]) -> list[Path]:
    """Finished runs of earlier reports (for --merge): every runs/<name> with a done.json."""
    return sorted(p.parent for d in report_dirs for p in Path(d).glob(f"runs/*/{DONE_FILE}"))


def run_record(folder: Path) -> dict:
    """A finished run's done.json; refused when its per-pair scores may not be in their test sets' order."""
    record = json.loads((folder / DONE_FILE).read_text())
    if record.get("config", {}).get("group_by_length", True) and not SCORES_IN_ORDER.items() <= record.items():
        raise ValueError(
            f"{folder}: its per-pair scores were kept before hafrm put them back in their test set's order; they "
            "follow a seed-dependent, length-grouped sampler's order, so they cannot be paired with other seeds' "
            f"runs or with the test pairs: run `python scripts/reorder_eval_scores.py --data-root DATA {folder}` first"
        )
    return record


@dataclass
class RunResult:
    method: str
    seed: int
    train_set: str
    test_metrics: dict[str, dict]  # test set -> metrics
    log_history: list[dict]
    output_dir: str


def dataset_title(name: str) -> str:
    return CATALOG[name].title if name in CATALOG else name

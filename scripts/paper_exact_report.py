"""Tables of issue 38's experiment from its run folders (scripts/paper_exact_runs.sh): each run's accuracy at every
step on the test pairs and the validation set, the checkpoint each selection picks, and the paired differences
(bootstrap 95% interval, exact McNemar) under each selection. Arms that have not run yet are left out.

  python scripts/paper_exact_report.py OUTPUT_DIR [CLAIM_RUNS] > report.md

CLAIM_RUNS (e.g. docs/report/claim-beaver-safe): arm (a) from the claim runs' seed 0 instead, at the same steps and
on the same first test pairs (they trained on all 4,133 training pairs, with no validation set held out).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hafrm.experiments.selection import RunCheckpoints, accuracy_table, comparison_table

TEST_SET = "beaver-safe"
ARMS = {
    "a-defaults": "(a) defaults",
    "b-exact-our-readout": "(b) paper-exact, our readout",
    "c-exact-their-readout": "(c) paper-exact, their readout",
}
RUN_NAMES = {
    "baseline": "beaver-safe-baseline-alpha0-seed0",
    "haf": "beaver-safe-haf-alpha0.2-seed0",
    "dpo": "beaver-safe-dpo-alpha0-seed0",
}


def finished_runs(output_dir: Path, claim_runs: Path | None) -> dict[tuple[str, str], RunCheckpoints]:
    runs = {}
    for arm in ARMS:
        for method, name in RUN_NAMES.items():
            folder = output_dir / arm / "runs" / name
            if (folder / "done.json").exists():
                runs[(arm, method)] = RunCheckpoints.load(folder, TEST_SET)
    if claim_runs is not None and runs:
        reference = next(iter(runs.values()))
        steps, pairs = set(reference.test), len(next(iter(reference.test.values())))
        for method, name in RUN_NAMES.items():
            if (claim_runs / "runs" / name / "done.json").exists():
                runs[("a-defaults", method)] = RunCheckpoints.load(claim_runs / "runs" / name, TEST_SET, steps, pairs)
    return runs


def main(output_dir: Path, claim_runs: Path | None = None) -> None:
    runs = finished_runs(output_dir, claim_runs)
    labelled = {f"{ARMS[arm]} {method}": run for (arm, method), run in runs.items()}
    comparisons = []
    for arm, title in ARMS.items():
        for method in ("haf", "dpo"):
            if (arm, method) in runs and (arm, "baseline") in runs:
                comparisons.append((f"{title}: {method} - baseline", runs[(arm, method)], runs[(arm, "baseline")]))
    for method in RUN_NAMES:
        for ours, theirs, what in (
            ("c-exact-their-readout", "b-exact-our-readout", "their readout - ours"),
            ("b-exact-our-readout", "a-defaults", "paper-exact - defaults"),
        ):
            if (ours, method) in runs and (theirs, method) in runs:
                comparisons.append((f"{method}: {what}", runs[(ours, method)], runs[(theirs, method)]))
    print("## Accuracy (%) of each run's own head\n")
    print("\n".join(accuracy_table(labelled)))
    print("\n## Paired differences on the same test pairs\n")
    print("\n".join(comparison_table(comparisons)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)

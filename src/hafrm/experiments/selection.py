"""Which checkpoint a run reports, and whether a difference between runs survives the choice (issue 38's report).

A learning-curve run with `--validation-pairs` is evaluated at every step on its test pairs and on a validation
set held out of its training part. Its checkpoint can then be chosen three ways:
  final       the last step, chosen by nothing;
  validation  the step with the best validation accuracy (what hafrm's paper-exact protocol reports);
  test        the step with the best accuracy on the test pairs themselves, as the paper's code did (its
              "validation" set was the evaluation split), which flatters every run by the maximum of noisy values.
Accuracy is the method's own head: the reward head for baseline and haf, the implicit reward for dpo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hafrm.eval.metrics import discordant_counts, mcnemar_p, paired_bootstrap_interval, primary_head
from hafrm.experiments.curves import VALIDATION
from hafrm.experiments.runs import run_record, step_scores

SELECTIONS = ("final", "validation", "test")


@dataclass
class RunCheckpoints:
    """One run's per-pair correctness at every evaluated step, on its test set and on the validation set."""

    name: str
    method: str
    test: dict[int, np.ndarray]
    validation: dict[int, np.ndarray]

    @classmethod
    def load(
        cls, folder: Path, test_set: str, steps: set[int] | None = None, first_pairs: int | None = None
    ) -> RunCheckpoints:
        """A run's checkpoints (those at `steps` only, if given), each set cut to its `first_pairs` (to pair an
        earlier run tested on more pairs of the same set with runs tested on its first ones)."""
        method = run_record(folder)["run"]["method"]
        head = primary_head(method)
        by_set: dict[str, dict[int, np.ndarray]] = {test_set: {}, VALIDATION: {}}
        for (step, name), scores in step_scores(folder).items():
            if name in by_set and (steps is None or step in steps):
                by_set[name][step] = scores.correctness()[head][:first_pairs]
        return cls(folder.name, method, by_set[test_set], by_set[VALIDATION])

    def step(self, selection: str) -> int:
        """The step a selection picks; ties go to the earliest step."""
        if selection == "final":
            return max(self.test)
        if selection == "validation" and not self.validation:
            raise ValueError(f"{self.name} has no validation set to choose a checkpoint on")
        accuracies = self.validation if selection == "validation" else self.test
        steps = sorted(set(accuracies) & set(self.test))  # a step is chosen only where its test scores exist
        return max(steps, key=lambda step: accuracies[step].mean())

    def correct(self, selection: str) -> np.ndarray:
        return self.test[self.step(selection)]


def difference_row(label: str, ours: np.ndarray, theirs: np.ndarray) -> str:
    """A Markdown row: ours - theirs in points with its paired bootstrap 95% interval, and the exact McNemar p."""
    mean, low, high = paired_bootstrap_interval(ours, theirs)
    better, worse = discordant_counts(ours, theirs)
    interval = f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"| {label} | {interval} | {better} / {worse} | {mcnemar_p(better, worse):.3g} |"


def accuracy_table(runs: dict[str, RunCheckpoints]) -> list[str]:
    """Per run: test and validation accuracy at every step, the step each selection picks and its test accuracy."""
    steps = sorted({step for run in runs.values() for step in run.test})
    lines = [
        "| run | head | "
        + " | ".join(f"test @{s}" for s in steps)
        + " | "
        + " | ".join(f"validation @{s}" for s in steps)
        + " | chosen on validation | chosen on test |",
        "|---|---|" + "---|" * (2 * len(steps) + 2),
    ]
    for label, run in runs.items():
        cells = [f"{100 * run.test[s].mean():.1f}" if s in run.test else "" for s in steps]
        cells += [f"{100 * run.validation[s].mean():.1f}" if s in run.validation else "" for s in steps]
        for selection in ("validation", "test"):
            if selection == "validation" and not run.validation:
                cells.append("no validation set")
                continue
            cells.append(f"{100 * run.correct(selection).mean():.1f} (step {run.step(selection)})")
        lines.append(f"| {label} | {primary_head(run.method)} | " + " | ".join(cells) + " |")
    return lines


def comparison_table(comparisons: list[tuple[str, RunCheckpoints, RunCheckpoints]]) -> list[str]:
    """ours - theirs on the same test pairs, under each checkpoint selection."""
    lines = [
        "| comparison (checkpoint chosen by) | difference, points [95% CI] | pairs only ours / only theirs right "
        "| McNemar p |",
        "|---|---|---|---|",
    ]
    for label, ours, theirs in comparisons:
        for selection in SELECTIONS:
            if selection == "validation" and not (ours.validation and theirs.validation):
                continue
            lines.append(difference_row(f"{label} ({selection})", ours.correct(selection), theirs.correct(selection)))
    return lines

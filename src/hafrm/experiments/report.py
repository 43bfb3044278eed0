"""`hafrm report`: run a protocol for baseline, dpo and haf over seeds; write a Markdown table and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hafrm.eval.evaluation import PairScores, scores_file
from hafrm.eval.metrics import accuracy_interval, discordant_counts, mcnemar_p, paired_bootstrap_interval
from hafrm.experiments.runs import RunResult, dataset_title
from hafrm.model.losses import METHODS, HafObjective

HEADS = (("reward_accuracy", "reward head"), ("implicit_accuracy", "implicit (DPO)"), ("combined_accuracy", "combined"))


def mean_spread(values: list[float]) -> str:
    """'mean ± sample std' in percent, or just the mean for one seed."""
    if not values:
        return "–"
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def accuracy_table(results: list[RunResult]) -> str:
    """One row per (training set, method, head), one column per test set, like the paper's Table 2."""
    test_sets = list(dict.fromkeys(name for r in results for name in r.test_metrics))
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        for test_set, metrics in r.test_metrics.items():
            for key, _ in HEADS:
                if key in metrics:
                    cells[(r.train_set, r.method, key, test_set)].append(metrics[key])
    lines = [
        "| trained on | method | head | " + " | ".join(dataset_title(t) for t in test_sets) + " |",
        "|---|---|---|" + "---|" * len(test_sets),
    ]
    train_sets = list(dict.fromkeys(r.train_set for r in results))
    methods = [m for m in METHODS if any(r.method == m for r in results)]
    for train_set in train_sets:
        for method in methods:
            for key, head in HEADS:
                row = [cells.get((train_set, method, key, t), []) for t in test_sets]
                if any(row):
                    lines.append(
                        f"| {dataset_title(train_set)} | {method} | {head} | "
                        + " | ".join(mean_spread(v) for v in row)
                        + " |"
                    )
    return "\n".join(lines)


def rewardbench_table(results: list[RunResult]) -> str:
    """Per-section RewardBench accuracies (RewardBench weighting) for each method and head."""
    rows = defaultdict(lambda: defaultdict(list))
    for r in results:
        metrics = r.test_metrics.get("reward-bench")
        for head in ("reward", "implicit"):
            for section, value in (metrics or {}).get(f"{head}_sections", {}).items():
                rows[(r.train_set, r.method, head)][section].append(value)
    if not rows:
        return ""
    sections = list(dict.fromkeys(s for row in rows.values() for s in row))
    lines = ["| trained on | method | head | " + " | ".join(sections) + " |", "|---|---|---|" + "---|" * len(sections)]
    for (train_set, method, head), values in rows.items():
        lines.append(
            f"| {dataset_title(train_set)} | {method} | {head} | "
            + " | ".join(mean_spread(values[s]) for s in sections)
            + " |"
        )
    return "\n".join(lines)


def per_pair_correctness(result: RunResult, test_set: str) -> dict[str, np.ndarray] | None:
    """Each head's right/wrong per test pair, from the scores the run kept; None when they are not on this machine."""
    path = scores_file(result.output_dir, test_set)
    return PairScores.load(path).correctness() if path.exists() else None


def paired_table(results: list[RunResult]) -> str:
    """Every other method's heads against the baseline reward head of the same seed, on the same test pairs: the pairs
    one gets right and the other wrong, and the exact McNemar p-value (seeds apart, since each seed is its own
    pairing)."""
    baselines = {(r.train_set, r.seed): r for r in results if r.method == "baseline"}
    lines = [
        "| trained on | seed | test set | method | head | pairs | better | worse | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        baseline = baselines.get((r.train_set, r.seed))
        if baseline is None or r is baseline:
            continue
        for test_set in r.test_metrics:
            ours, theirs = per_pair_correctness(r, test_set), per_pair_correctness(baseline, test_set)
            if ours is None or theirs is None:
                continue
            for head, correct in ours.items():
                better, worse = discordant_counts(correct, theirs["reward"])
                lines.append(
                    f"| {dataset_title(r.train_set)} | {r.seed} | {dataset_title(test_set)} | {r.method} | {head} | "
                    f"{len(correct)} | "
                    f"{better} | {worse} | {mcnemar_p(better, worse):.2g} |"
                )
    return "\n".join(lines) if len(lines) > 2 else ""


def plot_training_curves(results: list[RunResult], path: Path) -> bool:
    """Loss curves from the runs' logs; False (and no file) when no run logged a training step."""
    if not any("loss" in e for r in results for e in r.log_history):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [e["step"] for e in r.log_history if "loss" in e]
        label = f"{r.method} seed {r.seed} ({dataset_title(r.train_set)})"
        for axis, key in zip(axes, ("reward_loss", "policy_loss")):
            values = [e.get(key) for e in r.log_history if "loss" in e]
            if any(v is not None for v in values):
                axis.plot(steps, values, label=label)
    for axis, title in zip(axes, ("Bradley-Terry reward loss", "DPO policy loss")):
        axis.set_title(title)
        axis.set_xlabel("optimisation step")
        if axis.lines:
            axis.legend(fontsize=7)
        else:  # e.g. baseline runs alone have no policy loss
            axis.text(0.5, 0.5, "no run trained this loss", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_scores(results: list[RunResult], path_distributions: Path, path_scatter: Path) -> None:
    """Reward distributions of chosen vs rejected per method, and reward head vs implicit reward for haf (Figure 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {}
    for r in results:
        first.setdefault(r.method, r)
    figure, axes = plt.subplots(1, len(first), figsize=(4.5 * len(first), 3.6), squeeze=False)
    for axis, (method, r) in zip(axes[0], first.items()):
        test_set = next(iter(r.test_metrics))
        scores = PairScores.load(scores_file(r.output_dir, test_set))
        key = "implicit" if method == "dpo" else "rewards"
        chosen = scores.chosen_implicit if key == "implicit" else scores.chosen_rewards
        rejected = scores.rejected_implicit if key == "implicit" else scores.rejected_rewards
        bins = np.linspace(min(chosen.min(), rejected.min()), max(chosen.max(), rejected.max()), 30)
        axis.hist(chosen, bins=bins, alpha=0.6, label="chosen")
        axis.hist(rejected, bins=bins, alpha=0.6, label="rejected")
        axis.set_title(
            f"{method}: {'implicit reward' if key == 'implicit' else 'reward head'} on {dataset_title(test_set)}",
            fontsize=9,
        )
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path_distributions, dpi=110)
    plt.close(figure)
    if "haf" in first:
        r = first["haf"]
        test_set = next(iter(r.test_metrics))
        plot_margin_scatter(
            PairScores.load(scores_file(r.output_dir, test_set)), f"haf on {dataset_title(test_set)}", path_scatter
        )


def plot_margin_scatter(scores: PairScores, title: str, path: Path) -> None:
    """Each test pair's reward-head margin against its implicit-reward margin (paper Figure 7): how far the two
    heads of one haf model agree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reward = scores.chosen_rewards - scores.rejected_rewards
    implicit = scores.chosen_implicit - scores.rejected_implicit
    figure, axis = plt.subplots(figsize=(5, 4.2))
    axis.scatter(reward, implicit, s=8, alpha=0.6)
    axis.axhline(0, color="grey", lw=0.8)
    axis.axvline(0, color="grey", lw=0.8)
    axis.set_xlabel("reward-head margin r(y_w) - r(y_l)")
    axis.set_ylabel("implicit-reward margin")
    agree = float(np.mean(np.sign(reward) == np.sign(implicit)))
    axis.set_title(f"{title}\nreward head vs policy head: same sign on {100 * agree:.0f}% of pairs", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def load_results(report_dirs: list[str | Path]) -> list[RunResult]:
    """The runs recorded in the results.json of earlier reports; their models and scores stay where they are."""
    results = []
    for directory in report_dirs:
        path = Path(directory) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory} has no results.json: not a hafrm report folder")
        results += [RunResult(**run) for run in json.loads(path.read_text())]
    return results


def write_report(results: list[RunResult], output_dir: str | Path, command: str, settings_text: str) -> Path:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    has_curves = plot_training_curves(results, output_dir / "training_curves.png")
    plot_scores(results, output_dir / "reward_distributions.png", output_dir / "reward_vs_implicit.png")
    sections = [
        "# hafrm report",
        "",
        f"Command: `{command}`",
        "",
        settings_text,
        "",
        "## Pairwise accuracy (%), mean ± std over seeds",
        "",
        accuracy_table(results),
    ]
    rewardbench = rewardbench_table(results)
    if rewardbench:
        sections += ["", "## RewardBench sections (%), RewardBench weighting over the subsets present", "", rewardbench]
    paired = paired_table(results)
    if paired:
        sections += ["", "## Against the baseline's reward head, pair by pair", "", paired]
    if has_curves:
        sections += ["", "![training curves](training_curves.png)"]
    sections += ["", "![reward distributions](reward_distributions.png)"]
    if (output_dir / "reward_vs_implicit.png").exists():
        sections += ["", "![reward head vs implicit reward](reward_vs_implicit.png)"]
    path = output_dir / "report.md"
    path.write_text("\n".join(sections) + "\n")
    (output_dir / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    return path


# ------------------------------------------------------------------------------ learning curves and the alpha sweep


@dataclass
class CurveResult:
    """One run of the claim protocols: what it was and its per-pair scores at every evaluated step."""

    train_set: str
    method: str
    seed: int
    alpha: float
    scores: dict  # (step, test set) -> PairScores
    chosen_longer: dict  # test set -> per-pair bool
    wall_s: float

    @property
    def label(self) -> str:
        return f"haf (alpha {self.alpha:g})" if self.method == "haf" else self.method

    @classmethod
    def load(cls, folder: Path) -> CurveResult:
        from hafrm.experiments.runs import run_record, step_scores

        record = run_record(folder)
        run = record["run"]
        with np.load(folder / "lengths.npz") as lengths:
            longer = {name: lengths[name] for name in lengths.files}
        return cls(
            run["train_set"], run["method"], run["seed"], run["alpha"], step_scores(folder), longer, record["wall_s"]
        )


CURVE_HEADS = {"baseline": ("reward",), "dpo": ("implicit",), "haf": ("reward", "implicit", "combined")}


def _seed_correctness(runs: list[CurveResult], step: int, test_set: str, head: str) -> np.ndarray:
    """(seeds, pairs) right/wrong of one head at one step."""
    return np.array([r.scores[(step, test_set)].correctness()[head] for r in runs if (step, test_set) in r.scores])


def run_order(run: CurveResult) -> tuple:
    """Tables list baseline, dpo, haf (by alpha), each by seed."""
    return METHODS.index(run.method), run.alpha, run.seed


def evaluated_steps(runs: list[CurveResult], test_set: str) -> list[int]:
    """Every step at which any of the runs was evaluated on test_set."""
    return sorted({step for r in runs for step, name in r.scores if name == test_set})


def against_baseline(runs: list[CurveResult], label: str, head: str, step: int, test_set: str) -> tuple[str, str]:
    """One head of one method against the baseline's reward head on the same pairs at one step: the accuracy
    difference with a paired bootstrap 95% interval (pairs resampled, each pair's correctness averaged over the seeds
    both have) and the exact McNemar p of each seed; dashes where they share no seed."""
    ours_by_seed = {r.seed: r for r in runs if r.label == label and (step, test_set) in r.scores}
    base_by_seed = {r.seed: r for r in runs if r.method == "baseline" and (step, test_set) in r.scores}
    seeds = sorted(set(ours_by_seed) & set(base_by_seed))
    if not seeds:
        return "–", "–"
    ours = _seed_correctness([ours_by_seed[s] for s in seeds], step, test_set, head)
    theirs = _seed_correctness([base_by_seed[s] for s in seeds], step, test_set, "reward")
    mean, low, high = paired_bootstrap_interval(ours.mean(axis=0), theirs.mean(axis=0))
    p_values = ", ".join(f"{mcnemar_p(*discordant_counts(o, t)):.2g}" for o, t in zip(ours, theirs))
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]", p_values


def label_heads(runs: list[CurveResult]) -> list[tuple[str, str]]:
    """Every (method label, head) of these runs in table order: baseline, dpo, haf by alpha, each with its heads."""
    labels = dict.fromkeys(r.label for r in sorted(runs, key=run_order))
    return [(label, head) for label in labels for head in CURVE_HEADS[next(r.method for r in runs if r.label == label)]]


def compared_heads(runs: list[CurveResult]) -> list[tuple[str, str]]:
    """The (method label, head) pairs compared with the baseline's reward head: every one but the baseline's."""
    return [(label, head) for label, head in label_heads(runs) if label != "baseline"]


def curve_table(results: list[CurveResult], train_set: str, test_set: str) -> str:
    """Accuracy at every step for each method's heads (mean ± std over seeds), and haf's reward head against the
    baseline's on the same pairs (`against_baseline`)."""
    runs = [r for r in results if r.train_set == train_set]
    steps = evaluated_steps(runs, test_set)
    columns = label_heads(runs)
    haf_labels = [label for label in dict.fromkeys(label for label, _ in columns) if label.startswith("haf")]
    header = [
        "step",
        *(f"{label} {head}" for label, head in columns),
        *(f"{label} − baseline, reward head [95% CI] | McNemar p by seed" for label in haf_labels),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) + len(haf_labels))]
    for step in steps:
        cells = []
        for label, head in columns:
            correct = _seed_correctness([r for r in runs if r.label == label], step, test_set, head)
            cells.append(mean_spread(list(correct.mean(axis=1))) if len(correct) else "–")
        for label in haf_labels:
            cells += against_baseline(runs, label, "reward", step, test_set)
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def against_baseline_table(results: list[CurveResult], train_set: str, test_set: str) -> str:
    """Every head other than the baseline's reward head (haf's three, dpo's implicit reward) against it, step by
    step (`against_baseline`): is the hybrid's, or DPO's, score a better reward model than the BT-only one?"""
    runs = [r for r in results if r.train_set == train_set]
    steps = evaluated_steps(runs, test_set)
    lines = [
        "| method | head | " + " | ".join(f"{step}: points [95% CI] | McNemar p" for step in steps) + " |",
        "|---|---|" + "---|---|" * len(steps),
    ]
    for label, head in compared_heads(runs):
        cells = [cell for step in steps for cell in against_baseline(runs, label, head, step, test_set)]
        lines.append(f"| {label} | {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(results: list[CurveResult], train_set: str, test_set: str) -> str:
    """Every run's own accuracy (%) at every step, one row per run and head, with the run's wall time: the seeds
    behind the means of curve_table."""
    runs = sorted((r for r in results if r.train_set == train_set), key=run_order)
    steps = evaluated_steps(runs, test_set)
    lines = [
        "| run | head | " + " | ".join(map(str, steps)) + " | wall time (min) |",
        "|---|---|" + "---|" * (len(steps) + 1),
    ]
    for r in runs:
        for head in CURVE_HEADS[r.method]:
            cells = [
                f"{100 * r.scores[(step, test_set)].correctness()[head].mean():.1f}"
                if (step, test_set) in r.scores
                else "–"
                for step in steps
            ]
            lines.append(f"| {r.label} seed {r.seed} | {head} | " + " | ".join(cells) + f" | {r.wall_s / 60:.0f} |")
    return "\n".join(lines)


LENGTH_TABLE_NOTE = (
    "Accuracy on the pairs whose chosen response is the longer, and on the others (pairs in brackets), and how often "
    "the head prefers the shorter response, whichever was chosen (equal lengths count as the chosen being the "
    "shorter); mean over seeds. A head that ignored length would prefer the shorter a x s + (1 - a) x (1 - s) of the "
    "time, a its accuracy and s the share of pairs whose chosen response is the shorter or equal; more is a lean to "
    "short answers."
)


def length_table(results: list[CurveResult], train_set: str) -> str:
    """At the last step: each head's accuracy on pairs whose chosen response is longer than the rejected one and on
    the others, and how often it prefers the shorter response (LENGTH_TABLE_NOTE says how to read it)."""
    runs = [r for r in results if r.train_set == train_set]
    lines = [
        "| test set | method | head | chosen longer | chosen shorter or equal | prefers the shorter |",
        "|---|---|---|---|---|---|",
    ]
    for test_set in dict.fromkeys(name for r in runs for _, name in r.scores):
        for label, head in label_heads(runs):
            group = [r for r in runs if r.label == label]
            last = max(step for step, name in group[0].scores if name == test_set)
            longer = group[0].chosen_longer[test_set]
            correct = _seed_correctness(group, last, test_set, head)
            prefers_shorter = np.where(longer, ~correct, correct)
            lines.append(
                f"| {dataset_title(test_set)} | {label} | {head} | {_share_cell(correct[:, longer])} | "
                f"{_share_cell(correct[:, ~longer])} | {100 * prefers_shorter.mean():.1f} |"
            )
    return "\n".join(lines)


def _share_cell(correct: np.ndarray) -> str:
    """Accuracy (%) over (seeds, pairs) with the number of pairs in brackets; '–' where no pair falls in the group
    (all 40 local RewardBench pairs have the longer answer chosen)."""
    return f"{100 * correct.mean():.1f} ({correct.shape[1]})" if correct.size else f"– ({correct.shape[1]})"


def alpha_points(results: list[CurveResult], train_set: str) -> list[tuple[float, list, list, list]]:
    """The alpha sweep at the last step on the run's own test set, per alpha: each seed's reward-head accuracy, mean
    reward margin r(y_w) - r(y_l) and implicit-reward accuracy (none for alpha 0, whose policy head is untrained).
    dpo runs (alpha 0 too, but no trained reward head) are not part of the sweep."""
    runs = sorted((r for r in results if r.train_set == train_set and r.method != "dpo"), key=lambda r: r.alpha)
    points = []
    for alpha in dict.fromkeys(r.alpha for r in runs):
        group = [r for r in runs if r.alpha == alpha]
        last = max(step for step, name in group[0].scores if name == train_set)
        scores = [r.scores[(last, train_set)] for r in group]
        accuracy = [float(np.mean(s.correctness()["reward"])) for s in scores]
        margin = [float(np.mean(s.chosen_rewards - s.rejected_rewards)) for s in scores]
        implicit = [float(np.mean(s.correctness()["implicit"])) for s in scores if "implicit" in s.correctness()]
        points.append((alpha, accuracy, margin, implicit if alpha > 0 else []))
    return points


def alpha_table(results: list[CurveResult], train_set: str) -> str:
    """The alpha sweep (paper Figure 6) as a table; mean ± std over seeds."""
    lines = [
        "| alpha | reward-head accuracy | mean reward margin | implicit accuracy | seeds |",
        "|---|---|---|---|---|",
    ]
    for alpha, accuracy, margin, implicit in alpha_points(results, train_set):
        margin_text = f"{statistics.mean(margin):.3f}" + (
            f" ± {statistics.stdev(margin):.3f}" if len(margin) > 1 else ""
        )
        lines.append(
            f"| {alpha:g} | {mean_spread(accuracy)} | {margin_text} | {mean_spread(implicit)} | {len(accuracy)} |"
        )
    return "\n".join(lines)


def plot_alpha(results: list[CurveResult], train_set: str, path: Path) -> None:
    """The alpha sweep (paper Figure 6): reward-head accuracy and mean reward margin against alpha, one point per
    seed and the mean as a line; alphas evenly spaced (alpha 0 is the baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = alpha_points(results, train_set)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, index, label in ((axes[0], 1, "reward-head accuracy (%)"), (axes[1], 2, "mean reward margin")):
        scale = 100 if index == 1 else 1
        for x, point in enumerate(points):
            axis.scatter([x] * len(point[index]), [scale * v for v in point[index]], color="grey", s=12)
        axis.plot(range(len(points)), [scale * statistics.mean(p[index]) for p in points], marker="o")
        axis.set_xticks(range(len(points)), [f"{p[0]:g}" for p in points])
        axis.set_xlabel("alpha (policy-loss weight)")
        axis.set_ylabel(label)
    figure.suptitle(f"trained and tested on {dataset_title(train_set)}, last step", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def curve_lines(results: list[CurveResult], train_set: str, test_set: str) -> list[tuple]:
    """The learning-curve plot's lines: (label, head, steps, mean %, band low %, band high %) per method and head,
    the band spanning the seeds (or, for one seed, its Wilson 95% interval). Runs evaluated at one step only (the
    alpha sweep's) make no curve: they are the alpha plot's points."""
    runs = [r for r in results if r.train_set == train_set]
    lines = []
    for label, head in label_heads(runs):
        group = [r for r in runs if r.label == label]
        steps = sorted(step for step, name in group[0].scores if name == test_set)
        if len(steps) < 2:
            continue
        correct = [_seed_correctness(group, step, test_set, head) for step in steps]
        means = [100 * c.mean() for c in correct]
        if len(group) > 1:
            low, high = [100 * c.mean(axis=1).min() for c in correct], [100 * c.mean(axis=1).max() for c in correct]
        else:
            intervals = [accuracy_interval(c[0]) for c in correct]
            low, high = [100 * i[1] for i in intervals], [100 * i[2] for i in intervals]
        lines.append((label, head, steps, means, low, high))
    return lines


HEAD_LINE_STYLES = {"reward": "-", "implicit": "--", "combined": ":"}


def plot_curves(results: list[CurveResult], train_set: str, test_set: str, path: Path) -> bool:
    """Accuracy against steps (`curve_lines`): one colour per method, one line style per head. False, and no file,
    when no run was evaluated at two steps or more."""
    lines = curve_lines(results, train_set, test_set)
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    colours = {label: f"C{index}" for index, label in enumerate(dict.fromkeys(line[0] for line in lines))}
    for label, head, steps, means, low, high in lines:
        style = HEAD_LINE_STYLES[head]
        axis.plot(steps, means, marker="o", color=colours[label], ls=style, label=f"{label} {head}")
        axis.fill_between(steps, low, high, color=colours[label], alpha=0.15)
    axis.axhline(50, color="grey", lw=0.8, ls=":")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("optimiser steps (batch 16)")
    axis.set_ylabel("pairwise accuracy (%)")
    axis.set_title(f"trained on {dataset_title(train_set)}, tested on {dataset_title(test_set)}", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_curve_report(results: list[CurveResult], output_dir: str | Path, command: str, settings_text: str) -> Path:
    """report.md with the learning-curve tables and plots, the length split and (when several alphas ran) the sweep."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sections = ["# hafrm learning curves", "", f"Command: `{command}`", "", settings_text, ""]
    for train_set in dict.fromkeys(r.train_set for r in results):
        runs = [r for r in results if r.train_set == train_set]
        hours = sum(r.wall_s for r in runs) / 3600
        sections += [
            f"## Trained on {dataset_title(train_set)} ({len(runs)} runs, {hours:.1f} h of training and evaluation)",
            "",
        ]
        for test_set in dict.fromkeys(name for r in runs for _, name in r.scores):
            plot = f"curve-{train_set}-{test_set}.png"
            plotted = plot_curves(results, train_set, test_set, output_dir / plot)
            test_pairs = len(next(iter(r.scores[k] for r in runs for k in r.scores if k[1] == test_set)).chosen_rewards)
            sections += [
                f"### Tested on {dataset_title(test_set)} ({test_pairs} pairs)",
                "",
                "Accuracy (%), mean ± std over seeds.",
                "",
                curve_table(results, train_set, test_set),
                "",
                *([f"![{plot}]({plot})", ""] if plotted else []),
                "Each run (accuracy %; wall time by the run's clock, training and evaluation):",
                "",
                run_table(results, train_set, test_set),
                "",
            ]
            if compared_heads(runs):  # else (the baseline alone so far) there is nothing to compare
                sections += [
                    "Each head against the baseline's reward head on the same pairs (accuracy difference in points, "
                    "paired bootstrap 95% interval over the seeds both have; exact McNemar p by seed):",
                    "",
                    against_baseline_table(results, train_set, test_set),
                    "",
                ]
        sections += [
            "### Length preference at the last step (%)",
            "",
            LENGTH_TABLE_NOTE,
            "",
            length_table(results, train_set),
            "",
        ]
        if len({r.alpha for r in runs if r.method == "haf"}) > 1:
            plot = f"alpha-{train_set}.png"
            plot_alpha(results, train_set, output_dir / plot)
            sections += ["### Policy ratio alpha (paper Figure 6)", "", alpha_table(results, train_set), ""]
            sections += [f"![{plot}]({plot})", ""]
        haf = [r for r in runs if r.method == "haf"]
        if haf:
            first = min(haf, key=lambda r: (r.seed, abs(r.alpha - HafObjective.alpha)))  # the paper's alpha first
            last = max(step for step, name in first.scores if name == train_set)
            plot = f"reward-vs-implicit-{train_set}.png"
            title = f"{first.label} seed {first.seed}, step {last}, {dataset_title(train_set)}"
            plot_margin_scatter(first.scores[(last, train_set)], title, output_dir / plot)
            sections += ["### Reward head against implicit reward (paper Figure 7)", "", f"![{plot}]({plot})", ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(sections) + "\n")
    return path

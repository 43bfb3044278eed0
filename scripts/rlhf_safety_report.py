"""The RLHF Safety report's files and tables (docs/report/rlhf-safety/README.md).

python scripts/rlhf_safety_report.py keep outputs/rlhf-safety docs/report/rlhf-safety
    copies every evaluation's completions (gzipped) and writes judge_scores.jsonl, one row per
    (step, prompt, policy), from outputs/rlhf-safety/eval/step-N.jsonl
python scripts/rlhf_safety_report.py tables docs/report/rlhf-safety
    the tables (win rate, standardised rewards, length, KL) and the plot, from judge_scores.jsonl alone
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

from hafrm.experiments.rlhf_safety import judge_rows, standardised, win_rate
from hafrm.rlhf.evaluation import read_rows

JUDGE_FILE = "judge_scores.jsonl"


def keep(output: Path, report: Path) -> None:
    """The completions and the judge's rows, in git-sized files."""
    evaluations, names = {}, None
    (report / "completions").mkdir(parents=True, exist_ok=True)
    for path in sorted((output / "eval").glob("step-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        step = int(path.stem.split("-")[1])
        _, evaluations[step] = read_rows(path)
        with path.open("rb") as source, gzip.open(report / "completions" / f"{path.name}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        names = names or list(evaluations[step][0]["scores"])
    reward_models = {"haf": str(output / "rm-haf"), "baseline": str(output / "rm-baseline")}
    judge = str(output / "judge")
    missing = [spec for spec in [judge, *reward_models.values()] if spec not in names]
    if missing:
        raise SystemExit(f"the evaluations have no scores of {', '.join(missing)}")
    rows = judge_rows(evaluations, judge, reward_models)
    (report / JUDGE_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} rows from steps {sorted(evaluations)} -> {report / JUDGE_FILE}")


def tables(report: Path) -> str:
    rows = [json.loads(line) for line in (report / JUDGE_FILE).read_text().splitlines()]
    steps = sorted({row["step"] for row in rows})
    lines = [
        "| step | prompts | judge's win rate of haf over baseline | 95% interval | the interval rules out |",
        "|---|---|---|---|---|",
    ]
    for step in steps:
        result = win_rate(rows, step)
        low, high = result["interval"]
        ruled_out = f"an edge above {result['edge_ruled_out']:.3f}" + (
            " and no edge" if result["no_edge_ruled_out"] else ""
        )
        lines.append(
            f"| {step} | {result['prompts']} | {result['win_rate']:.3f} | [{low:.3f}, {high:.3f}] | {ruled_out} |"
        )
    lines += [
        "",
        "| step | policy | judge | own RM | other RM | completion tokens | KL to start (k1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in standardised(rows):
        lines.append(
            f"| {entry['step']} | {entry['policy']} | {entry['judge']:+.3f} | {entry['own']:+.3f} | "
            f"{entry['other']:+.3f} | {entry['completion_tokens']:.1f} | {entry['kl']:.3f} |"
        )
    plot(rows, report / "rlhf-safety.png")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({row["step"] for row in rows})
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rates = [win_rate(rows, step) for step in steps]
    left.errorbar(
        steps,
        [r["win_rate"] for r in rates],
        yerr=[[r["win_rate"] - r["interval"][0] for r in rates], [r["interval"][1] - r["win_rate"] for r in rates]],
        marker="o",
        capsize=3,
    )
    left.axhline(0.5, color="grey", linewidth=0.8)
    left.set(xlabel="step", ylabel="win rate of haf over baseline (judge)", ylim=(0, 1))
    table = standardised(rows)
    for policy, style in (("haf", "-"), ("baseline", "--")):
        own = [e for e in table if e["policy"] == policy]
        for key, colour in (("own", "C0"), ("other", "C1"), ("judge", "C2")):
            right.plot([e["step"] for e in own], [e[key] for e in own], style, color=colour, label=f"{policy}: {key}")
    right.set(xlabel="step", ylabel="reward, standardised against step 0")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    kept = commands.add_parser("keep")
    kept.add_argument("output", type=Path)
    kept.add_argument("report", type=Path)
    shown = commands.add_parser("tables")
    shown.add_argument("report", type=Path)
    args = parser.parse_args()
    if args.command == "keep":
        keep(args.output, args.report)
    else:
        print(tables(args.report))


if __name__ == "__main__":
    main()

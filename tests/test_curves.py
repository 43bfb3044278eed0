"""The claim protocols (learning curve, alpha sweep) end to end on a tiny model and the local data."""

import json
from pathlib import Path

import numpy as np
import pytest

from hafrm.cli.main import build_parser, main
from hafrm.data.splits import prompt_key
from hafrm.eval.evaluation import PairScores
from hafrm.experiments.curves import CurveSettings, claim_split, evaluation_sets, planned_runs
from hafrm.experiments.report import (
    CurveResult,
    against_baseline_table,
    alpha_points,
    curve_lines,
    curve_table,
    length_table,
    run_table,
    write_curve_report,
)
from hafrm.experiments.runs import SCORES_IN_ORDER

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")


@needs_data
@pytest.mark.parametrize("name", ["beaver-safe", "hh-harmless"])
def test_claim_splits_share_no_question(name):
    train, test = claim_split(name, str(SHARED_DATA), test_pairs=1000)
    assert len(test) >= 1000 and len(train) > 400
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in test}
    assert claim_split(name, str(SHARED_DATA))[1] == test  # the same test pairs for every run


def test_planned_runs():
    runs = planned_runs("learning-curve", ["beaver-safe"], ["baseline", "haf"], [0, 1], [], 0.2)
    assert [(r.method, r.seed, r.alpha) for r in runs] == [
        ("baseline", 0, 0.0),
        ("haf", 0, 0.2),
        ("baseline", 1, 0.0),
        ("haf", 1, 0.2),
    ]
    sweep = planned_runs("alpha-sweep", ["beaver-safe"], [], [0], [0.0, 0.5], 0.2)
    assert [(r.method, r.alpha) for r in sweep] == [("baseline", 0.0), ("haf", 0.5)]


def test_no_ood_tests_only_on_the_runs_own_test_part():
    own = [{"prompt": [], "chosen": "a", "rejected": "b"}]
    split = {"beaver-safe": ([], own)}.__getitem__
    assert build_parser().parse_args(["report", "--no-ood"]).ood is False
    assert evaluation_sets("beaver-safe", CurveSettings(data_root="", ood=False), split) == {"beaver-safe": own}


@needs_data
def test_learning_curve_report_resumes_and_merges(tiny_model_dir, tmp_path, capsys):
    command = [
        "report",
        "--protocol",
        "learning-curve",
        "--datasets",
        "beaver-safe",
        "--methods",
        "baseline,haf",
        "--seeds",
        "0",
        "--steps",
        "1,2",
        "--test-pairs",
        "12",
        "--data-root",
        str(SHARED_DATA),
        "--model",
        str(tiny_model_dir),
        "--max-train-pairs",
        "8",
        "--batch-size",
        "2",
        "--micro-batch-size",
        "2",
        "--max-length",
        "64",
        "--freeze-layers",
        "1",
        "--learning-rate",
        "1e-3",
        "--output",
        str(tmp_path / "a"),
    ]
    assert main(command) == 0
    report = (tmp_path / "a" / "report.md").read_text()
    assert (
        "### Tested on Beaver Safe" in report
        and "### Tested on HH-Harmless" in report
        and "Length preference" in report
    )
    assert "| 2 |" in report and "haf (alpha 0.2) − baseline" in report
    done = tmp_path / "a" / "runs" / "beaver-safe-haf-alpha0.2-seed0" / "done.json"
    first = json.loads(done.read_text())
    assert first["test_pairs"]["beaver-safe"] >= 12
    assert main(command) == 0  # finished runs are kept, not trained again
    assert json.loads(done.read_text()) == first
    assert (
        main(
            [
                "report",
                "--protocol",
                "learning-curve",
                "--merge",
                str(tmp_path / "a"),
                "--output",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    assert "merged from" in (tmp_path / "merged" / "report.md").read_text()
    old_order = {k: v for k, v in first.items() if k not in SCORES_IN_ORDER}  # as kept before the order fix
    done.write_text(json.dumps(old_order))
    merge_old = ["report", "--protocol", "learning-curve", "--merge", str(tmp_path / "a"), "--output", str(tmp_path)]
    assert main(merge_old) == 2 and "reorder_eval_scores.py" in capsys.readouterr().err


def scores_right_on(right: list[bool], margin: float = 1.0) -> PairScores:
    """Scores whose reward head (and implicit reward) gets exactly the pairs marked True right."""
    sign = np.where(right, 1.0, -1.0).astype(np.float32)
    return PairScores(margin * sign, np.zeros(len(right), np.float32), sign, np.zeros(len(right), np.float32))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's mean of an empty group warns
def test_a_baseline_alone_on_a_one_sided_test_set_has_no_empty_comparison_and_no_nan(tmp_path):
    """One method so far (an out-of-distribution queue trains them one at a time), on a test set where every chosen
    answer is the longer one, as in the local RewardBench rows."""
    longer = {"reward-bench": np.array([True, True, True, True])}
    baseline = CurveResult(
        "beaver-safe", "baseline", 0, 0.0, {(4, "reward-bench"): scores_right_on([True] * 3 + [False])}, longer, 60.0
    )
    assert (
        length_table([baseline], "beaver-safe").splitlines()[2]
        == "| RewardBench | baseline | reward | 75.0 (4) | – (0) | 25.0 |"
    )
    report = write_curve_report([baseline], tmp_path, "hafrm report", "").read_text()
    assert "against the baseline's reward head" not in report and "nan" not in report


def test_curve_report_tables_match_hand_counts(tmp_path):
    longer = {"beaver-safe": np.array([True, True, False, False])}

    def run(method, alpha, seed, right, margin=1.0):
        scores = {(4, "beaver-safe"): scores_right_on(right, margin)}
        return CurveResult("beaver-safe", method, seed, alpha, scores, longer, wall_s=60.0)

    results = [
        run("baseline", 0.0, 0, [True, False, False, False]),  # 25%
        run("baseline", 0.0, 1, [True, True, False, False]),  # 50%
        run("haf", 0.2, 0, [True, True, True, False], margin=2.0),  # 75%
        run("haf", 0.2, 1, [True, True, True, True], margin=2.0),  # 100%
    ]
    table = curve_table(results, "beaver-safe", "beaver-safe")
    row = table.splitlines()[2].split(" | ")
    assert row[1] == "37.5 ± 17.7" and row[2] == "87.5 ± 17.7"  # baseline reward, haf reward (sample std)
    assert row[5].startswith("+50.0 [")  # paired difference of the seed means: 0.875 - 0.375
    assert row[6].rstrip(" |") == "0.5, 0.5"  # McNemar: seed 0 discordant 2-0, seed 1 2-0 -> exact p 0.5
    per_run = run_table(results, "beaver-safe", "beaver-safe").splitlines()
    assert per_run[0] == "| run | head | 4 | wall time (min) |"
    assert per_run[2:4] == ["| baseline seed 0 | reward | 25.0 | 1 |", "| baseline seed 1 | reward | 50.0 | 1 |"]
    assert per_run[4:7] == [  # haf seed 0: its reward head and, from the same scores, implicit and combined
        "| haf (alpha 0.2) seed 0 | reward | 75.0 | 1 |",
        "| haf (alpha 0.2) seed 0 | implicit | 75.0 | 1 |",
        "| haf (alpha 0.2) seed 0 | combined | 75.0 | 1 |",
    ]
    lengths = length_table(results, "beaver-safe")
    # prefers the shorter: seed 0 picks it on 1 of 4 pairs, seed 1 on none; haf on 1 and 2 of 4
    assert "| Beaver Safe | baseline | reward | 75.0 (2) | 0.0 (2) | 12.5 |" in lengths
    assert "| Beaver Safe | haf (alpha 0.2) | reward | 100.0 (2) | 75.0 (2) | 37.5 |" in lengths
    dpo = run("dpo", 0.0, 0, [False] * 4)  # alpha 0 like the baseline, but not part of the sweep
    against = against_baseline_table([*results, dpo], "beaver-safe", "beaver-safe").splitlines()
    assert against[0] == "| method | head | 4: points [95% CI] | McNemar p |"
    assert [line.split(" | ")[:2] for line in against[2:]] == [
        ["| dpo", "implicit"],
        ["| haf (alpha 0.2)", "reward"],
        ["| haf (alpha 0.2)", "implicit"],
        ["| haf (alpha 0.2)", "combined"],
    ]
    # dpo has seed 0 only: 0% against the baseline's 25% on the same pairs, one discordant pair -> exact p 1
    assert against[2].split(" | ")[2].startswith("-25.0 [") and against[2].endswith(" | 1 |")
    assert all(line.split(" | ")[2].startswith("+50.0 [") and line.endswith(" | 0.5, 0.5 |") for line in against[3:])
    sweep = alpha_points([*results, dpo], "beaver-safe")
    assert sweep == [(0.0, [0.25, 0.5], [-0.5, 0.0], []), (0.2, [0.75, 1.0], [1.0, 2.0], [0.75, 1.0])]
    assert "Policy ratio alpha" not in write_curve_report(results, tmp_path, "hafrm report", "").read_text()
    sweep_run = run("haf", 1.0, 0, [True, True, False, False])  # a second haf alpha makes it a sweep
    report = write_curve_report([*results, sweep_run], tmp_path, "hafrm report ...", "settings").read_text()
    assert (
        "| 1 | 50.0 | 0.000 | 50.0 | 1 |" in report
        and "| 0.2 | 87.5 ± 17.7 | 1.500 ± 0.707 | 87.5 ± 17.7 | 2 |" in report
    )
    for plot in ("alpha-beaver-safe.png", "reward-vs-implicit-beaver-safe.png"):
        assert (tmp_path / plot).stat().st_size > 0
    # every run was evaluated at one step only: no learning curve to draw, so none is written or linked
    assert not (tmp_path / "curve-beaver-safe-beaver-safe.png").exists() and "curve-beaver-safe" not in report


def test_curve_lines_span_the_seeds_and_leave_out_one_step_runs(tmp_path):
    def run(method, alpha, seed, right_by_step):
        scores = {(step, "beaver-safe"): scores_right_on(right) for step, right in right_by_step.items()}
        longer = {"beaver-safe": np.array([True, True, False, False])}
        return CurveResult("beaver-safe", method, seed, alpha, scores, longer, wall_s=60.0)

    results = [
        run("haf", 0.2, 0, {2: [True, True, False, False], 4: [True] * 4}),  # 50%, 100%; one seed
        run("baseline", 0.0, 1, {2: [True, True, False, False], 4: [True, True, True, False]}),  # 50%, 75%
        run("baseline", 0.0, 0, {2: [True, False, False, False], 4: [True, True, False, False]}),  # 25%, 50%
        run("haf", 1.0, 0, {4: [True] * 4}),  # an alpha-sweep run: one step, so no curve
    ]
    lines = curve_lines(results, "beaver-safe", "beaver-safe")
    assert [line[:2] for line in lines] == [  # table order: baseline first, then haf's three heads
        ("baseline", "reward"),
        ("haf (alpha 0.2)", "reward"),
        ("haf (alpha 0.2)", "implicit"),
        ("haf (alpha 0.2)", "combined"),
    ]
    label, head, steps, means, low, high = lines[0]
    assert steps == [2, 4] and means == [37.5, 62.5] and low == [25.0, 50.0] and high == [50.0, 75.0]  # seed range
    # one seed: its Wilson 95% interval, by hand for 2/4 (centre 0.5, half-width 0.350) and 4/4 (0.755 +- 0.245)
    assert lines[1][3] == [50.0, 100.0]
    assert np.allclose(lines[1][4], [15.0, 51.0], atol=0.05) and np.allclose(lines[1][5], [85.0, 100.0], atol=0.05)
    report = write_curve_report(results, tmp_path, "hafrm report", "").read_text()
    assert "![curve-beaver-safe-beaver-safe.png]" in report
    assert (tmp_path / "curve-beaver-safe-beaver-safe.png").stat().st_size > 0


@needs_data
def test_reorder_script_undoes_the_trainers_length_grouped_eval_order(tiny_model_dir, tmp_path):
    """scripts/reorder_eval_scores.py rebuilds the order in which transformers' Trainer (its own _get_eval_sampler,
    under group_by_length) evaluated a run's test pairs, and puts scores kept in that order back in the test set's."""
    import importlib.util

    import datasets
    import torch
    from transformers import Trainer, TrainingArguments

    script = Path(__file__).resolve().parents[1] / "scripts" / "reorder_eval_scores.py"
    spec = importlib.util.spec_from_file_location("reorder_eval_scores", script)
    reorder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reorder)
    lengths = reorder.token_lengths("reward-bench", str(SHARED_DATA), str(tiny_model_dir), 512)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        train_sampling_strategy="group_by_length",
        per_device_eval_batch_size=4,
        data_seed=2,
        report_to="none",
    )
    sampler = Trainer(model=torch.nn.Linear(1, 1), args=args)._get_eval_sampler(
        datasets.Dataset.from_dict({"length": list(lengths)})
    )
    evaluated = np.array(list(sampler))
    assert sorted(evaluated) == list(range(len(lengths))) and list(evaluated) != sorted(evaluated)

    run = tmp_path / "runs" / "reward-bench-baseline-alpha0-seed2"
    (run / "model" / "eval-scores").mkdir(parents=True)
    config = {"model": str(tiny_model_dir), "max_length": 512, "micro_batch_size": 4, "seed": 2}
    (run / "done.json").write_text(json.dumps({"config": config, "test_pairs": {"reward-bench": len(lengths)}}))
    in_order = np.arange(len(lengths), dtype=np.float32)  # pair i's scores are i, -i, 2i, -2i
    kept = PairScores(*(factor * in_order[evaluated] for factor in (1, -1, 2, -2)))  # as the Trainer handed them
    kept.save(run / "model" / "eval-scores" / "step-8-reward-bench.npz")
    assert reorder.reorder_run(run, str(SHARED_DATA)) == "put 1 score file(s) in test-set order"
    back = PairScores.load(run / "model" / "eval-scores" / "step-8-reward-bench.npz")
    for name, factor in zip(PairScores.ARRAYS, (1, -1, 2, -2)):
        np.testing.assert_array_equal(getattr(back, name), factor * in_order)
    assert SCORES_IN_ORDER.items() <= json.loads((run / "done.json").read_text()).items()
    assert reorder.reorder_run(run, str(SHARED_DATA)) == "already in test-set order"  # a second pass leaves it be

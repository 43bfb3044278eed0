"""Protocols, RewardBench weighting and the report, on the tiny model and the real local data."""

import json
from pathlib import Path

import numpy as np
import pytest

from hafrm.cli.main import main
from hafrm.data.catalog import group_members, load_named
from hafrm.eval.metrics import mcnemar_p
from hafrm.eval.rewardbench import section_scores, subset_accuracies
from hafrm.experiments.protocols import experiments
from hafrm.experiments.report import accuracy_table, mean_spread
from hafrm.experiments.runs import RunResult

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # real data sets; tests skip without them


def test_section_scores_use_rewardbench_weights():
    per_subset = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5, "math-prm": 0.2, "hep-cpp": 0.8}
    scores = section_scores(per_subset)
    assert scores["Chat"] == pytest.approx((100 * 1.0 + 28 * 0.5) / 128)
    assert scores["Reasoning"] == pytest.approx((984 * 0.2 + 164 * 0.8) / (984 + 164))
    assert "Safety" not in scores
    assert scores["Score"] == pytest.approx((scores["Chat"] + scores["Reasoning"]) / 2)


def test_subset_accuracies():
    correct = np.array([True, False, True, True])
    assert subset_accuracies(correct, ["a", "a", "b", None]) == {"a": 0.5, "b": 1.0}


def test_experiments_follow_the_paper_groups():
    assert group_members("hh-harmless") == ["beaver-safe"]
    assert group_members("hh-helpful") == ["alpaca-human-pref", "chatbot-arena"]
    assert [e.test_sets for e in experiments("ood-internal", ["beaver-safe"])] == [["beaver-safe", "hh-harmless"]]
    assert experiments("mixed", ["hh-harmless", "beaver-safe"])[0].train_set == "mixed"
    with pytest.raises(ValueError):
        experiments("table-9", ["hh-harmless"])


def test_mcnemar_p_matches_the_binomial_tail_by_hand():
    assert mcnemar_p(11, 4) == pytest.approx(2 * (1 + 15 + 105 + 455 + 1365) / 2**15)  # 0.118
    assert mcnemar_p(4, 11) == mcnemar_p(11, 4)
    assert mcnemar_p(10, 0) == pytest.approx(2 / 2**10)
    assert mcnemar_p(5, 6) == mcnemar_p(0, 0) == 1.0


def test_report_table_mean_and_spread():
    results = [
        RunResult("haf", seed, "hh-harmless", {"hh-harmless": {"reward_accuracy": acc}}, [], "")
        for seed, acc in ((0, 0.6), (1, 0.7))
    ]
    table = accuracy_table(results)
    assert "| HH-Harmless | haf | reward head | 65.0 ± 7.1 |" in table
    assert mean_spread([0.5]) == "50.0"


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_seeded_test_split_for_data_without_one():
    train, _ = load_named("chatbot-arena", "train", SHARED_DATA)
    test, _ = load_named("chatbot-arena", "test", SHARED_DATA)
    assert (len(train), len(test)) == (207, 23)  # 230 usable rows (ties and multi-turn rows dropped), 10% test
    assert not {p["chosen"] for p in test} & {p["chosen"] for p in train}
    assert load_named("chatbot-arena", "test", SHARED_DATA, seed=1)[0] != test


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_beaver_safe_tests_on_its_local_test_file_and_trains_on_all_of_the_sample():
    assert len(load_named("beaver-safe", "train", SHARED_DATA)[0]) == 500
    assert len(load_named("beaver-safe", "test", SHARED_DATA)[0]) == 5135


def report_args(
    tiny_model_dir, output, methods="baseline,haf", seeds="0", protocol="ood-external", data_root=SHARED_DATA
):
    return [
        "report",
        "--protocol",
        protocol,
        "--datasets",
        "hh-harmless",
        "--methods",
        methods,
        "--seeds",
        seeds,
        "--data-root",
        str(data_root),
        "--train-pairs",
        "8",
        "--test-pairs",
        "8",
        "--output",
        str(output),
        "--model",
        str(tiny_model_dir),
        "--max-length",
        "64",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "4",
    ]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_report_command_end_to_end(tiny_model_dir, tmp_path):
    assert main(report_args(tiny_model_dir, tmp_path)) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| HH-Harmless | haf | implicit (DPO) |" in report and "RewardBench" in report
    for plot in ("training_curves.png", "reward_distributions.png", "reward_vs_implicit.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in results} == {"baseline", "haf"}
    assert "reward_sections" in results[0]["test_metrics"]["reward-bench"]
    scores = {r["method"]: np.load(f"{r['output_dir']}/scores-hh-harmless.npz") for r in results}
    baseline_right = scores["baseline"]["chosen_rewards"] > scores["baseline"]["rejected_rewards"]
    haf_right = scores["haf"]["chosen_implicit"] > scores["haf"]["rejected_implicit"]
    better, worse = int((haf_right & ~baseline_right).sum()), int((~haf_right & baseline_right).sum())
    assert (
        f"| HH-Harmless | 0 | HH-Harmless | haf | implicit | 8 | {better} | {worse} | {mcnemar_p(better, worse):.2g} |"
        in report
    )


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_report_merges_seeds_run_apart(tiny_model_dir, tmp_path):
    assert main(report_args(tiny_model_dir, tmp_path / "seed0", "baseline", "0")) == 0
    assert main(report_args(tiny_model_dir, tmp_path / "seed1", "baseline", "1")) == 0
    per_seed = [json.loads((tmp_path / f"seed{s}" / "results.json").read_text())[0] for s in (0, 1)]
    assert (
        main(
            [
                "report",
                "--merge",
                str(tmp_path / "seed0"),
                str(tmp_path / "seed1"),
                "--output",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [r["seed"] for r in merged] == [0, 1]
    accuracies = [r["test_metrics"]["hh-harmless"]["reward_accuracy"] for r in per_seed]
    row = next(
        line
        for line in (tmp_path / "merged" / "report.md").read_text().splitlines()
        if line.startswith("| HH-Harmless | baseline | reward head |")
    )
    assert row.split(" | ")[3] == mean_spread(accuracies)
    assert "±" in row


def test_merge_of_a_folder_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--merge", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no results.json" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_unavailable_test_set_stops_before_training_unless_left_out(tiny_model_dir, tmp_path, capsys):
    data_root = tmp_path / "data"  # HH-Harmless only: Beaver Safe is neither here nor (offline) on the hub
    data_root.mkdir()
    (data_root / "hh-rlhf-harmless-base").symlink_to(SHARED_DATA / "hh-rlhf-harmless-base")
    args = report_args(tiny_model_dir, tmp_path / "out", "baseline", protocol="ood-internal", data_root=data_root)
    assert main(args) == 2
    assert "test set beaver-safe is not available" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # nothing was trained
    assert main(args + ["--skip-unavailable"]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Not available, so not tested: Beaver Safe." in report
    assert "| HH-Harmless | baseline | reward head |" in report and "| Beaver Safe |" not in report

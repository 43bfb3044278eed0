"""The claim protocols (learning curve, alpha sweep) end to end on a tiny model and the local data."""

import json
from pathlib import Path

import pytest

from hafrm.cli import build_parser, main
from hafrm.curves import CurveSettings, claim_split, evaluation_sets, planned_runs
from hafrm.data.splits import prompt_key

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
def test_learning_curve_report_resumes_and_merges(tiny_model_dir, tmp_path):
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

"""Pairwise metrics against hand-computed values."""

import math

import numpy as np
import pytest

from hafrm.eval.metrics import Z95, accuracy_interval, correctness_from_predictions, paired_difference


def test_wilson_interval_matches_the_textbook_value():
    accuracy, low, high = accuracy_interval([True] * 80 + [False] * 20)
    assert accuracy == 0.8
    assert (low, high) == pytest.approx((0.7112, 0.8666), abs=1e-4)  # Wilson 95% for 80 of 100
    assert accuracy_interval([True] * 5)[2] == pytest.approx(1.0)  # stays within [0, 1]


def test_paired_difference_uses_the_per_pair_differences():
    difference, low, high = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])  # per pair: 1, 0, 0, 1
    half = Z95 * math.sqrt(1 / 3) / 2
    assert (difference, low, high) == pytest.approx((0.5, 0.5 - half, 0.5 + half))


def test_correctness_from_trainer_predictions():
    predictions = np.array([[1.0, 0.0, 0.2, 0.1], [0.0, 1.0, 0.3, 0.1]])
    correct = correctness_from_predictions(predictions)
    assert correct["reward"].tolist() == [True, False]
    assert correct["implicit"].tolist() == [True, True]
    assert correct["combined"].tolist() == [True, False]  # 1.2 > 0.1; 0.3 < 1.1
    assert set(correctness_from_predictions(np.array([[1.0, 0.0, np.nan, np.nan]]))) == {"reward"}


def test_paired_bootstrap_interval_contains_the_mean_and_narrows_with_more_pairs():
    from hafrm.eval.metrics import paired_bootstrap_interval

    rng = np.random.default_rng(1)
    before = rng.random(400) < 0.6
    after = before | (rng.random(400) < 0.2)  # only gains
    mean, low, high = paired_bootstrap_interval(after, before)
    assert mean == pytest.approx(after.mean() - before.mean())
    assert 0 < low < mean < high
    _, low_small, high_small = paired_bootstrap_interval(after[:50], before[:50])
    assert high_small - low_small > high - low
    assert paired_bootstrap_interval(before, before) == (0.0, 0.0, 0.0)


def test_discordant_counts():
    from hafrm.eval.metrics import discordant_counts

    assert discordant_counts([1, 1, 0, 0], [0, 1, 1, 0]) == (1, 1)


def test_pair_scores_round_trip(tmp_path):
    from hafrm.eval.evaluation import PairScores, scores_file

    scores = PairScores.from_predictions(np.array([[1.0, 0.5, 0.2, 0.3], [0.0, 1.0, np.nan, np.nan]]))
    scores.subsets = ["chat", None]
    scores.save(scores_file(tmp_path, "hh-harmless"))
    loaded = PairScores.load(tmp_path / "scores-hh-harmless.npz")
    for name in PairScores.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(scores, name))
    assert loaded.subsets == ["chat", None]
    assert loaded.correctness()["reward"].tolist() == [True, False]


def test_rewardbench_metrics_per_subset_and_section():
    from hafrm.eval.evaluation import PairScores
    from hafrm.eval.rewardbench import rewardbench_metrics, section_scores

    scores = PairScores.from_predictions(np.array([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.5, 0.0], [1.0, 0.0, 0.0, 0.5]]))
    scores.subsets = ["alpacaeval-easy", "alpacaeval-easy", "donotanswer"]
    metrics = rewardbench_metrics(scores)
    assert metrics["reward_subsets"] == {"alpacaeval-easy": 0.5, "donotanswer": 1.0}
    assert metrics["implicit_subsets"] == {"alpacaeval-easy": 1.0, "donotanswer": 0.0}
    assert metrics["reward_sections"] == section_scores({"alpacaeval-easy": 0.5, "donotanswer": 1.0})
    assert "combined_subsets" not in metrics
    scores.subsets = [None, None, None]
    assert rewardbench_metrics(scores) == {}

"""Pairwise metrics against hand-computed values."""

import math

import numpy as np
import pytest

from hafrm.metrics import Z95, accuracy_interval, correctness_from_predictions, paired_difference


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

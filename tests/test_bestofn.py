"""Best-of-N: recall against a judge computed by hand, and sampling from a real (tiny) policy."""

import numpy as np
import pytest

from hafrm.bestofn import best_of_n, sample_responses, top_k_recall


def test_top_k_recall_by_hand():
    selector = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.5, 0.6, 0.1]])  # picks 0, 2, 1
    judge = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])  # best: 0, 0, 1; second: 1, 1, 2
    assert top_k_recall(selector, judge, ks=(1, 2, 3)) == {
        "top1_recall": pytest.approx(2 / 3),
        "top2_recall": pytest.approx(2 / 3),
        "top3_recall": 1.0,
    }


def test_best_of_n_with_identical_selector_and_judge_is_perfect():
    longest = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    result = best_of_n(["p", "q"], [["a", "bbb", "cc"], ["dddd", "e", "ff"]], longest, longest)
    assert result["top1_recall"] == 1.0 and result["picks"] == [1, 0]


def test_sampling_gives_n_responses_per_prompt(tokenizer, tiny_causal_lm):
    policy = tiny_causal_lm(len(tokenizer)).eval()
    responses = sample_responses(policy, tokenizer, ["Hi", "Tell me a joke"], n=3, max_new_tokens=5)
    assert [len(group) for group in responses] == [3, 3]
    assert all(isinstance(r, str) for group in responses for r in group)

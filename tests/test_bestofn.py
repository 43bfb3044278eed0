"""Best-of-N: recall against a judge computed by hand, and sampling from a real (tiny) policy."""

import numpy as np
import pytest

from hafrm.bestofn import candidate_scores, compare_selectors, sample_responses, top_k_recall


def test_top_k_recall_by_hand():
    selector = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.5, 0.6, 0.1]])  # picks 0, 2, 1
    judge = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])  # best: 0, 0, 1; second: 1, 1, 2
    assert top_k_recall(selector, judge, ks=(1, 2, 3)) == {
        "top1_recall": pytest.approx(2 / 3),
        "top2_recall": pytest.approx(2 / 3),
        "top3_recall": 1.0,
    }


def test_candidate_scores_are_prompts_by_n_and_need_equal_groups():
    longest = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    scores = candidate_scores(longest, ["p", "q"], [["a", "bbb", "cc"], ["dddd", "e", "ff"]])
    assert scores.tolist() == [[1.0, 3.0, 2.0], [4.0, 1.0, 2.0]]
    assert top_k_recall(scores, scores) == {"top1_recall": 1.0, "top2_recall": 1.0}
    with pytest.raises(ValueError, match="same number of candidates"):
        candidate_scores(longest, ["p", "q"], [["a", "b"], ["c"]])


def test_selectors_are_compared_with_the_first_on_the_same_prompts():
    judge = np.array([[1.0, 0.0]] * 5)  # candidate 0 is the judge's best on every prompt
    reference = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3)  # picks 0, 0, 1, 1, 1: right on 2 of 5
    other = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]])  # picks 0, 0, 0, 0, 1: right on 4 of 5
    summary = compare_selectors({"ref": reference, "other": other}, judge)
    assert summary["ref"]["top1_recall"] == pytest.approx(0.4) and "reference" not in summary["ref"]
    assert summary["ref"]["top1_recall_interval"] == pytest.approx([0.1176, 0.7693], abs=1e-4)  # Wilson, 2 of 5
    versus = summary["other"]["top1_recall_minus_reference"]
    assert summary["other"]["reference"] == "ref" and summary["other"]["top1_recall"] == pytest.approx(0.8)
    assert versus["difference"] == pytest.approx(0.4) and (versus["only_this"], versus["only_reference"]) == (2, 0)
    assert versus["mcnemar_p"] == pytest.approx(0.5)  # 2 discordant prompts, both one way: 2 * (1/2)^2
    assert 0.0 <= versus["interval"][0] <= 0.4 <= versus["interval"][1] <= 0.8
    top2 = summary["other"]["top2_recall_minus_reference"]  # with n = 2 every pick is in the judge's top 2
    assert summary["other"]["top2_recall"] == 1.0 and top2["difference"] == 0.0 and top2["mcnemar_p"] == 1.0


def test_sampling_gives_n_responses_per_prompt(tokenizer, tiny_causal_lm):
    policy = tiny_causal_lm(len(tokenizer)).eval()
    responses = sample_responses(policy, tokenizer, ["Hi", "Tell me a joke"], n=3, max_new_tokens=5)
    assert [len(group) for group in responses] == [3, 3]
    assert all(isinstance(r, str) for group in responses for r in group)

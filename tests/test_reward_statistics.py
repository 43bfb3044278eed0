"""Reward statistics as OpenRLHF's reward models carry them (issue 46, item 5): the exported head's mean and std over
the eval set's chosen and rejected responses (the training pairs without one) in reward_model/config.json and
hafrm.json, and normalised rewards from RewardScorer and `hafrm serve --normalize-reward`."""

import json

import numpy as np
import pytest
from helpers import train_command

from hafrm.cli.main import main
from hafrm.data import load_pairs
from hafrm.eval.scoring import RewardScorer
from hafrm.io.defaults import DEFAULT_EVAL_DATA
from hafrm.training.loading import load_trained


@pytest.mark.parametrize("with_eval", [True, False], ids=["eval-set", "no-eval-set"])
def test_statistics_are_those_of_the_exported_head_on_the_named_pairs(with_eval, tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    options = dict(eval_data=DEFAULT_EVAL_DATA, max_eval_pairs=6) if with_eval else dict(eval_fraction=0)
    assert main(train_command(tiny_model_dir, output, max_steps=2, learning_rate="1e-3", **options)) == 0
    record = json.loads((output / "hafrm.json").read_text())["reward_statistics"]
    config = json.loads((output / "reward_model" / "config.json").read_text())
    assert (config["mean"], config["std"]) == (record["mean"], record["std"])
    source, count = (DEFAULT_EVAL_DATA, 6) if with_eval else (None, 8)
    assert record["computed_on"] == (["eval"] if with_eval else ["train"]) and record["responses"] == 2 * count
    if with_eval:
        pairs, _ = load_pairs(str(source), split="test", limit=count)
        scores = load_trained(output).score_pairs(pairs)
        rewards = np.concatenate([scores.chosen_rewards, scores.rejected_rewards]).astype(np.float64)
        assert record["mean"] == pytest.approx(rewards.mean(), rel=1e-4, abs=1e-5)
        assert record["std"] == pytest.approx(rewards.std(ddof=1), rel=1e-4)
    raw = RewardScorer(output).score(["Hi"], ["Hello"])[0]
    normalised = RewardScorer(output, normalize=True).score(["Hi"], ["Hello"])[0]
    assert normalised == pytest.approx((raw - record["mean"]) / record["std"], rel=1e-5)


def test_normalizing_a_model_without_statistics_is_refused(tokenizer, tiny_causal_lm, tmp_path, capsys):
    from hafrm.model.hybrid import HybridRewardModel

    HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer))).export(tmp_path, tokenizer, {"config": {}})
    with pytest.raises(ValueError, match="carries no reward statistics"):
        RewardScorer(tmp_path, normalize=True)
    assert main(["serve", str(tmp_path), "--normalize-reward"]) == 2
    assert "carries no reward statistics" in capsys.readouterr().err

"""What is not a trained reward model is refused (issue 46, item 4): a head transformers had to create, and a
classifier of several labels without a label chosen, by `hafrm score`, the server's scorer and the RLHF reward."""

import pytest
import torch
from transformers import LlamaForSequenceClassification

from hafrm.cli.main import main
from hafrm.eval.scoring import RewardScorer
from hafrm.serve.rlhf import reward_function
from hafrm.testing import tiny_llama


@pytest.fixture(scope="module")
def rows(tmp_path_factory, write_jsonl):
    return write_jsonl(tmp_path_factory.mktemp("rows") / "rows.jsonl", [{"prompt": "Hi", "response": "Hello"}])


def test_a_plain_causal_lm_is_not_scored(tiny_model_dir, rows, capsys):
    assert main(["score", str(tiny_model_dir), "--input", str(rows)]) == 2
    err = capsys.readouterr().err
    assert (
        "is not a trained reward model: its head score is not in the checkpoint (score.weight newly initialised)" in err
    )
    with pytest.raises(ValueError, match="not a trained reward model"):
        reward_function(tiny_model_dir)


@pytest.fixture(scope="module")
def two_labels(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-labels")
    tiny_llama(len(tokenizer), model_class=LlamaForSequenceClassification, num_labels=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_classifier_of_two_labels_needs_a_label_chosen(two_labels):
    with pytest.raises(ValueError, match="classifier with 2 labels.*--label-index"):
        RewardScorer(two_labels)
    with pytest.raises(ValueError, match="out of range"):
        RewardScorer(two_labels, label_index=2)
    scorer = RewardScorer(two_labels, label_index=1)
    ids = scorer.encode("Hi", "Hello")
    with torch.no_grad():
        logits = scorer.model(input_ids=torch.tensor([ids])).logits[0]
    assert scorer.score(["Hi"], ["Hello"]) == pytest.approx([logits[1].item()], rel=1e-5)


def test_score_command_reads_the_chosen_label(two_labels, rows, tmp_path, capsys):
    import json

    assert main(["score", str(two_labels), "--input", str(rows)]) == 2
    assert "--label-index" in capsys.readouterr().err
    output = tmp_path / "scored.jsonl"
    assert main(["score", str(two_labels), "--input", str(rows), "--label-index", "1", "--output", str(output)]) == 0
    reward = json.loads(output.read_text())["reward"]
    assert reward == pytest.approx(RewardScorer(two_labels, label_index=1).score(["Hi"], ["Hello"])[0], rel=1e-5)

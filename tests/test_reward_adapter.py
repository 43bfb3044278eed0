"""A LoRA run's reward model as PEFT users load one (issue 42, item 2): reward_adapter/ is a SEQ_CLS adapter with the
reward head in modules_to_save (and the embeddings where training grew them by a pad row), and
AutoPeftModelForSequenceClassification and PeftModel on AutoModelForSequenceClassification give hafrm's rewards."""

import json

import pytest
import torch
from peft import AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hafrm.eval.scoring import RewardScorer
from hafrm.io.pretrained import fit_embeddings, load_tokenizer
from hafrm.model.hybrid import HybridRewardModel, LoraSettings
from hafrm.testing import TINY_FAMILIES as FAMILIES
from hafrm.testing import tiny_family_model

TEXTS = [
    ([{"role": "user", "content": "How do I bake bread?"}], "Mix flour, water and yeast; knead; bake."),
    ([{"role": "user", "content": "Say hi."}], "Hi!"),
]


def export_lora_run(base, output):
    """A LoRA hybrid model on the saved base (its embeddings grown where the tokenizer's pad token needs a row),
    its adapter made non-trivial, exported as a run is."""
    own_tokenizer = load_tokenizer(str(base))
    causal_lm = AutoModelForCausalLM.from_pretrained(base)
    fit_embeddings(causal_lm, own_tokenizer)
    model = HybridRewardModel.from_causal_lm(causal_lm, LoraSettings(r=4, alpha=8, dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    model.export(output, own_tokenizer, {})
    return output, own_tokenizer


@pytest.mark.parametrize("grown", [False, True], ids=["same-vocabulary", "pad-row-added"])
def test_reward_adapter_loads_in_peft_with_hafrms_rewards(grown, tokenizer, tiny_causal_lm, tmp_path):
    base = tmp_path / "base"
    # one row short of the tokenizer: hafrm grows the embeddings by the row its pad token needs
    tiny_causal_lm(len(tokenizer) - 1 if grown else len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    output, own_tokenizer = export_lora_run(base, tmp_path / "out")

    adapter = output / "reward_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == (["score", "embed_tokens"] if grown else ["score"])
    scorer = RewardScorer(output)
    expected = scorer.score(*zip(*TEXTS))

    def rewards(classifier) -> list[float]:
        classifier.config.pad_token_id = own_tokenizer.pad_token_id
        with torch.no_grad():
            return [
                classifier(input_ids=torch.tensor([scorer.encode(prompt, response)])).logits[0, 0].item()
                for prompt, response in TEXTS
            ]

    auto = AutoPeftModelForSequenceClassification.from_pretrained(adapter, num_labels=1).eval()
    assert rewards(auto) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    classifier = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    if grown:
        classifier.resize_token_embeddings(len(own_tokenizer))
    on_base = PeftModel.from_pretrained(classifier, adapter).eval()
    assert rewards(on_base) == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_familys_reward_adapter_loads_with_hafrms_rewards(family, tokenizer, tmp_path):
    """The adapter's key names and the grown embedding (tied to the LM head in GPT-2, Gemma, Starcoder2, SmolLM3)
    depend on the architecture."""
    base = tmp_path / "base"
    tiny_family_model(family, len(tokenizer) - 1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    output, own_tokenizer = export_lora_run(base, tmp_path / "out")
    scorer = RewardScorer(output)
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(output / "reward_adapter", num_labels=1).eval()
    adapter.config.pad_token_id = own_tokenizer.pad_token_id
    prompt, response = TEXTS[0]
    with torch.no_grad():
        reward = adapter(input_ids=torch.tensor([scorer.encode(prompt, response)])).logits[0, 0].item()
    assert reward == pytest.approx(scorer.score([prompt], [response])[0], rel=1e-4, abs=1e-5)

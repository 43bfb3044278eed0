"""The hybrid model: one causal-LM backbone (phi) shared by the policy head K and a scalar reward head F.

One forward pass over the concatenated chosen+rejected batch yields both the rewards (F on the
hidden state of the last non-pad token) and the response log-probs (K on response positions only,
chunked, so full-vocabulary logits are never built for prompt tokens).

Saved outputs are plain Hugging Face formats:
  reward_model/   AutoModelForSequenceClassification (num_labels=1, head named `score`)
  policy/         AutoModelForCausalLM
  adapter/        PEFT LoRA adapter (LoRA runs only), mergeable with the base model
  reward_head.safetensors, hafrm.json
"""

from __future__ import annotations

import copy
import json
import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

LOGIT_CHUNK_BYTES = 16 * 2**20  # fp32 logits per log-prob chunk; backward holds about three such buffers
REWARD_HEAD_FILE = "reward_head.safetensors"
METADATA_FILE = "hafrm.json"


@dataclass
class HybridOutput:
    rewards: torch.Tensor  # (N,) reward-head score of each sequence
    logps: torch.Tensor | None  # (N,) summed log-prob of response tokens under the policy head
    token_counts: torch.Tensor | None  # (N,) number of response tokens scored


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA settings; the paper's Mistral-7B runs use rank 64, alpha 16."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


def last_token_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding.

    Same rule as transformers' *ForSequenceClassification (last token that is not the pad id), so a
    saved reward model gives the same rewards; attention_mask also excludes padding whatever its id.
    """
    real = attention_mask.bool()
    if pad_token_id is not None:
        real = real & (input_ids != pad_token_id)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * real).argmax(dim=-1)


def _token_logps(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def logprob_chunk_tokens(vocab_size: int) -> int:
    """Response tokens per LM-head chunk, so one chunk's fp32 logits stay within LOGIT_CHUNK_BYTES."""
    return max(16, LOGIT_CHUNK_BYTES // (4 * vocab_size))


def response_logps(hidden: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, lm_head: nn.Module, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of response tokens and their counts, computing the LM head only on response positions.

    Under autograd each chunk is recomputed in backward rather than keeping its (chunk x vocab) logits.
    """
    predicts_response = response_mask[:, 1:]
    hidden = hidden[:, :-1][predicts_response]
    targets = input_ids[:, 1:][predicts_response]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(predicts_response)[predicts_response]
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_token_logps, h, t, lm_head, use_reentrant=False))
        else:
            pieces.append(_token_logps(h, t, lm_head))
    token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0)
    logps = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=input_ids.device).index_add(0, rows, token_logps)
    return logps, predicts_response.sum(dim=1)


class HybridRewardModel(nn.Module):
    """Causal LM (optionally PEFT-wrapped) plus a linear reward head on its last hidden state."""

    def __init__(self, policy: nn.Module, score: nn.Linear, pad_token_id: int | None, logprob_chunk_size: int | None = None):
        super().__init__()
        self.policy = policy
        self.score = score
        self.pad_token_id = pad_token_id
        self.logprob_chunk_size = logprob_chunk_size or logprob_chunk_tokens(self.causal_lm.get_output_embeddings().out_features)
        self.reference_model: nn.Module | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_causal_lm(cls, causal_lm: nn.Module, pad_token_id: int | None, lora: LoraSettings | None = None, score: nn.Linear | None = None) -> "HybridRewardModel":
        """Attach a fresh reward head (std 1/sqrt(hidden+1)) and, if asked, LoRA adapters to a causal LM."""
        if score is None:
            hidden = causal_lm.config.get_text_config().hidden_size
            score = nn.Linear(hidden, 1, bias=False, dtype=causal_lm.dtype)
            nn.init.normal_(score.weight, std=1 / math.sqrt(hidden + 1))
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            causal_lm = get_peft_model(causal_lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        return cls(causal_lm, score, pad_token_id)

    @classmethod
    def from_pretrained(cls, output_dir: str | Path, dtype: torch.dtype = torch.float32) -> "HybridRewardModel":
        """Load a directory written by `export` (its policy/ and reward head)."""
        from transformers import AutoModelForCausalLM

        output_dir = Path(output_dir)
        causal_lm = AutoModelForCausalLM.from_pretrained(output_dir / "policy", dtype=dtype)
        weight = load_file(output_dir / REWARD_HEAD_FILE)["weight"].to(dtype)
        score = nn.Linear(weight.shape[1], 1, bias=False, dtype=dtype)
        score.weight.data.copy_(weight)
        return cls(causal_lm, score, causal_lm.config.pad_token_id)

    # ------------------------------------------------------------------ structure

    @property
    def is_peft(self) -> bool:
        return hasattr(self.policy, "disable_adapter")

    @property
    def causal_lm(self) -> nn.Module:
        return self.policy.get_base_model() if self.is_peft else self.policy

    @property
    def backbone(self) -> nn.Module:
        causal_lm = self.causal_lm
        return getattr(causal_lm, causal_lm.base_model_prefix)

    @property
    def config(self):
        return self.causal_lm.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False})
        if self.is_peft:
            self.causal_lm.enable_input_require_grads()

    def disable_dropout(self) -> None:
        """Zero the backbone's dropout (as TRL's reward and DPO trainers do), so rewards and log-probs are
        deterministic in training. LoRA's own dropout is left to LoraSettings.dropout."""
        for name, module in self.causal_lm.named_modules():
            if isinstance(module, nn.Dropout) and "lora_dropout" not in name:
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0

    def keep_frozen_reference(self) -> None:
        """Keep a frozen copy of the initial policy as the DPO reference (full fine-tuning, no precomputation)."""
        self.reference_model = copy.deepcopy(self.causal_lm).eval().requires_grad_(False)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor | None = None, with_logps: bool = True) -> HybridOutput:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = last_token_index(input_ids, attention_mask, self.pad_token_id)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        rewards = self.score(pooled.to(self.score.weight.dtype)).squeeze(-1).float()
        if not with_logps:
            return HybridOutput(rewards, None, None)
        if response_mask is None:
            raise ValueError("response_mask is needed to compute response log-probs")
        logps, counts = response_logps(hidden, input_ids, response_mask, self.causal_lm.get_output_embeddings(), self.logprob_chunk_size)
        return HybridOutput(rewards, logps, counts)

    @torch.no_grad()
    def reference_logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """Response log-probs under the reference policy: the frozen copy, or the base with LoRA adapters off."""
        if self.reference_model is not None:
            reference = self.reference_model
            context = nullcontext()
        elif self.is_peft:
            reference = self.causal_lm
            context = self.policy.disable_adapter()
        else:
            raise RuntimeError("no reference policy: precompute reference log-probs, use LoRA, or keep a frozen copy")
        with context, _eval_mode(reference):
            body = getattr(reference, reference.base_model_prefix)
            hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            logps, _ = response_logps(hidden, input_ids, response_mask, reference.get_output_embeddings(), self.logprob_chunk_size)
        return logps

    # ------------------------------------------------------------------ checkpoints (training state)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA weights + reward head, or everything under full fine-tuning)."""
        return {name: p.detach().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"checkpoint does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ export

    def export(self, output_dir: str | Path, tokenizer, metadata: dict, save_policy: bool = True) -> Path:
        """Write reward_model/, policy/, adapter/ (LoRA) and hafrm.json. LoRA adapters are merged in place."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.score.weight.detach().contiguous()}, output_dir / REWARD_HEAD_FILE)
        if self.is_peft:
            self.policy.save_pretrained(output_dir / "adapter")
            self.policy = self.policy.merge_and_unload()
        save_sequence_classifier(self.causal_lm, self.score, tokenizer, output_dir / "reward_model")
        if save_policy:
            self.causal_lm.save_pretrained(output_dir / "policy")
            tokenizer.save_pretrained(output_dir / "policy")
        (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
        return output_dir


@contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def save_sequence_classifier(causal_lm: nn.Module, score: nn.Linear, tokenizer, directory: Path) -> None:
    """Save backbone + reward head as an AutoModelForSequenceClassification (num_labels=1, head `score`).

    The classifier is built on the meta device and takes the trained tensors by assignment, so no
    second copy of the weights is allocated.
    """
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    config.architectures = None
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(config, dtype=causal_lm.dtype)
    body = getattr(causal_lm, causal_lm.base_model_prefix)
    getattr(classifier, classifier.base_model_prefix).load_state_dict(body.state_dict(), assign=True)
    classifier.score.load_state_dict(score.state_dict(), assign=True)
    classifier.save_pretrained(directory)
    tokenizer.save_pretrained(directory)

"""The hybrid model: one causal-LM backbone (phi) shared by the policy head K and a scalar reward head F.

One forward pass yields both the rewards (F on the hidden state of each response's last token) and the
response log-probs (K on response positions only, so full-vocabulary logits are never built for prompt
tokens). With prompt sharing a pair is one row, [prompt | chosen | rejected], under a block mask.

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
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from hafrm.data.encoding import PAD, PROMPT, REJECTED, RESPONSE, PairCollator, ensure_chat_template
from hafrm.io.atomic import staged_parts, write_atomically
from hafrm.io.export import (
    ADAPTER_DIR,
    POLICY_DIR,
    REWARD_ADAPTER_DIR,
    REWARD_MODEL_DIR,
    save_causal_lm,
    save_reward_adapter,
    save_sequence_classifier,
)
from hafrm.io.filechecks import first_line
from hafrm.model.trunk import FrozenTrunk

logger = logging.getLogger(__name__)

LOGIT_CHUNK_BYTES = 64 * 2**20  # fp32 logits per chunk of a no-grad pass or of a recomputed chunk (plus temporaries)
# Under autograd, a forward's response logits up to this size are kept for backward. Above it each chunk's logits
# are recomputed in backward instead: one more LM-head matmul per response token, for a large vocabulary times many
# tokens (a 128k vocabulary, 16 x 512 response tokens: 4 GiB per forward).
KEPT_LOGITS_BYTES = 2 * 2**30
REWARD_HEAD_FILE = "reward_head.safetensors"
REWARD_HEAD_INITS = ("normal", "zeros")
LAST_TOKEN, PADDED_LAST_COLUMN = "last-token", "ablation-padded-last-column"
REWARD_READOUTS = (LAST_TOKEN, PADDED_LAST_COLUMN)
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


# ---------------------------------------------------------------------- sequence layout
#
# A batch row is [prompt | response] or, with prompt sharing, [prompt | chosen | rejected]: the prompt is computed
# once for both responses. segment_ids (B, T) say which part each token is (data/encoding.py writes them); the
# rejected response sees the prompt and itself, never the chosen one, and its positions continue from the prompt.


def response_ends(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where rewards are read: (rows, positions) of the last token of every response, chosen (or single) responses
    of all rows first, then rejected ones. This is the one rule for every path (training, evaluation, scoring,
    serving, RLHF rewards): the last token of the formatted conversation. The pad token never occurs in text
    (`pretrained.choose_pad_token`), so transformers' *ForSequenceClassification, which reads the last non-pad
    token, reads the same token in an exported model."""
    positions = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    rows, ends = [], []
    for segment in (RESPONSE, REJECTED):
        inside = segment_ids == segment
        present = inside.any(dim=1)
        rows.append(present.nonzero().squeeze(1))
        ends.append((positions * inside).argmax(dim=1)[present])
    return torch.cat(rows), torch.cat(ends)


def last_columns(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper code's readout, for the PADDED_LAST_COLUMN ablation only: (rows, positions) of the last column of
    every separate row, chosen rows then rejected ones. In a right-padded batch a row shorter than the widest is
    read at a pad position, not at its last token."""
    if (segment_ids == REJECTED).any():
        raise ValueError("the padded-last-column readout reads separate rows, not shared-prompt ones")
    rows = torch.arange(segment_ids.shape[0], device=segment_ids.device)
    return rows, torch.full_like(rows, segment_ids.shape[1] - 1)


def response_tokens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every response token the policy head scores: (row, predicting position, token position, response index).

    A token is predicted from the position before it, except the first rejected token, which is predicted from
    the last prompt token (the rejected response continues the prompt, not the chosen one). A response's first
    token with no prompt before it is not scored. The response index follows `response_ends`' order.
    """
    batch, width = segment_ids.shape
    positions = torch.arange(width, device=segment_ids.device).expand(batch, width)
    is_prompt = segment_ids == PROMPT
    last_prompt = torch.where(is_prompt.any(dim=1, keepdim=True), (positions * is_prompt).amax(dim=1, keepdim=True), -1)
    previous = torch.cat([segment_ids.new_full((batch, 1), PAD), segment_ids[:, :-1]], dim=1)
    first_rejected = (segment_ids == REJECTED) & (previous != REJECTED)
    predictor = torch.where(first_rejected, last_prompt, positions - 1)
    predicted_from = segment_ids.gather(1, predictor.clamp(min=0))
    scored = (segment_ids >= RESPONSE) & (predictor >= 0) & (predicted_from != PAD)
    rows, columns = scored.nonzero(as_tuple=True)
    has_response, has_rejected = (segment_ids == RESPONSE).any(dim=1), (segment_ids == REJECTED).any(dim=1)
    response_index = torch.cumsum(has_response, 0) - 1
    rejected_index = has_response.sum() + torch.cumsum(has_rejected, 0) - 1
    output = torch.where(segment_ids[rows, columns] == REJECTED, rejected_index[rows], response_index[rows])
    return rows, predictor[rows, columns], columns, output


FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"  # transformers' names of layer kinds


def attention_windows(config) -> dict[str, int | None] | None:
    """The attention kinds of the model's layers, each with how far back (in positions) a query sees: None for the
    whole past. Gemma 2/3, Qwen2 and SmolLM3 name each layer's kind in `layer_types`; Mistral, Phi-3 and
    Starcoder2 apply their `sliding_window` on every layer. None where a kind is one hafrm builds no mask for
    (chunked or linear attention): such a model does not share prompts."""
    text = config.get_text_config()
    window = getattr(text, "sliding_window", None)
    if window and window >= getattr(text, "max_position_embeddings", float("inf")):
        window = None  # wider than any position (Phi-3.5-mini: 262,144 of 131,072): the whole past
    kinds = set(getattr(text, "layer_types", None) or [SLIDING_ATTENTION if window else FULL_ATTENTION])
    if not kinds <= {FULL_ATTENTION, SLIDING_ATTENTION}:
        return None
    return {kind: window if kind == SLIDING_ATTENTION else None for kind in kinds}


def allowed_keys(segment_ids: torch.Tensor, position_ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, T, T) which keys each query sees in [prompt | chosen | rejected] rows: causal, no padding, the rejected
    response never the chosen one, and within `window` counted in positions, not row indices (a rejected token at
    position p sees the prompt tokens a model's own window at p would, however long the chosen response is)."""
    width = segment_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = causal & (key != PAD) & ~((query == REJECTED) & (key == RESPONSE))
    if window is not None:
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < window
    return allowed | torch.eye(width, dtype=torch.bool, device=segment_ids.device)  # pad rows see themselves


def mask_for_kernel(allowed: torch.Tensor, attn_implementation: str, dtype: torch.dtype):
    """A (B, T, T) boolean mask in the form the attention implementation reads (transformers passes a 4D mask
    through as given, so the model applies no window of its own on top)."""
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q, k):
            return allowed[b, q, k]

        batch, width = allowed.shape[:2]
        return create_block_mask(mask_mod, batch, None, width, width, device=allowed.device)
    if attn_implementation == "sdpa":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


def attention_mask_for(segment_ids: torch.Tensor, position_ids: torch.Tensor | None, config, dtype: torch.dtype):
    """The attention mask the backbone takes: the 2D padding mask when no row shares its prompt (the model adds
    causality and its window itself), else a 4D block mask per attention kind of its layers, one mask where all
    layers are of one kind, else {kind: mask} as transformers' models with mixed layers (Gemma 2/3) take it."""
    if not (segment_ids == REJECTED).any():
        return (segment_ids != PAD).long()
    if position_ids is None:
        raise ValueError("shared-prompt rows need their position_ids (the rejected response restarts after the prompt)")
    masks = {
        kind: mask_for_kernel(allowed_keys(segment_ids, position_ids, window), config._attn_implementation, dtype)
        for kind, window in attention_windows(config).items()
    }
    return next(iter(masks.values())) if len(masks) == 1 else masks


SHARED_PROMPT_ATTENTION = ("sdpa", "eager", "flex_attention")  # implementations that honour a custom 4D mask


SHARING_CHECK_SPAN = 64  # tokens per conversation of the start-up check's pair where the model has no window


def synthetic_pair(vocab_size: int, span: int) -> dict:
    """An encoded pair whose conversations (prompt + response) are each wider than `span` tokens, with responses of
    one length (so separate rows need no padding), of random token ids drawn with a fixed seed."""
    prompt_length, response_length = span // 2 + 1, span // 2 + 8
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab_size, (prompt_length + 2 * response_length,), generator=generator).tolist()
    prompt, chosen, rejected = ids[:prompt_length], ids[prompt_length:-response_length], ids[-response_length:]
    return {
        "chosen_input_ids": prompt + chosen,
        "rejected_input_ids": prompt + rejected,
        "prompt_length": prompt_length,
        "margin": 0.0,
    }


def prompt_sharing_problem(model: HybridRewardModel) -> str | None:
    """Why [prompt | chosen | rejected] rows would give this model other numbers than separate rows, or None.

    One synthetic pair, each conversation wider than the widest attention window of the model's layers (64 tokens
    where it has none), goes through both layouts on the model's device; the last hidden state of every response
    token (what rewards and log-probs are read from) must agree, token by token, within the dtype's rounding.
    """
    windows = [window for window in attention_windows(model.config).values() if window]
    pair = synthetic_pair(
        model.causal_lm.get_input_embeddings().num_embeddings, max(windows, default=SHARING_CHECK_SPAN)
    )
    device = model.score.weight.device
    hidden = {}
    try:
        with torch.no_grad(), eval_mode(model):
            for share in (True, False):
                batch = {k: v.to(device) for k, v in PairCollator(0, "right", share)([pair]).items()}
                hidden[share] = model.hidden_states(
                    model.backbone, batch["input_ids"], batch["segment_ids"], batch.get("position_ids")
                ).float()
    except torch.OutOfMemoryError:
        raise  # a device too small for one synthetic pair is no verdict on the layout
    except Exception as error:  # e.g. a model that takes no {layer kind: mask} mapping
        logger.debug("the shared layout failed", exc_info=True)
        return f"the shared layout fails: {first_line(error)}"
    start = pair["prompt_length"]
    shared = hidden[True][0, start:]  # chosen then rejected tokens
    separate = torch.cat([hidden[False][0, start:], hidden[False][1, start:]])
    error = ((shared - separate).norm(dim=-1) / separate.norm(dim=-1).clamp(min=1e-6)).max().item()
    tolerance = 1e-3 if model.score.weight.dtype == torch.float32 else 5e-2
    if not error <= tolerance:  # NaN included
        return f"response hidden states differ by up to {error:.2g} of their norm ({len(shared)} tokens)"
    return None


class TokenLogps(torch.autograd.Function):
    """(N,) log softmax(logits)[target] of (N, V) logits, with log-sum-exp taken `chunk` rows at a time so its
    temporaries stay small. Backward writes the softmax gradient into the saved logits in place, so it makes no new
    (N, V) tensor where autograd's gather-minus-logsumexp makes several; the logits must serve nothing else."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        lse = torch.cat([torch.logsumexp(piece, dim=-1) for piece in logits.split(chunk)])
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        if getattr(ctx, "used", False):  # the saved logits are the gradient now (autograd's own check can be off)
            raise RuntimeError("TokenLogps' backward runs once per forward: its logits became the gradient")
        ctx.used = True
        logits, targets, lse = ctx.saved_tensors
        # d logp_i / d logit_ij = [j == target_i] - softmax_ij
        grad_logits = logits.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        return grad_logits.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1)), None, None


# The step a family's forward takes after its LM head, by config.model_type: (config field, operation). A family
# not listed gets the bare head; if its forward does take such a step, check_policy_logits refuses it.
POST_HEAD_STEPS = {
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), ("logit_scale", "multiply")),
    **dict.fromkeys(
        ("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared"),
        ("logits_scaling", "divide"),
    ),
    **dict.fromkeys(
        ("gemma2", "gemma3_text", "gemma3n", "gemma3n_text", "gemma4", "gemma4_text", "vaultgemma"),
        ("final_logit_softcapping", "softcap"),
    ),
}


def post_head_step(causal_lm: nn.Module) -> tuple[str, float] | None:
    """(operation, value) that the model's forward applies to its LM head's output, or None."""
    known = POST_HEAD_STEPS.get(causal_lm.config.model_type)
    value = getattr(causal_lm.config.get_text_config(), known[0], None) if known else None
    return None if value is None else (known[1], value)


def policy_logits(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits as the causal LM's own forward makes them from its last hidden states: the LM head, then the step
    some families take after it (Cohere's logit_scale, Granite's logits_scaling, Gemma's final_logit_softcapping),
    in the same operations and dtype as the forward."""
    logits = causal_lm.get_output_embeddings()(hidden)
    step = post_head_step(causal_lm)
    if step is None:
        return logits
    operation, value = step
    if operation == "multiply":
        return logits * value
    if operation == "divide":
        return logits / value
    return torch.tanh(logits / value) * value


def check_policy_logits(causal_lm: nn.Module) -> None:
    """Raise if `policy_logits` does not give the logits of the model's own forward: every log-prob hafrm takes
    (the policy loss, the reference, the implicit reward) would belong to another policy. Probed on a few tokens;
    skipped for weights not materialised on this process (meta, DeepSpeed ZeRO-3 partitions)."""
    weight = causal_lm.get_output_embeddings().weight
    if weight.device.type == "meta" or weight.numel() == 0:
        return
    input_ids = torch.arange(1, 9, device=weight.device).remainder(weight.shape[0])[None]
    with torch.no_grad(), eval_mode(causal_lm):
        expected = causal_lm(input_ids=input_ids, use_cache=False).logits
        body = getattr(causal_lm, causal_lm.base_model_prefix)
        ours = policy_logits(causal_lm, body(input_ids=input_ids, use_cache=False).last_hidden_state)
    # the same operations in the same dtype agree to rounding; a missing or extra step differs by far more.
    # Non-finite logits (broken weights) match where both are NaN: training's own checks report those.
    tolerance = max(1e-3, 4 * torch.finfo(expected.dtype).eps)
    expected, ours = expected.float(), ours.float()
    finite = expected[expected.isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    comparable = ours.shape == expected.shape
    same = comparable and torch.allclose(ours, expected, rtol=tolerance, atol=tolerance * scale, equal_nan=True)
    if not same:
        name = f"{type(causal_lm).__name__} (model_type {causal_lm.config.model_type!r})"
        problem = (
            f"{name} turns hidden states into logits in a way hafrm does not repeat (largest difference "
            f"{(ours - expected).abs().max().item():.3g} on a probe of 8 tokens)"
            if comparable
            else f"{name} returned logits of shape {tuple(expected.shape)} for 8 tokens"
        )
        raise ValueError(
            f"{problem}, so hafrm's response log-probs would not be the model's; the policy loss and the implicit "
            "reward need them. `method: baseline` trains the reward head alone."
        )


def _token_logps(hidden: torch.Tensor, targets: torch.Tensor, causal_lm: nn.Module, chunk: int) -> torch.Tensor:
    return TokenLogps.apply(policy_logits(causal_lm, hidden).float(), targets, chunk)


def fp32_logits_bytes(tokens: int, vocab_size: int) -> int:
    return 4 * tokens * vocab_size


def logprob_chunk_tokens(vocab_size: int) -> int:
    """Response tokens per LM-head chunk, so one chunk's fp32 logits stay within LOGIT_CHUNK_BYTES."""
    return max(16, LOGIT_CHUNK_BYTES // fp32_logits_bytes(1, vocab_size))


def response_logps(
    hidden: torch.Tensor, input_ids: torch.Tensor, segment_ids: torch.Tensor, causal_lm: nn.Module, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) summed log-probs of each response's tokens and (N,) their counts, in `response_ends`' order.

    The LM head runs only on the positions that predict response tokens. Under autograd their logits are kept for
    backward while they fit in KEPT_LOGITS_BYTES, and one matrix product covers all of them; beyond that, and
    without autograd, the head runs `chunk_size` tokens at a time (recomputing each chunk in backward under
    autograd, one more LM-head product per token), so only a chunk's logits are alive at once.
    """
    rows, predictors, targets, outputs = response_tokens(segment_ids)
    hidden, targets = hidden[rows, predictors], input_ids[rows, targets]
    grad = torch.is_grad_enabled()
    vocab_size = causal_lm.get_output_embeddings().out_features  # weight.shape is empty under ZeRO-3
    step = post_head_step(causal_lm)
    copies = 2 if step and step[0] == "softcap" else 1  # tanh keeps its output for backward too
    recompute = grad and copies * fp32_logits_bytes(hidden.shape[0], vocab_size) > KEPT_LOGITS_BYTES
    group = chunk_size if recompute or not grad else max(hidden.shape[0], 1)
    pieces = []
    for start in range(0, hidden.shape[0], group):
        h, t = hidden[start : start + group], targets[start : start + group]
        if recompute:
            pieces.append(checkpoint(_token_logps, h, t, causal_lm, chunk_size, use_reentrant=False))
        else:
            pieces.append(_token_logps(h, t, causal_lm, chunk_size))
    token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0)
    count = int((segment_ids == RESPONSE).any(dim=1).sum() + (segment_ids == REJECTED).any(dim=1).sum())
    logps = torch.zeros(count, dtype=token_logps.dtype, device=input_ids.device).index_add(0, outputs, token_logps)
    counts = torch.zeros(count, dtype=torch.long, device=input_ids.device).index_add(
        0, outputs, torch.ones_like(outputs)
    )
    return logps, counts


class HybridRewardModel(nn.Module):
    """Causal LM (optionally PEFT-wrapped) plus a linear reward head on its last hidden state."""

    def __init__(
        self,
        policy: nn.Module,
        score: nn.Linear,
        logprob_chunk_size: int | None = None,
        reward_readout: str = LAST_TOKEN,
    ):
        super().__init__()
        if reward_readout not in REWARD_READOUTS:
            raise ValueError(f"reward_readout must be one of {', '.join(REWARD_READOUTS)}, got {reward_readout!r}")
        self.policy = policy
        self.score = score
        self.reward_readout = reward_readout
        self.logprob_chunk_size = logprob_chunk_size or logprob_chunk_tokens(
            self.causal_lm.get_output_embeddings().out_features
        )
        self.reference_model: nn.Module | None = None
        self.trunk: FrozenTrunk | None = None
        self._sharing_checked = False
        self._sharing_problem: str | None = None  # what check_prompt_sharing found

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_causal_lm(
        cls,
        causal_lm: nn.Module,
        lora: LoraSettings | None = None,
        score: nn.Linear | None = None,
        head_init: str = "normal",
        reward_readout: str = LAST_TOKEN,
    ) -> HybridRewardModel:
        """Attach a fresh reward head (head_init normal: std 1/sqrt(hidden+1); zeros: the paper code's) and, if
        asked, LoRA adapters to a causal LM."""
        if head_init not in REWARD_HEAD_INITS:
            raise ValueError(f"head_init must be one of {', '.join(REWARD_HEAD_INITS)}, got {head_init!r}")
        if score is None:
            hidden = causal_lm.config.get_text_config().hidden_size
            score = nn.Linear(hidden, 1, bias=False, dtype=causal_lm.dtype)
            if head_init == "zeros":
                nn.init.zeros_(score.weight)
            else:
                nn.init.normal_(score.weight, std=1 / math.sqrt(hidden + 1))
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            causal_lm = get_peft_model(
                causal_lm,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
        return cls(causal_lm, score, reward_readout=reward_readout)

    @classmethod
    def from_pretrained(
        cls, output_dir: str | Path, dtype: torch.dtype = torch.float32, attention: str = "auto"
    ) -> HybridRewardModel:
        """Load a directory written by `export` (its policy/ and reward head); attention as `load_causal_lm`."""
        from hafrm.io.pretrained import load_causal_lm

        output_dir = Path(output_dir)
        causal_lm = load_causal_lm(str(output_dir / POLICY_DIR), dtype, attention)
        weight = load_file(output_dir / REWARD_HEAD_FILE)["weight"].to(dtype)
        score = nn.Linear(weight.shape[1], 1, bias=False, dtype=dtype)
        score.weight.data.copy_(weight)
        return cls(causal_lm, score)

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

    @property
    def shares_prompts(self) -> bool:
        """Whether a pair can be one row [prompt | chosen | rejected]: the attention must honour a block mask, hafrm
        must know every kind of its layers, and `check_prompt_sharing` (run now if it has not run) must find the
        shared layout gives what separate rows give."""
        return self.check_prompt_sharing()

    def _sharing_refusal(self) -> str | None:
        if self.reward_readout == PADDED_LAST_COLUMN:
            return f"reward_readout {PADDED_LAST_COLUMN} reads separate right-padded rows"
        if self.config._attn_implementation not in SHARED_PROMPT_ATTENTION:
            return f"attention {self.config._attn_implementation!r} cannot take a block mask"
        if attention_windows(self.config) is None:
            kinds = sorted(set(self.config.get_text_config().layer_types))
            return f"hafrm builds no block mask for layers of kind {kinds}"
        return self._sharing_problem

    def check_prompt_sharing(self) -> bool:
        """Whether pairs share their prompt, found once on this model where its weights are (`prompt_sharing_problem`):
        where they cannot, or the check finds a mismatch, chosen and rejected become separate rows, with a log line
        (slower, never wrong). Call it after the model is on its device, before batches are built."""
        if not self._sharing_checked:
            self._sharing_checked = True
            if self._sharing_refusal() is None:
                self._sharing_problem = prompt_sharing_problem(self)
            if self._sharing_refusal() is not None:
                logger.warning("Chosen and rejected are computed as separate rows: %s", self._sharing_refusal())
        return self._sharing_refusal() is None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.causal_lm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False}
        )
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

    def freeze_trunk(self, num_layers: int) -> None:
        """Freeze the embeddings and the bottom num_layers layers (freeze tuning); their output can be replayed.
        An LM head tied to the input embeddings (SmolLM2, Gemma, ...) is the same weight, so it is frozen with them."""
        self.trunk = FrozenTrunk(self.backbone, num_layers)
        if not self.causal_lm.get_output_embeddings().weight.requires_grad:
            logger.info(
                "The LM head shares its weight with the frozen input embeddings (tied), so it stays frozen: the "
                "policy loss trains the layers above the bottom %d, not the head",
                num_layers,
            )

    def check_policy_logits(self) -> None:
        """`check_policy_logits` on this model's policy, once (where its weights are, so on the GPU in training)."""
        if not getattr(self, "_policy_logits_checked", False):
            check_policy_logits(self.causal_lm)
            self._policy_logits_checked = True

    def keep_frozen_reference(self) -> None:
        """Keep a frozen copy of the initial policy as the DPO reference (full fine-tuning, no precomputation)."""
        self.reference_model = copy.deepcopy(self.causal_lm).eval().requires_grad_(False)

    # ------------------------------------------------------------------ forward

    def hidden_states(
        self, body: nn.Module, input_ids: torch.Tensor, segment_ids: torch.Tensor, position_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, T, H) last hidden states of a backbone for a batch in the layout of `segment_ids`."""
        mask = attention_mask_for(segment_ids, position_ids, self.config, self.score.weight.dtype)
        return body(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        with_logps: bool = True,
        trunk_states: torch.Tensor | None = None,
    ) -> HybridOutput:
        """Rewards (and response log-probs) of every response in the batch, in `response_ends`' order.

        trunk_states: (B, T, H) cached output of the frozen trunk for this batch; the frozen layers then replay it.
        """
        with self.trunk.replaying(trunk_states) if trunk_states is not None else nullcontext():
            hidden = self.hidden_states(self.backbone, input_ids, segment_ids, position_ids)
        rows, ends = (last_columns if self.reward_readout == PADDED_LAST_COLUMN else response_ends)(segment_ids)
        rewards = self.score(hidden[rows, ends].to(self.score.weight.dtype)).squeeze(-1).float()
        if not with_logps:
            return HybridOutput(rewards, None, None)
        logps, counts = response_logps(hidden, input_ids, segment_ids, self.causal_lm, self.logprob_chunk_size)
        return HybridOutput(rewards, logps, counts)

    @torch.no_grad()
    def reference_logps(
        self, input_ids: torch.Tensor, segment_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Response log-probs under the reference policy: the frozen copy, or the base with LoRA adapters off."""
        if self.reference_model is not None:
            reference = self.reference_model
            context = nullcontext()
        elif self.is_peft:
            reference = self.causal_lm
            context = self.policy.disable_adapter()
        else:
            raise RuntimeError("no reference policy: precompute reference log-probs, use LoRA, or keep a frozen copy")
        with context, eval_mode(reference):
            hidden = self.hidden_states(
                getattr(reference, reference.base_model_prefix), input_ids, segment_ids, position_ids
            )
            logps, _ = response_logps(hidden, input_ids, segment_ids, reference, self.logprob_chunk_size)
        return logps

    # ------------------------------------------------------------------ checkpoints (training state)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA weights + reward head, or everything under full fine-tuning)."""
        return {name: p.detach().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"checkpoint does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if self.is_fully_sharded:  # FSDP2: every process loads the full tensors and keeps its shard of each
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self, state, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            self.load_state_dict(state, strict=False)

    @property
    def is_fully_sharded(self) -> bool:
        """Whether torch's FSDP2 (`fully_shard`) holds this model's parameters as shards (DTensors)."""
        from torch.distributed.tensor import DTensor

        return any(isinstance(p, DTensor) for p in self.parameters())

    # ------------------------------------------------------------------ export

    def export(
        self,
        output_dir: str | Path,
        tokenizer,
        metadata: dict,
        save_policy: bool = True,
        extra_files: dict[str, str] | None = None,
    ) -> Path:
        """Write reward_model/, policy/, adapter/ and reward_adapter/ (LoRA), the reward head, `extra_files`
        (name -> text) and hafrm.json, whole or not at all: every part is built in a staging folder and renamed into
        place, and hafrm.json, the mark of a finished export, comes last. LoRA adapters are merged in place. A
        tokenizer without a chat template is saved with the HH text format training gives it."""
        output_dir = Path(output_dir)
        tokenizer = ensure_chat_template(tokenizer)
        with staged_parts(output_dir, METADATA_FILE) as staging:
            save_file({"weight": self.score.weight.detach().contiguous()}, staging / REWARD_HEAD_FILE)
            if self.is_peft:
                self.policy.save_pretrained(staging / ADAPTER_DIR)
                save_reward_adapter(self.policy, self.score, tokenizer, staging / REWARD_ADAPTER_DIR)
                self.policy = self.policy.merge_and_unload()
            save_sequence_classifier(self.causal_lm, self.score, tokenizer, staging / REWARD_MODEL_DIR, metadata)
            if save_policy:
                save_causal_lm(self.causal_lm, tokenizer, staging / POLICY_DIR)
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text)
        text = json.dumps(metadata, indent=2, default=str)
        write_atomically(output_dir / METADATA_FILE, lambda path: path.write_text(text))
        return output_dir


@contextmanager
def eval_mode(module: nn.Module):
    """Within the block the module is in eval mode; its training flag is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)

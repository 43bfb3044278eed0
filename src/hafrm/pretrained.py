"""Load tokenizers and causal LMs: the embedded default, a local folder, or a hub name."""

from __future__ import annotations

import torch

from hafrm.defaults import default_model_path


def resolve_model_path(model: str | None) -> str:
    """None means the embedded default model (converted to fp32 on first use)."""
    return str(default_model_path()) if model in (None, "", "default") else model


def resolve_dtype(dtype: str) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, else fp32 (bf16 matmuls are ~25x slower on CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}") from None


def load_tokenizer(path: str):
    """The model's tokenizer with a pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

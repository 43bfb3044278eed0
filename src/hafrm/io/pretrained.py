"""Load tokenizers and causal LMs: the embedded default, a local folder, or a hub name."""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from hafrm.io.defaults import default_model_path
from hafrm.io.export import POLICY_DIR
from hafrm.io.filechecks import check_model_folder, first_line
from hafrm.io.remote_code import remote_code_refused, remote_code_trusted

logger = logging.getLogger(__name__)


def resolve_model_path(model: str | None) -> str:
    """None means the embedded default model (converted to fp32 on first use)."""
    return str(default_model_path()) if model in (None, "", "default") else model


def resolve_policy_path(policy: str | None) -> str:
    """A causal LM to sample from: a model folder or hub name, a hafrm output folder's policy/, or (None) the
    embedded model."""
    path = resolve_model_path(policy)
    return str(Path(path) / POLICY_DIR) if (Path(path) / POLICY_DIR).is_dir() else path


def resolve_dtype(dtype: str) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, else fp32 (bf16 matmuls are ~25x slower on CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {
            "fp32": torch.float32,
            "float32": torch.float32,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
        }[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}") from None


PAD_FALLBACK_TOKEN = "<|pad|>"


@contextmanager
def named_if_missing(path: str):
    """A name that is no local folder and could not be loaded from the hub either is one line saying both, instead
    of the hub client's words about connections or repo-id syntax."""
    try:
        yield
    except (OSError, ValueError) as error:
        if Path(path).expanduser().exists() or "trust_remote_code" in str(error):
            raise
        raise ValueError(
            f"{path}: no such local model folder, and no hub model of that name could be loaded ({first_line(error)})"
        ) from None


def load_tokenizer(path: str):
    """The model's tokenizer with a pad token that can never be part of a conversation (see `choose_pad_token`)."""
    from transformers import AutoTokenizer

    with remote_code_refused(path), named_if_missing(path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code_trusted())
    tokenizer.pad_token = choose_pad_token(tokenizer)
    return tokenizer


def choose_pad_token(tokenizer) -> str:
    """A pad token that never appears inside a formatted conversation.

    Rewards are read at the last real token. Our own code finds it from the attention mask, but
    transformers' *ForSequenceClassification (and so every tool that loads our export) takes the last
    token that is not the pad id: if padding is EOS, a sequence that ends in EOS (every HH-format pair,
    every policy rollout) is read one token early. So padding must be a token no text contains. In order:
    the tokenizer's own pad if it is not EOS/BOS and not used by the chat template; a special token named
    like a pad; an unknown token distinct from EOS/BOS (byte-fallback tokenizers never emit it); any other
    special token the chat template does not use; else a new `<|pad|>` token, which adds one embedding
    row (`fit_embeddings`), as TRL's docs advise for models without one.
    """
    used = {tokenizer.eos_token, tokenizer.bos_token}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""

    def usable(token) -> bool:
        return bool(token) and token not in used and token not in template

    if usable(tokenizer.pad_token):
        return tokenizer.pad_token
    special = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items()) if t.special]
    for candidate in [t for t in special if "pad" in t.lower()] + [tokenizer.unk_token] + special:
        if usable(candidate):
            return candidate
    tokenizer.add_special_tokens({"pad_token": PAD_FALLBACK_TOKEN})
    return PAD_FALLBACK_TOKEN


def fit_embeddings(causal_lm, tokenizer) -> None:
    """Grow the embeddings when the tokenizer gained a pad token the model has no row for.

    New rows are the mean of the existing ones (deterministic, so a policy and its reference grown apart
    stay equal); the pad row's input embedding is never attended to.
    """
    old = causal_lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    causal_lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for embedding in {
            id(e): e for e in (causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()) if e is not None
        }.values():
            embedding.weight[old:] = embedding.weight[:old].mean(dim=0)


def inference_device(device: str | None = None) -> torch.device:
    """The device to load a model on for scoring or sampling: the one asked for, else the GPU where there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def attention_request(attention: str | None) -> str | None:
    """The attn_implementation to ask transformers for; None leaves its default (sdpa where the model has it).

    auto: flex_attention on a CUDA GPU, where it skips the blocks that the shared-prompt mask leaves out (SDPA given
    a custom mask falls back to its dense kernels there); on a CPU transformers' default, since torch has no flex
    attention backward there (benchmarks/compile_probe.py)."""
    if attention != "auto":
        return attention
    flex = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    return "flex_attention" if flex and torch.cuda.is_available() else None


def check_attention_trains(attention: str | None, device: torch.device) -> None:
    """Refuse, before any work, an attention kernel that cannot train on the run's device: torch's flex attention
    has no backward on a CPU (up to at least torch 2.13) and would fail only in the first training step."""
    if attention != "flex_attention" or device.type != "cpu":
        return
    from torch.nn.attention.flex_attention import flex_attention

    probe = torch.zeros(1, 1, 16, 16, requires_grad=True)
    try:  # torch refuses at once, before computing anything
        flex_attention(probe, probe, probe)
    except NotImplementedError as error:
        raise ValueError(
            f"attn_implementation flex_attention cannot train on a CPU with this torch ({first_line(error)}): "
            "use sdpa or auto there; flex_attention is for GPUs (evaluation on a CPU can use it)"
        ) from None


def load_causal_lm(path: str, dtype: torch.dtype, attention: str | None = None):
    """A causal LM with the attention `attention_request` picks; under auto, a model whose class cannot run flex
    attention gets transformers' default instead, with a log line."""
    from transformers import AutoModelForCausalLM

    requested = attention_request(attention)
    try:
        return load_pretrained(AutoModelForCausalLM, path, dtype, requested)
    except (ValueError, ImportError):
        if attention != "auto" or requested != "flex_attention":
            raise
        logger.info("%s cannot run flex_attention: using transformers' default attention instead", path)
        return load_pretrained(AutoModelForCausalLM, path, dtype)


def load_pretrained(auto_class, path: str, dtype: torch.dtype, attention: str | None = None, loading_info=False):
    """A model from a local folder or the hub, never unpickling when safetensors weights are there.

    use_safetensors=True where the folder has .safetensors files makes pickle safety independent of library
    defaults; a folder with only pickled weights is read with torch's weights-only unpickler, and a file it
    refuses (objects other than tensors) is one clear error, as are a missing folder and truncated weights.
    """
    import pickle

    check_model_folder(str(path))
    use_safetensors = True if any(Path(path).expanduser().glob("*.safetensors")) else None
    try:
        kwargs = {"attn_implementation": attention} if attention else {}
        if loading_info:  # then (model, {"missing_keys": ..., ...}) is returned
            kwargs["output_loading_info"] = True
        with remote_code_refused(path):
            return auto_class.from_pretrained(
                path, dtype=dtype, use_safetensors=use_safetensors, trust_remote_code=remote_code_trusted(), **kwargs
            )
    except pickle.UnpicklingError as error:
        refused = next((line for line in str(error).splitlines() if "GLOBAL" in line), first_line(error))
        raise ValueError(
            f"{path}: refused to unpickle its weights, which hold more than tensors ({refused.strip()}); "
            "use a safetensors copy from a trusted source"
        ) from None

"""Tiny randomly initialised models for tests, benchmarks and compatibility checks: every code path of a real
model, in milliseconds. `tiny_family_model` builds one of each family users train, with small sliding windows, so
the attention rules that depend on the architecture (masks, windows, layer kinds, heads, export) are exercised."""

from __future__ import annotations

TINY_WINDOW = 24  # tokens: HH conversations are wider, short base-format ones narrower
_SLIDING = {"sliding_window": TINY_WINDOW}
# family: (config class, causal-LM class, config overrides), all of hidden size 64 and 2 layers
TINY_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", _SLIDING),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # use_sliding_window off, as in every released Qwen2/2.5
    "qwen2-sliding": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {"use_sliding_window": True, "max_window_layers": 1, **_SLIDING},  # layer 0 full, layer 1 sliding
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, **_SLIDING}),  # sliding, then full
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"head_dim": 16, "layer_types": ["sliding_attention", "full_attention"], **_SLIDING},
    ),
    "phi": ("PhiConfig", "PhiForCausalLM", {"num_key_value_heads": 4}),
    "phi3-window": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, **_SLIDING}),
    "starcoder2-window": ("Starcoder2Config", "Starcoder2ForCausalLM", _SLIDING),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "mixtral-window": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, **_SLIDING}),
    "qwen3-moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    ),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {}),
}
_LLAMA_LIKE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def tiny_family_model(family: str, vocab_size: int, attention: str | None = None, seed: int = 0):
    """A tiny random causal LM of one of TINY_FAMILIES, in fp32 and eval mode, with the given attention kernel
    (None: transformers' default for the family)."""
    import torch
    import transformers

    config_name, model_name, overrides = TINY_FAMILIES[family]
    torch.manual_seed(seed)
    settings = {} if family == "gpt2" else dict(_LLAMA_LIKE)
    settings.update(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config = getattr(transformers, config_name)(**{**settings, **overrides})
    if attention is not None:
        config._attn_implementation = attention
    return getattr(transformers, model_name)(config).float().eval()


def tiny_llama(vocab_size: int, model_class=None, seed: int = 0, **config):
    """A 2-layer Llama of width 32 (a causal LM unless another class is given); config overrides the defaults."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    defaults = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    return (model_class or LlamaForCausalLM)(LlamaConfig(vocab_size=vocab_size, **{**defaults, **config})).float()

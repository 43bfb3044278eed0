"""A tiny randomly initialised Llama for tests and benchmarks: every code path of a real model, in milliseconds."""

from __future__ import annotations


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

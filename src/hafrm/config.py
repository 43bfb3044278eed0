"""One configuration object for training: defaults from the paper, a YAML file, then CLI overrides."""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hafrm.losses import METHODS, POLICY_LOSSES


@dataclass
class TrainConfig:
    """Everything `hafrm train` needs. Defaults follow the paper's Table 5 where it gives one."""

    # model
    model: str | None = None  # HF hub name or local folder; None = embedded SmolLM2-135M-Instruct
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # dropout on LoRA inputs; on CPU it cost ~19% of a LoRA step (benchmarks/)
    lora_target_modules: str | list[str] = "all-linear"
    dtype: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32 (bf16 is ~25x slower on CPU); fp16: autocast
    gradient_checkpointing: bool = False
    disable_dropout: bool = True  # zero the backbone's dropout, as TRL's trainers do by default
    share_prompt: bool = True  # one row per pair, [prompt | chosen | rejected]: the shared prompt is computed once
    # objective
    method: str = "haf"  # haf | baseline | dpo
    alpha: float = 0.2
    tau: float = 0.1
    policy_loss: str = "sigmoid"  # sigmoid | ipo | hinge | robust | simpo
    label_smoothing: float = 0.0  # label-flip rate: cDPO for sigmoid (TRL 1.16 ignores it there), rDPO for robust, simpo as TRL CPO; refused for ipo/hinge
    simpo_gamma: float = 0.5
    center_rewards_coef: float = 0.0
    use_margin: bool = False
    reference: str = "precompute"  # precompute (cached on disk) | live (LoRA: adapters off; full: frozen copy)
    # data
    train_data: str | None = None  # file, folder or hub name; None = shipped HH-RLHF harmless sample
    eval_data: str | None = None
    data_format: str = "auto"
    column_map: dict[str, str] = field(default_factory=dict)
    eval_fraction: float = 0.1  # held out from train_data when no eval_data is given
    max_length: int = 512
    max_train_pairs: int | None = None
    max_eval_pairs: int | None = None
    on_bad_row: str = "error"  # error | skip
    # optimisation (AdamW)
    learning_rate: float = 1e-5
    batch_size: int = 16  # global pairs per optimiser step
    micro_batch_size: int = 4  # pairs per device per forward pass
    epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = True
    # bookkeeping
    output_dir: str = "outputs/hafrm"
    eval_steps: int | None = None  # None: evaluate once per epoch
    save_steps: int | None = None
    save_total_limit: int | None = 2
    logging_steps: int = 5
    report_to: str | list[str] = "none"  # tensorboard, wandb, mlflow, ... (any transformers integration)
    run_name: str | None = None
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or auto: the newest readable one in output_dir
    overwrite_output_dir: bool = False  # replace a finished or checkpointed run in output_dir (else refused)
    training_args: dict = field(default_factory=dict)  # extra transformers.TrainingArguments, e.g. deepspeed

    def __post_init__(self):
        for name in self.field_names():
            setattr(self, name, self.validated(name, getattr(self, name)))
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a YAML mapping of config fields; `overrides` (e.g. from the CLI) win over the file."""
        values = read_yaml(path)
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{path}: unknown config field(s) {', '.join(unknown)}; known: {', '.join(cls.field_names())}")
        for name, value in values.items():  # the file's own values, so that an error names the file
            if name not in overrides:
                try:
                    cls.validated(name, value)
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from None
        return cls(**{**values, **overrides})

    @classmethod
    def validated(cls, name: str, value):
        """The value of field `name` if it has the field's type and range (ints become floats where a float is
        expected); else a ValueError naming the field. YAML files and protocol runs bypass argparse's types."""
        kind = _field_types()[name]
        if not _has_type(value, kind):
            raise ValueError(f"{name} must be {_describe(kind)}, got {value!r}")
        if kind is float or float in typing.get_args(kind):
            value = float(value) if isinstance(value, int) else value
        limit = _RANGES.get(name)
        if value is not None and limit and not limit[0](value):
            raise ValueError(f"{name} must be {limit[1]}, got {value!r}")
        return value

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Allowed values of fields, beyond their type (None always passes: it means "not set"). Loss parameters
# (alpha, tau, label_smoothing) are checked where the loss is built, which `hafrm train` does first thing.
_RANGES = {
    "method": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    "policy_loss": (lambda v: v in POLICY_LOSSES, f"one of {', '.join(POLICY_LOSSES)}"),
    "reference": (lambda v: v in ("precompute", "live"), "'precompute' or 'live'"),
    "lora_r": (lambda v: v >= 1, "at least 1"),
    "lora_alpha": (lambda v: v > 0, "positive"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eval_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_length": (lambda v: v >= 8, "at least 8"),
    "max_train_pairs": (lambda v: v >= 1, "at least 1"),
    "max_eval_pairs": (lambda v: v >= 1, "at least 1"),
    "learning_rate": (lambda v: v >= 0, "non-negative"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "micro_batch_size": (lambda v: v >= 1, "at least 1"),
    "epochs": (lambda v: v > 0, "positive"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (train for `epochs`) or at least 1"),
    "warmup_ratio": (lambda v: v >= 0, "non-negative"),
    "weight_decay": (lambda v: v >= 0, "non-negative"),
    "max_grad_norm": (lambda v: v >= 0, "non-negative (0: no clipping)"),
    "eval_steps": (lambda v: v >= 1, "at least 1"),
    "save_steps": (lambda v: v >= 1, "at least 1"),
    "save_total_limit": (lambda v: v >= 1, "at least 1"),
    "logging_steps": (lambda v: v >= 1, "at least 1"),
    "on_bad_row": (lambda v: v in ("error", "skip"), "'error' or 'skip'"),
}


@functools.cache
def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def _has_type(value, kind) -> bool:
    """isinstance for the annotations TrainConfig uses; bool is not accepted as a number, nor int as a bool."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, typing.get_args(kind)[0]) for item in value)
    if origin is dict:
        key, item = typing.get_args(kind)
        return isinstance(value, dict) and all(_has_type(k, key) and _has_type(v, item) for k, v in value.items())
    return isinstance(value, kind)


def _describe(kind) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(kind))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if typing.get_origin(kind) is list:
        return "a list of strings"
    if typing.get_origin(kind) is dict:
        return "a mapping of strings"
    return names.get(kind, kind.__name__)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a number (YAML 1.2) rather than the string YAML 1.1 makes of it."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping of config fields; a syntax error is one line naming the file, line and column."""
    try:
        values = yaml.load(Path(path).read_text(), Loader=_YamlLoader) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    return values

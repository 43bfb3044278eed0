"""One configuration object for training: defaults from the paper, a YAML file, then CLI overrides; and the
TRL / transformers / LLaMA-Factory names of the fields that mean the same (`ALIASES`)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hafrm.data.encoding import MIN_MAX_LENGTH, TRUNCATIONS
from hafrm.data.formats import ADAPTERS
from hafrm.model.hybrid import PADDED_LAST_COLUMN, REWARD_HEAD_INITS, REWARD_READOUTS, LoraSettings
from hafrm.model.losses import METHODS, POLICY_LOSSES, HafObjective, PolicyLoss
from hafrm.training.namespace import (
    FOREIGN_FIELDS,
    PASS,
    TRL_SPLITS,
    did_you_mean,
    foreign_rule,
    training_arguments_fields,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything `hafrm train` needs. Defaults follow the paper's Table 5 where it gives one.

    Each field's documentation is its `metadata["help"]`: `hafrm train --help` shows it with the default and,
    for fields with a fixed set of values, the choices (from `_RULES` below, which also validates them).
    """

    # model
    model: str | None = field(
        default=None, metadata={"help": "HF hub name or local model folder; unset: the embedded SmolLM2-135M-Instruct"}
    )
    lora: bool = field(
        default=False, metadata={"help": "train PEFT LoRA adapters on the backbone instead of all its weights"}
    )
    lora_r: int = field(default=LoraSettings.r, metadata={"help": "LoRA rank (paper: 64 for Mistral-7B)"})
    lora_alpha: int = field(default=LoraSettings.alpha, metadata={"help": "LoRA scaling alpha (paper: 16)"})
    lora_dropout: float = field(
        default=LoraSettings.dropout,
        metadata={"help": "dropout on LoRA inputs; on CPU it cost ~19% of a LoRA step (benchmarks/)"},
    )
    lora_target_modules: str | list[str] = field(
        default=LoraSettings.target_modules,
        metadata={"help": "modules LoRA adapts: 'all-linear' or comma-separated module names"},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "let the model folder run its own Python code (an auto_map in its config or tokenizer config); "
            "only for folders you trust. Off: such a folder is refused in one line"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "weights dtype; auto: bf16 on a GPU that supports it, else fp32 (bf16 is ~25x slower on CPU); "
            "fp16: fp16 autocast over fp32 weights"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass: less memory, one more forward pass of compute"},
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "zero the backbone's dropout, as TRL's reward and DPO trainers do by default"}
    )
    share_prompt: bool = field(
        default=True,
        metadata={"help": "one row per pair, [prompt | chosen | rejected]: the shared prompt is computed once"},
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "transformers' attention kernel (sdpa, eager, flex_attention, flash_attention_2, ...); auto: "
            "flex_attention on a CUDA GPU (it skips the blocks the shared-prompt mask leaves out), else "
            "transformers' default (sdpa). flash_attention_2 cannot take that mask: chosen and rejected then go "
            "in separate rows. torch has no flex_attention backward on a CPU: training there refuses it at once"
        },
    )
    reward_head_init: str = field(
        default="normal",
        metadata={
            "help": "normal: N(0, 1/(hidden+1)), as transformers' and TRL's heads; zeros: the paper code's zero "
            "init, so at first only a policy loss moves the backbone (its head also has a bias, which the "
            "pairwise loss gives zero gradient: hafrm leaves it out)"
        },
    )
    reward_readout: str = field(
        default="last-token",
        metadata={
            "help": "last-token: the reward is read at each response's last token. "
            "ablation-padded-last-column: ABLATION ONLY, the paper code's readout, to measure its effect: the "
            "last column of right-padded separate rows (pad = EOS), so shorter rows are read at padding; "
            "needs micro_batch_size 1 (evaluation: 8 pairs per forward), logs a warning"
        },
    )
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "freeze the embeddings and this many bottom layers; train the rest, the reward head and the LM "
            "head (an LM head tied to the input embeddings, as in SmolLM2, is frozen with them)"
        },
    )
    trunk_cache: bool = field(
        default=True,
        metadata={"help": "with freeze_layers: compute the frozen trunk once per data set and model, then replay it"},
    )
    # objective
    method: str = field(
        default=HafObjective.method,
        metadata={
            "help": "haf: reward + alpha * policy loss; baseline: Bradley-Terry reward loss only; dpo: policy loss only"
        },
    )
    alpha: float = field(
        default=HafObjective.alpha, metadata={"help": "weight of the policy loss in the haf objective"}
    )
    dpo_weight: float = field(
        default=1.0,
        metadata={
            "help": "method dpo: weight of its policy loss (the paper code's DPO-as-RM: 0.2; AdamW undoes most of "
            "a constant scale, not gradient clipping's share)"
        },
    )
    tau: float = field(
        default=PolicyLoss.tau,
        metadata={"help": "DPO's beta: scale of the policy log-ratios in the policy loss and the implicit reward"},
    )
    policy_loss: str = field(
        default=PolicyLoss.kind,
        metadata={"help": "policy loss: sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO), simpo (reference-free)"},
    )
    label_smoothing: float = field(
        default=PolicyLoss.label_smoothing,
        metadata={
            "help": "label-flip rate in [0, 0.5): cDPO for sigmoid (TRL 1.16 ignores it there), rDPO for robust, "
            "simpo as TRL's CPO; refused for ipo and hinge"
        },
    )
    simpo_gamma: float = field(
        default=PolicyLoss.simpo_gamma, metadata={"help": "SimPO's target reward margin gamma (policy_loss simpo only)"}
    )
    center_rewards_coef: float = field(
        default=HafObjective.center_rewards_coef,
        metadata={"help": "weight of (r_chosen + r_rejected)^2 in the reward loss, keeping rewards centred at zero"},
    )
    use_margin: bool = field(
        default=HafObjective.use_margin,
        metadata={"help": "subtract the data's 'margin' column from the reward difference in the Bradley-Terry loss"},
    )
    reference: str = field(
        default="precompute",
        metadata={
            "help": "reference log-probs: precompute (once, cached on disk) or live "
            "(LoRA: adapters off; full fine-tuning: a frozen copy)"
        },
    )
    # data
    train_data: str | None = field(
        default=None,
        metadata={
            "help": "training pairs: a file, a folder or a hub name owner/name[:config]; "
            "unset: the shipped HH-RLHF harmless sample"
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "evaluation pairs, as train_data; unset: eval_fraction of train_data (or the shipped test sample)"
        },
    )
    dataset: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "LLaMA-Factory's registry: names of preference sets (ranking: true) in dataset_dir's "
            "dataset_info.json, comma-separated, read with each entry's formatting, columns and tags; instead of "
            "train_data"
        },
    )
    eval_dataset: str | list[str] | None = field(
        default=None,
        metadata={"help": "LLaMA-Factory's registry: sets to evaluate on, as dataset; instead of eval_data"},
    )
    dataset_dir: str = field(
        default="data", metadata={"help": "the folder holding dataset_info.json for dataset and eval_dataset"}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "LLaMA-Factory's chat template name: accepted where the tokenizer has a chat template of its own, "
            "which hafrm formats with (and exports); a tokenizer without one is refused: give prompt_template"
        },
    )
    data_format: str = field(
        default="auto", metadata={"help": "schema of the data; auto: detected from each file's columns"}
    )
    column_map: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": 'rename columns before reading, as JSON, e.g. \'{"prompt": "question"}\''},
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "fraction of train_data held out for evaluation when no eval_data is given (0: none)"},
    )
    max_length: int = field(
        default=512,
        metadata={
            "help": "tokens per sequence; longer pairs are cut as `truncation` says (default: prompt tokens from the "
            "left, so the response end is kept)"
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "a prompt format with {prompt}, made the tokenizer's chat template (so exports carry it): each "
            "user turn as the format, each answer after one space, then EOS; e.g. the paper code's "
            "'Instruct: {prompt}\\nOutput:' (Phi-2) or '[INST] {prompt} [/INST]' (Mistral). Unset: the "
            "tokenizer's chat template, or HH's Human:/Assistant: text without one"
        },
    )
    truncation: str = field(
        default="keep-response-ends",
        metadata={
            "help": "over-long pairs: keep-response-ends drops prompt tokens from the left and keeps each "
            "response's end; paper (its code): the prompt's last max_length/4 tokens (128 of 512) and each "
            "response's first 3/4 (384)"
        },
    )
    max_train_pairs: int | None = field(
        default=None, metadata={"help": "use at most this many training pairs (the first ones)"}
    )
    max_eval_pairs: int | None = field(
        default=None, metadata={"help": "cap on the eval set (every evaluation, the final one included)"}
    )
    eval_during_training_pairs: int | None = field(
        default=None,
        metadata={
            "help": "evaluations during training use a seeded sample this size; the final one uses the whole eval set"
        },
    )
    compare_to_untrained: bool = field(
        default=False,
        metadata={
            "help": "also evaluate the untrained model: accuracy before and after with 95% intervals "
            "and the paired difference"
        },
    )
    eval_at_steps: list[int] | None = field(
        default=None,
        metadata={
            "help": "evaluate (and checkpoint) at exactly these optimiser steps, e.g. 16,32,64,128,256 for a "
            "learning curve; the last step's model is the result; save_steps adds checkpoints between them"
        },
    )
    keep_eval_scores: bool = field(
        default=False,
        metadata={
            "help": "keep every evaluation's per-pair scores in OUTPUT_DIR/eval-scores/step-N-NAME.npz, "
            "so statistics can be recomputed later"
        },
    )
    on_bad_row: str = field(
        default="error",
        metadata={"help": "a row that does not fit the schema: error (stop, naming file and line) or skip (count it)"},
    )
    # optimisation (AdamW)
    learning_rate: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate (paper: 1e-5 to 3e-5)"})
    batch_size: int = field(
        default=16, metadata={"help": "global pairs per optimiser step (gradient accumulation makes it up)"}
    )
    micro_batch_size: int = field(default=4, metadata={"help": "pairs per device per forward pass"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs (fractions allowed)"})
    max_steps: int = field(default=-1, metadata={"help": "optimiser steps to train for; -1: as many as epochs take"})
    warmup_ratio: float = field(
        default=0.03,
        metadata={"help": "fraction of the optimiser steps spent warming the learning rate up linearly from 0"},
    )
    lr_scheduler: str = field(
        default="cosine", metadata={"help": "learning-rate schedule after warmup (any transformers scheduler)"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_epsilon: float = field(
        default=1e-8, metadata={"help": "AdamW epsilon (the paper code: 1e-5, where 1e-8 gave it NaNs in fp16)"}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and the eval split"})
    group_by_length: bool = field(
        default=True, metadata={"help": "batch pairs of similar length together (less padding)"}
    )
    # bookkeeping
    output_dir: str = field(
        default="outputs/hafrm", metadata={"help": "folder for checkpoints and the exported models"}
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "evaluate (and checkpoint) every this many steps; unset: once per epoch"}
    )
    save_steps: int | None = field(
        default=None,
        metadata={"help": "checkpoint every this many steps; unset: with each evaluation, or once per epoch"},
    )
    save_total_limit: int | None = field(
        default=2,
        metadata={"help": "keep at most this many checkpoints (with load_best_model_at_end the best one is kept too)"},
    )
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": "export the checkpoint with the best accuracy on validation pairs carved from the training data "
            "(whole prompts, see validation_pairs) instead of the last step; evaluations during training then run "
            "on those pairs, and the eval set is scored once, on the exported model. Off: the last step is exported"
        },
    )
    validation_pairs: int | None = field(
        default=None,
        metadata={
            "help": "with load_best_model_at_end or early_stopping_patience: training pairs held out (whole prompt "
            "groups, seeded) to choose the checkpoint on; unset: 10% of the training pairs. In learning-curve and "
            "alpha-sweep reports: held out the same way and evaluated at every step beside the test sets"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "stop after this many evaluations without a better validation accuracy (implies "
            "load_best_model_at_end); unset: never stop early"
        },
    )
    logging_steps: int = field(default=5, metadata={"help": "log the loss and reward statistics every this many steps"})
    report_to: str | list[str] = field(
        default="none",
        metadata={
            "help": "experiment trackers, comma-separated: tensorboard, wandb, mlflow, ... (any transformers one)"
        },
    )
    run_name: str | None = field(default=None, metadata={"help": "run name shown by the trackers"})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "a checkpoint folder to resume from, or auto: the newest readable one in output_dir"},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a finished or checkpointed run in output_dir (else refused)"}
    )
    training_args: dict = field(
        default_factory=dict,
        metadata={
            "help": 'transformers.TrainingArguments fields, as JSON, e.g. \'{"deepspeed": "ds.json", "optim": '
            '"adafactor"}\': the same namespace as the options (any TrainingArguments field is also accepted as a '
            "YAML key or --its_name): an entry that is one of our options sets it, two values for one option are "
            "refused, and the fields hafrm sets itself are refused with the reason (docs/options.md)"
        },
    )

    def __post_init__(self):
        for name in self.field_names():
            setattr(self, name, self.validated(name, getattr(self, name)))
        self.training_args = self._fold_training_args()
        for registry, path in (("dataset", "train_data"), ("eval_dataset", "eval_data")):
            if getattr(self, registry) and getattr(self, path):
                raise ValueError(f"{registry} (LLaMA-Factory's registry) and {path} both name the data; give one")
        if self.freeze_layers and self.lora:
            raise ValueError("freeze_layers trains the top layers in full; it does not combine with lora")
        if self.reward_readout == PADDED_LAST_COLUMN and self.micro_batch_size != 1:
            raise ValueError(
                f"reward_readout {PADDED_LAST_COLUMN} reproduces the paper code's 1 pair per forward pass: set "
                f"micro_batch_size 1 (got {self.micro_batch_size})"
            )
        if self.eval_at_steps and self.selects_checkpoint:
            raise ValueError(
                "eval_at_steps evaluates the eval sets at those steps and exports the last step; it does not combine "
                "with load_best_model_at_end or early_stopping_patience, which choose a checkpoint on validation pairs"
            )
        self._check_training_args_fit()
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a YAML mapping of config fields (ours or the ecosystem's names: `merge_config_values`); `overrides`
        (e.g. from the CLI, which may use either names too) win over the file."""
        return cls(**merge_config_values((str(path), read_yaml(path)), (None, overrides)))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a mapping that may use the ecosystem's names (`ALIASES`, `namespace.FOREIGN_FIELDS`,
        TrainingArguments) as well as ours."""
        return cls(**merge_config_values((None, values)))

    @classmethod
    def help(cls, name: str) -> str:
        """The documentation of field `name` (its `metadata["help"]`)."""
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...] | None:
        """The allowed values of field `name` where they are a fixed set (from the validation rules), else None."""
        rule = _RULES.get(name)
        return rule.choices if rule else None

    @classmethod
    def validated(cls, name: str, value):
        """The value of field `name` if it has the field's type and range (ints become floats where a float is
        expected); else a ValueError naming the field. YAML files and protocol runs bypass argparse's types."""
        kind = _field_types()[name]
        if not has_type(value, kind):
            raise ValueError(f"{name} must be {describe_type(kind)}, got {value!r}")
        if kind is float or float in typing.get_args(kind):
            value = float(value) if isinstance(value, int) else value
        rule = _RULES.get(name)
        if value is not None and rule and not rule.check(value):
            raise ValueError(f"{name} must be {rule.text}, got {value!r}")
        return value

    def _fold_training_args(self) -> dict:
        """training_args, for a TrainConfig built directly: the same namespace as the options (`_in_our_names`), so an
        entry that is one of our options sets it, and the record and model card hold the value trained with; one
        that disagrees with that option set apart from its default is a conflict. Returns the entries passed
        through to TrainingArguments."""
        if "gradient_accumulation_steps" in self.training_args:
            raise ValueError(
                "training_args gradient_accumulation_steps: set batch_size (global pairs per step), or build the "
                "config with TrainConfig.from_dict, which reads it with the per-device batch and the process count"
            )
        lifted = _in_our_names(self.training_args, frozenset(self.training_args))
        passed = lifted.pop("training_args", {})
        for ours, value in lifted.items():
            current = getattr(self, ours)
            if current != _default(ours) and current != value:
                raise ValueError(f"training_args sets {ours}={value!r}, which conflicts with {ours}={current!r}")
            setattr(self, ours, self.validated(ours, value))
        if "warmup_steps" in passed:  # the count passed to TrainingArguments is the warmup; the record says so
            if self.warmup_ratio not in (0.0, _default("warmup_ratio")):
                raise ValueError(
                    f"training_args warmup_steps and warmup_ratio {self.warmup_ratio} both set the warmup; give one"
                )
            self.warmup_ratio = 0.0
        return passed

    def _check_training_args_fit(self) -> None:
        """TrainingArguments passed through that contradict our options: mixed precision against the weights' dtype,
        and evaluation or save strategies under eval_at_steps, which sets both."""
        amp = {name: self.training_args[name] for name in ("fp16", "bf16") if name in self.training_args}
        weights = {"fp16": "fp16", "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16"}.get(self.dtype)
        other = {"fp16": "bf16", "bf16": "fp16"}
        # dtype fp16 is fp16 autocast over fp32 weights (transformers' fp16); dtype bf16 is bf16 weights
        if weights and (amp.get(other[weights]) or (weights == "fp16" and amp.get("fp16") is False)):
            raise ValueError(
                f"dtype {self.dtype} conflicts with {', '.join(f'{k}={v}' for k, v in amp.items())} (transformers' "
                "mixed precision; hafrm's dtype fp16 is fp16 autocast over fp32 weights, bf16 is bf16 weights): "
                "give one of them"
            )
        strategies = sorted({"eval_strategy", "save_strategy"} & set(self.training_args))
        if self.eval_at_steps and strategies:
            raise ValueError(
                f"eval_at_steps sets when to evaluate and save; it does not combine with {' and '.join(strategies)}"
            )

    @property
    def selects_checkpoint(self) -> bool:
        """Whether the export is a checkpoint chosen on validation pairs rather than the last step."""
        return self.load_best_model_at_end or bool(self.early_stopping_patience)

    def objective(self):
        """The training objective these settings describe (losses.HafObjective)."""
        from hafrm.model.losses import HafObjective, PolicyLoss

        policy = PolicyLoss(
            kind=self.policy_loss, tau=self.tau, label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma
        )
        return HafObjective(
            method=self.method,
            alpha=self.alpha,
            policy_loss=policy,
            center_rewards_coef=self.center_rewards_coef,
            use_margin=self.use_margin,
            dpo_weight=self.dpo_weight,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Rule:
    """What a field's value must be beyond its type: `check` it, and say `text` when it fails. A rule made by
    `_one_of` also lists its `choices`, which `--help` shows."""

    check: Callable[[object], bool]
    text: str
    choices: tuple[str, ...] | None = None


def _one_of(values: tuple[str, ...], text: str | None = None) -> _Rule:
    values = tuple(values)
    return _Rule(lambda v: v in values, text or "one of " + ", ".join(values), values)


def _at_least(low, text: str | None = None) -> _Rule:
    return _Rule(lambda v: v >= low, text or f"at least {low}")


# transformers' SchedulerType values (5.24), written out because importing transformers.trainer_utils costs every
# `hafrm` command seconds; tests/test_interface.py checks that the list still matches.
_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
_DTYPES = ("auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16")  # the names resolve_dtype reads

# Allowed values of fields, beyond their type (None always passes: it means "not set"); the one list of allowed
# values, read by validation and by `--help`. Loss parameters (alpha, tau, label_smoothing) are checked where the
# loss is built, which `hafrm train` does first thing.
_RULES = {
    "method": _one_of(METHODS),
    "policy_loss": _one_of(POLICY_LOSSES),
    "reference": _one_of(("precompute", "live"), "'precompute' or 'live'"),
    "dtype": _one_of(_DTYPES, "auto, fp32, bf16 or fp16 (or float32, bfloat16, float16)"),
    "data_format": _one_of(("auto", *sorted(ADAPTERS))),
    "lr_scheduler": _one_of(_SCHEDULERS),
    "on_bad_row": _one_of(("error", "skip"), "'error' or 'skip'"),
    "reward_head_init": _one_of(REWARD_HEAD_INITS),
    "reward_readout": _one_of(REWARD_READOUTS),
    "truncation": _one_of(TRUNCATIONS),
    "prompt_template": _Rule(lambda v: v.count("{prompt}") == 1, "a format containing {prompt} once"),
    "dpo_weight": _Rule(lambda v: v > 0, "positive"),
    "adam_epsilon": _Rule(lambda v: v > 0, "positive"),
    "lora_r": _at_least(1),
    "freeze_layers": _at_least(0, "0 (off) or a number of bottom layers"),
    "lora_alpha": _Rule(lambda v: v > 0, "positive"),
    "lora_dropout": _Rule(lambda v: 0 <= v < 1, "in [0, 1)"),
    "eval_fraction": _Rule(lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_length": _at_least(MIN_MAX_LENGTH),
    "max_train_pairs": _at_least(1),
    "max_eval_pairs": _at_least(1),
    "eval_during_training_pairs": _at_least(1),
    "learning_rate": _at_least(0, "non-negative"),
    "batch_size": _at_least(1),
    "micro_batch_size": _at_least(1),
    "epochs": _Rule(lambda v: v > 0, "positive"),
    "max_steps": _Rule(lambda v: v == -1 or v >= 1, "-1 (train for `epochs`) or at least 1"),
    "warmup_ratio": _Rule(lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of the optimiser steps)"),
    "weight_decay": _at_least(0, "non-negative"),
    "max_grad_norm": _at_least(0, "non-negative (0: no clipping)"),
    "eval_steps": _at_least(1),
    "save_steps": _at_least(1),
    "save_total_limit": _at_least(1),
    "early_stopping_patience": _at_least(1),
    "validation_pairs": _at_least(1),
    "logging_steps": _at_least(1),
    "eval_at_steps": _Rule(lambda v: len(v) > 0 and all(step >= 1 for step in v), "optimiser steps of at least 1"),
}


@functools.cache
def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def has_type(value, kind) -> bool:
    """isinstance for the annotations TrainConfig uses; bool is not accepted as a number, nor int as a bool."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, option) for option in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(has_type(item, typing.get_args(kind)[0]) for item in value)
    if origin is dict:
        key, item = typing.get_args(kind)
        return isinstance(value, dict) and all(has_type(k, key) and has_type(v, item) for k, v in value.items())
    return isinstance(value, kind)


def describe_type(kind) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(describe_type(option) for option in typing.get_args(kind))
    names = {
        type(None): "null",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a mapping",
    }
    if typing.get_origin(kind) is list:
        return f"a list of {describe_type(typing.get_args(kind)[0]).removeprefix('a ').removeprefix('an ')}s"
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


# ---------------------------------------------------------------- the ecosystem's names for our fields


@dataclass(frozen=True)
class Alias:
    """Another tool's name for one of our fields, where it means the same; `convert` maps its values to ours."""

    name: str
    target: str
    origin: str
    convert: Callable[[object], object] | None = None
    note: str = ""


# TRL's DPO loss names that are ours too (same formula, same use of beta and label_smoothing); its other losses
# (exo_pair, nca_pair, bco_pair, sppo_hard, aot, apo_*, discopop, sft, sigmoid_norm, ...) are not implemented here.
_TRL_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
# LLaMA-Factory's pref_loss: sigmoid, hinge and ipo are TRL's; its simpo is SimPO with simpo_gamma, as ours.
_LLAMAFACTORY_LOSSES = ("sigmoid", "hinge", "ipo", "simpo")


def _loss_name(tool: str, field_name: str, known: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value) -> str:
        if isinstance(value, list) and len(value) == 1:
            # TRL >= 0.20 takes a list of losses; its default is ["sigmoid"]
            value = value[0]
        if isinstance(value, str) and value in known:
            return value
        raise ValueError(
            f"{field_name} {value!r} ({tool}) has no counterpart in hafrm; the {tool} losses it implements are "
            f"{', '.join(known)} (policy_loss also takes {', '.join(p for p in POLICY_LOSSES if p not in known)})"
        )

    return convert


def _reference_mode(value) -> str:
    if not isinstance(value, bool):
        raise ValueError(f"precompute_ref_log_probs must be true or false, got {value!r}")
    return "precompute" if value else "live"


def _fraction_only(name: str) -> Callable[[object], float]:
    def convert(value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name} {value!r}: hafrm holds out a fraction in [0, 1) (eval_fraction), not a count")
        return float(value)

    return convert


def _lora_target(value) -> str | list[str]:
    """LLaMA-Factory's lora_target: `all` (every linear layer) or comma-separated module names."""
    if value == "all":
        return "all-linear"
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _finetuning_type(value) -> bool:
    if value not in ("lora", "full"):
        raise ValueError(
            f"finetuning_type {value!r} (LLaMA-Factory) has no counterpart here: use lora or full "
            "(for freezing bottom layers, freeze_layers)"
        )
    return value == "lora"


ALIASES: dict[str, Alias] = {
    alias.name: alias
    for alias in (
        Alias("beta", "tau", "TRL DPOConfig"),
        Alias("pref_beta", "tau", "LLaMA-Factory"),
        Alias(
            "loss_type",
            "policy_loss",
            "TRL DPOConfig",
            _loss_name("TRL", "loss_type", _TRL_LOSSES),
            "sigmoid, ipo, hinge, robust; others refused",
        ),
        Alias(
            "pref_loss",
            "policy_loss",
            "LLaMA-Factory",
            _loss_name("LLaMA-Factory", "pref_loss", _LLAMAFACTORY_LOSSES),
            "sigmoid, hinge, ipo, simpo; others refused",
        ),
        Alias("model_name_or_path", "model", "TRL ModelConfig, LLaMA-Factory"),
        Alias("dataset_name", "train_data", "TRL ScriptArguments"),
        Alias(
            "test_split_size",
            "eval_fraction",
            "TRL DatasetMixtureConfig",
            _fraction_only("test_split_size"),
            "a fraction; a count of pairs is refused",
        ),
        Alias(
            "val_size", "eval_fraction", "LLaMA-Factory", _fraction_only("val_size"), "a fraction; a count is refused"
        ),
        Alias(
            "max_samples",
            "max_train_pairs",
            "LLaMA-Factory",
            None,
            "LLaMA-Factory caps each set, hafrm the total: the same for one set",
        ),
        Alias("lora_target", "lora_target_modules", "LLaMA-Factory", _lora_target, "all is all-linear"),
        Alias("num_train_epochs", "epochs", "transformers TrainingArguments"),
        Alias("lr_scheduler_type", "lr_scheduler", "transformers TrainingArguments"),
        Alias("per_device_train_batch_size", "micro_batch_size", "transformers TrainingArguments"),
        Alias(
            "gradient_accumulation_steps",
            "batch_size",
            "transformers TrainingArguments",
            None,
            "batch_size = per-device batch x this x processes",
        ),
        Alias(
            "center_rewards_coefficient", "center_rewards_coef", "TRL RewardConfig", lambda v: 0.0 if v is None else v
        ),
        Alias(
            "precompute_ref_log_probs", "reference", "TRL DPOConfig", _reference_mode, "true: precompute, false: live"
        ),
        Alias("use_peft", "lora", "TRL ModelConfig"),
        Alias("finetuning_type", "lora", "LLaMA-Factory", _finetuning_type, "lora or full"),
        Alias("lora_rank", "lora_r", "LLaMA-Factory"),
        Alias("cutoff_len", "max_length", "LLaMA-Factory"),
        Alias("torch_dtype", "dtype", "TRL ModelConfig (before 0.20)"),
    )
}


def alias_help(alias: Alias) -> str:
    """One line for `--help` and the README: whose name it is and what it sets."""
    note = f"; {alias.note}" if alias.note else ""
    return f"{alias.origin}: sets {alias.target}{note}"


def world_size() -> int:
    """Processes of this (possibly distributed) run, as torchrun and accelerate launch set it."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _accepted_names() -> list[str]:
    return sorted({*TrainConfig.field_names(), *ALIASES, *FOREIGN_FIELDS, *TRL_SPLITS, *training_arguments_fields()})


def _one_namespace(values: dict) -> dict:
    """The top-level names of `values` with its training_args entries beside them: training_args is the same
    namespace (an entry that is one of our options sets it); a name given both ways with two values is refused."""
    values = dict(values)
    nested = values.pop("training_args", None) or {}
    if not isinstance(nested, dict):
        raise ValueError(f"training_args must be a mapping of TrainingArguments fields, got {nested!r}")
    for name, value in nested.items():
        if name in values and values[name] != value:
            raise ValueError(f"{name} is given twice: {values[name]!r} and training_args {name}={value!r}")
        values[name] = value
    return values


def _trl_dataset(values: dict, ours: dict) -> None:
    """TRL ScriptArguments' data set fields in our words: dataset_config joins dataset_name as `name:config`; the
    train split is what hafrm reads from train_data; the test split becomes eval_data where the set is on the hub."""
    for name, split in TRL_SPLITS.items():
        if name in values and values[name] != split:
            raise ValueError(
                f"{name} {values[name]!r} (TRL ScriptArguments): hafrm reads the {split!r} split of a hub data set; "
                f"save that split as a file and give it as {'train_data' if split == 'train' else 'eval_data'}"
            )
    config = values.get("dataset_config")
    if config:
        if "dataset_name" not in values:
            raise ValueError("dataset_config (TRL ScriptArguments) needs dataset_name beside it")
        ours["train_data"] = f"{values['dataset_name']}:{config}"
    if "dataset_test_split" in values and "dataset_name" in values and "eval_data" not in ours:
        if Path(values["dataset_name"]).exists():
            logger.info(
                "dataset_test_split: %s is a local path, which has no test split; eval_fraction holds pairs "
                "out instead (give eval_data for another set)",
                values["dataset_name"],
            )
        else:
            ours["eval_data"] = ours["train_data"]


def _sampling_strategy(passed: dict, ours: dict) -> None:
    """TrainingArguments' train_sampling_strategy is our group_by_length where they overlap (group_by_length or
    random); `sequential` passes through and turns group_by_length off, so the record says what ran."""
    strategy = passed.get("train_sampling_strategy")
    if strategy is None:
        return
    grouped = strategy == "group_by_length"
    if ours.get("group_by_length", grouped) != grouped:
        raise ValueError(
            f"group_by_length={ours['group_by_length']} conflicts with train_sampling_strategy={strategy!r}: give one"
        )
    ours["group_by_length"] = grouped
    if strategy in ("group_by_length", "random"):
        del passed["train_sampling_strategy"]


# A later source (the command line after a YAML file) giving one of these replaces what an earlier one gave for the
# others: they say the same thing two ways (TrainingArguments fields as "training_args.NAME").
REPLACES = {
    "train_data": ("dataset",),
    "dataset": ("train_data",),
    "eval_data": ("eval_dataset",),
    "eval_dataset": ("eval_data",),
    "prompt_template": ("template",),
    "template": ("prompt_template",),
    "dtype": ("training_args.bf16", "training_args.fp16"),
    "warmup_ratio": ("training_args.warmup_steps",),
    "training_args.warmup_steps": ("warmup_ratio",),
}


def _drop_replaced(merged: dict, ours: dict) -> None:
    """Remove from the earlier sources' `merged` values what `ours` (a later source) says another way."""
    for name in [*ours, *(f"training_args.{passed}" for passed in ours.get("training_args", {}))]:
        for replaced in REPLACES.get(name, ()):
            if replaced.startswith("training_args."):
                merged.get("training_args", {}).pop(replaced.split(".", 1)[1], None)
            elif replaced not in ours:
                merged.pop(replaced, None)


def _in_our_names(values: dict, nested: frozenset[str] = frozenset()) -> dict:
    """`values` with each alias replaced by our field and value, and TrainingArguments fields that are not ours
    gathered in training_args; foreign fields ignored or refused by their rule (`namespace.FOREIGN_FIELDS`), an
    unknown name refused with the closest accepted ones (`nested`: the names that came in training_args, so named).
    gradient_accumulation_steps is left for the caller."""
    ours: dict = {}
    given_as: dict[str, str] = {}
    passed: dict = {}
    for name, value in values.items():
        if name in ("gradient_accumulation_steps", "dataset_config", *TRL_SPLITS):
            continue
        alias = ALIASES.get(name)
        if alias is None and name not in TrainConfig.field_names():
            rule = foreign_rule(name)
            where = "training_args " if name in nested else ""
            if rule is None:
                raise ValueError(f"unknown option {where}{name}{did_you_mean(name, _accepted_names())}")
            if rule.refuses(value):
                raise ValueError(f"{where}{name} ({rule.origin}) is refused: {rule.why}")
            if rule.action == PASS:
                passed[name] = value
            else:
                logger.info("%s (%s) ignored: %s", name, rule.origin, rule.why)
            continue
        target = alias.target if alias else name
        if alias is not None:
            value = alias.convert(value) if alias.convert else value
            try:
                TrainConfig.validated(target, value)
            except ValueError as error:
                raise ValueError(f"{name} ({alias.origin}'s name for {target}): {error}") from None
        if target in ours and ours[target] != value:
            raise ValueError(
                f"{target} is given twice, as {given_as[target]}={ours[target]!r} and as "
                f"{'training_args ' if name in nested else ''}{name}={value!r}; give one of them"
            )
        ours[target], given_as[target] = value, f"{'training_args ' if name in nested else ''}{name}"
    _trl_dataset(values, ours)
    _sampling_strategy(passed, ours)
    if passed.get("warmup_steps") == 0:  # transformers' default, written out: not a warmup given
        del passed["warmup_steps"]
    if "warmup_steps" in passed and "warmup_ratio" in ours:
        raise ValueError("warmup_steps (transformers) and warmup_ratio both set the warmup; give one of them")
    if passed:
        ours["training_args"] = passed
    return ours


def merge_config_values(*sources: tuple[str | None, dict]) -> dict:
    """Our field values from (where, mapping) sources, each in our names or the ecosystem's (`ALIASES`); a later
    source wins (a YAML file, then the command line). A value is checked, naming `where`, unless a later source
    replaces it.

    Batch sizes in transformers' words: per_device_train_batch_size is micro_batch_size, and batch_size is
    per_device_train_batch_size x gradient_accumulation_steps x processes, with TRL's default of 1 accumulation
    step when either name is used and no batch_size is given.
    """
    converted = []
    for where, values in sources:
        try:
            flat = _one_namespace(values)
            nested = frozenset(set(flat) - set(values))
            values = flat
            ours = _in_our_names(values, nested)
            steps = values.get("gradient_accumulation_steps")
            if steps is not None and ("batch_size" in ours):
                raise ValueError(
                    "batch_size and gradient_accumulation_steps both set the global batch; give one of them"
                )
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                raise ValueError(f"gradient_accumulation_steps must be an integer of at least 1, got {steps!r}")
        except ValueError as error:
            raise ValueError(f"{where}: {error}" if where else str(error)) from None
        converted.append((where, ours, steps, "per_device_train_batch_size" in values or steps is not None))
    merged: dict = {}
    accumulation, batch_names = None, False
    for index, (where, ours, steps, uses_batch_names) in enumerate(converted):
        later = set().union(*(c[1] for c in converted[index + 1 :]))
        for name, value in ours.items():
            if name not in later:
                try:
                    ours[name] = TrainConfig.validated(name, value)
                except ValueError as error:
                    raise ValueError(f"{where}: {error}" if where else str(error)) from None
        if steps is not None:
            accumulation = steps
            merged.pop("batch_size", None)
        elif "batch_size" in ours:
            accumulation = None
        batch_names |= uses_batch_names
        _drop_replaced(merged, ours)
        ours["training_args"] = {**merged.get("training_args", {}), **ours.get("training_args", {})}
        merged.update(ours)
    if accumulation is not None or (batch_names and "batch_size" not in merged):
        micro = merged.get("micro_batch_size", _default("micro_batch_size"))
        merged["batch_size"] = micro * (accumulation or 1) * world_size()
    elif "micro_batch_size" not in merged:
        merged.update(_micro_batch_for_processes(merged.get("batch_size", _default("batch_size"))))
    return merged


def _micro_batch_for_processes(batch_size: int) -> dict:
    """A default micro_batch_size that fits the launch: the largest at most the default that divides each process's
    share of batch_size (8 processes of a batch of 16 take 2 pairs each, not 4). A given micro_batch_size is kept,
    and one that does not fit is refused (training_arguments)."""
    default, processes = _default("micro_batch_size"), world_size()
    if processes == 1 or batch_size % processes or (batch_size // processes) % default == 0:
        return {}
    share = batch_size // processes
    micro = max(m for m in range(1, default + 1) if share % m == 0)
    logger.info(
        "micro_batch_size %d: batch_size %d over %d processes is %d pairs each", micro, batch_size, processes, share
    )
    return {"micro_batch_size": micro}


def _default(name: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)

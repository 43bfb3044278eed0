"""The settings of `hafrm rlhf`: policy optimisation against a reward model with TRL's GRPOTrainer.

Field names are TRL's GRPOConfig / TrainingArguments names where one exists, so a TRL user's values carry over; every
field's `metadata["help"]` is what `hafrm rlhf --help` shows. Two defaults differ from TRL 1.16's on purpose:
`beta` is 0.04, not 0.0 (a KL penalty to the start policy, as the paper's PPO has; GRPO's 0.0 keeps no reference at
all), and `max_completion_length` is 64, sized for a CPU.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hafrm.training.config import describe_type, has_type, read_yaml

TRL_LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")  # GRPOConfig.loss_type values hafrm passes on
SCALE_REWARDS = ("group", "batch", "none")  # GRPOConfig.scale_rewards


@dataclass
class RlhfConfig:
    """Everything `hafrm rlhf` needs; see the module docstring for where the defaults come from."""

    # what is trained, against what, on what
    reward_model: str = field(
        default="",
        metadata={
            "help": "MODEL[@HEAD]: a hafrm output folder (HEAD reward, implicit or combined; default reward) or any "
            "one-label sequence-classification reward model (folder or hub name). Required"
        },
    )
    label_index: int | None = field(
        default=None,
        metadata={"help": "the logit read as the reward, for a reward model with several labels (else refused)"},
    )
    prompts: str = field(
        default="",
        metadata={
            "help": "prompts: a file, folder or hub name of prompt-only rows (a 'prompt' column, text or messages) or "
            "of preference pairs in any format hafrm reads (their distinct prompts). Required"
        },
    )
    data_format: str = field(default="auto", metadata={"help": "schema of preference rows; auto: from the columns"})
    split: str = field(default="train", metadata={"help": "split of a hub data set or folder"})
    max_prompts: int | None = field(default=None, metadata={"help": "use at most this many distinct prompts"})
    max_prompt_length: int = field(
        default=256,
        metadata={"help": "prompts longer than this many tokens once formatted are left out (counted in the log)"},
    )
    policy: str | None = field(
        default=None,
        metadata={
            "help": "the policy to start from: a causal LM folder or hub name, or a hafrm output folder (its policy/); "
            "unset: the embedded SmolLM2-135M-Instruct"
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "let model folders run their own Python code (auto_map); only for folders you trust"},
    )
    # GRPO
    num_generations: int = field(
        default=4, metadata={"help": "completions sampled per prompt; GRPO compares them within the group (>= 2)"}
    )
    per_device_train_batch_size: int = field(
        default=16,
        metadata={"help": "completions per device per step, a multiple of num_generations (16 / 4 = 4 prompts)"},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "forward passes per optimiser step"})
    max_completion_length: int = field(default=64, metadata={"help": "tokens per sampled completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the rollouts (1: off)"})
    beta: float = field(
        default=0.04,
        metadata={
            "help": "weight of the KL penalty to the start policy (TRL 1.16's GRPO default is 0: no reference, no "
            "KL; the paper's PPO has one). 0 turns it off"
        },
    )
    loss_type: str = field(default="dapo", metadata={"help": "TRL's GRPO loss normalisation"})
    scale_rewards: str = field(
        default="group", metadata={"help": "divide advantages by the std of the group, the batch, or none"}
    )
    # optimisation
    learning_rate: float = field(default=1e-6, metadata={"help": "peak AdamW learning rate (TRL's GRPO default)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "learning-rate schedule"})
    max_steps: int = field(default=100, metadata={"help": "optimiser steps"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, data order and LoRA initialisation"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of all the policy's weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on LoRA inputs"})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "modules LoRA adapts: 'all-linear' or comma-separated names"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass (TRL's default: on): less memory, more compute"},
    )
    # the reward model
    reward_batch_size: int = field(default=8, metadata={"help": "completions per reward-model forward pass"})
    reward_max_length: int = field(default=512, metadata={"help": "tokens per scored conversation"})
    # bookkeeping
    output_dir: str = field(default="outputs/rlhf", metadata={"help": "folder for checkpoints and the final policy"})
    save_steps: int = field(
        default=50,
        metadata={"help": "checkpoint (a loadable policy, with optimizer state) every this many steps"},
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "keep at most this many checkpoints; unset: all (they are what is evaluated)"}
    )
    logging_steps: int = field(default=1, metadata={"help": "log rewards, KL and lengths every this many steps"})
    report_to: str = field(default="none", metadata={"help": "experiment trackers, comma-separated"})
    run_name: str | None = field(default=None, metadata={"help": "run name shown by the trackers"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "a checkpoint folder to resume from, or auto: the newest one in output_dir"}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace a run already in output_dir"})

    def __post_init__(self):
        for name, kind in typing.get_type_hints(RlhfConfig).items():
            value = getattr(self, name)
            if not has_type(value, kind):
                raise ValueError(f"{name} must be {describe_type(kind)}, got {value!r}")
            if kind is float and isinstance(value, int):
                setattr(self, name, float(value))
        problems = [
            (not self.reward_model, "reward_model is required"),
            (not self.prompts, "prompts is required"),
            (self.num_generations < 2, "num_generations must be at least 2 (GRPO compares completions of a prompt)"),
            (
                self.per_device_train_batch_size % self.num_generations != 0,
                f"per_device_train_batch_size {self.per_device_train_batch_size} must be a multiple of "
                f"num_generations {self.num_generations}",
            ),
            (self.max_completion_length < 1, "max_completion_length must be at least 1"),
            (self.max_prompt_length < 1, "max_prompt_length must be at least 1"),
            (self.temperature <= 0, "temperature must be above 0"),
            (not 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.beta < 0, "beta must be 0 or more"),
            (self.learning_rate < 0, "learning_rate must be 0 or more"),
            (self.max_steps < 1, "max_steps must be at least 1"),
            (self.save_steps < 1, "save_steps must be at least 1"),
            (self.loss_type not in TRL_LOSS_TYPES, f"loss_type must be one of {', '.join(TRL_LOSS_TYPES)}"),
            (self.scale_rewards not in SCALE_REWARDS, f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(message)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...] | None:
        return {"loss_type": TRL_LOSS_TYPES, "scale_rewards": SCALE_REWARDS}.get(name)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> RlhfConfig:
        """A YAML mapping of these fields; `overrides` (the command line) win over the file."""
        values = read_yaml(path)
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{path}: unknown rlhf option(s) {', '.join(unknown)}; known: {', '.join(cls.field_names())}"
            )
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

"""One configuration object for training: defaults from the paper, a YAML file, then CLI overrides."""

from __future__ import annotations

import dataclasses
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
    # objective
    method: str = "haf"  # haf | baseline | dpo
    alpha: float = 0.2
    tau: float = 0.1
    policy_loss: str = "sigmoid"  # sigmoid | ipo | hinge | robust | simpo
    label_smoothing: float = 0.0
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
    resume_from_checkpoint: str | None = None
    training_args: dict = field(default_factory=dict)  # extra transformers.TrainingArguments, e.g. deepspeed

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"policy_loss must be one of {', '.join(POLICY_LOSSES)}, got {self.policy_loss!r}")
        if self.reference not in ("precompute", "live"):
            raise ValueError(f"reference must be 'precompute' or 'live', got {self.reference!r}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a YAML mapping of config fields; `overrides` (e.g. from the CLI) win over the file."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{path}: unknown config field(s) {', '.join(unknown)}; known: {', '.join(cls.field_names())}")
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

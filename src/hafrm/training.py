"""The training pipeline behind `hafrm train`: config -> data -> model -> Trainer -> exported models."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hafrm import __version__
from hafrm.config import TrainConfig
from hafrm.data import PairCollator, PairEncoder, SkipReport, load_pairs, train_test_split
from hafrm.defaults import DEFAULT_EVAL_DATA, DEFAULT_TRAIN_DATA
from hafrm.filechecks import check_model_folder, check_writable_dir
from hafrm.losses import HafObjective, PolicyLoss
from hafrm.model import HybridRewardModel, LoraSettings
from hafrm.pretrained import fit_embeddings, load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from hafrm.reference import add_reference_logps
from hafrm.trainer import HafTrainer, checkpoint_problem, pairwise_metrics

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    data_report: dict
    log_history: list[dict]


def objective_from_config(config: TrainConfig) -> HafObjective:
    policy = PolicyLoss(config.policy_loss, config.tau, config.label_smoothing, config.simpo_gamma)
    return HafObjective(config.method, config.alpha, policy, config.center_rewards_coef, config.use_margin)


def encode_pairs(pairs: list[dict], encoder: PairEncoder, report: SkipReport) -> datasets.Dataset:
    """Tokenize canonical pairs into a datasets.Dataset; count pairs cut to max_length in the report."""
    encoded = [encoder.encode_pair(p) for p in pairs]
    report.truncated += sum(e.pop("truncated") for e in encoded)
    return datasets.Dataset.from_list(encoded)


def load_splits(config: TrainConfig, encoder: PairEncoder) -> tuple[datasets.Dataset, datasets.Dataset | None, SkipReport]:
    """Train and eval sets: given files, the shipped default, or a seeded split of the train file."""
    train_source = config.train_data or str(DEFAULT_TRAIN_DATA)
    eval_source = config.eval_data or (str(DEFAULT_EVAL_DATA) if config.train_data is None else None)
    options = dict(data_format=config.data_format, column_map=config.column_map, on_error=config.on_bad_row)
    train_pairs, report = load_pairs(train_source, limit=config.max_train_pairs, **options)
    if eval_source is not None:
        eval_pairs, eval_report = load_pairs(eval_source, split="test", limit=config.max_eval_pairs, **options)
        report.merge(eval_report)
    elif config.eval_fraction > 0:
        train_pairs, eval_pairs = train_test_split(train_pairs, config.eval_fraction, config.seed)
        eval_pairs = eval_pairs[: config.max_eval_pairs]
    else:
        eval_pairs = []
    train_set = encode_pairs(train_pairs, encoder, report)
    eval_set = encode_pairs(eval_pairs, encoder, report) if eval_pairs else None
    logger.info("Data: %s", report.summary())
    return train_set, eval_set, report


def weights_dtype(config: TrainConfig) -> torch.dtype:
    """fp16 training keeps fp32 master weights under fp16 autocast; bf16 and fp32 train in their own dtype."""
    dtype = resolve_dtype(config.dtype)
    return torch.float32 if dtype == torch.float16 else dtype


def build_model(config: TrainConfig, model_path: str, tokenizer) -> HybridRewardModel:
    causal_lm = load_causal_lm(model_path, weights_dtype(config))
    fit_embeddings(causal_lm, tokenizer)
    lora = LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules) if config.lora else None
    model = HybridRewardModel.from_causal_lm(causal_lm, lora)
    if config.disable_dropout:
        model.disable_dropout()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def pair_collator(config: TrainConfig, model: HybridRewardModel, tokenizer) -> PairCollator:
    """Pairs share their prompt in one row where the model's attention takes a block mask; otherwise (e.g.
    FlashAttention, which ignores custom masks) chosen and rejected are separate rows, with a log line."""
    share = config.share_prompt and model.shares_prompts
    if config.share_prompt and not share:
        logger.info("Attention %r cannot take a block mask: chosen and rejected are computed as separate rows", model.config._attn_implementation)
    return PairCollator(tokenizer.pad_token_id, tokenizer.padding_side, share)


def training_arguments(config: TrainConfig, has_eval: bool) -> TrainingArguments:
    """Map the config onto TrainingArguments; config.training_args passes anything else through."""
    world_size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    per_step = config.micro_batch_size * world_size
    if config.batch_size % per_step:
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size x processes = {per_step}")
    # Checkpoints follow evaluations when there is an eval set, so the best one can be kept and reloaded.
    save_steps = config.save_steps or (config.eval_steps if has_eval else None)
    eval_steps = (config.eval_steps or save_steps) if has_eval else None
    save_strategy = "steps" if save_steps else "epoch"
    eval_strategy = ("steps" if eval_steps else "epoch") if has_eval else "no"
    dtype = resolve_dtype(config.dtype)
    arguments = dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.batch_size // per_step,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="accuracy" if has_eval else None,
        greater_is_better=True,
        report_to=config.report_to,
        run_name=config.run_name,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length",
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16 and torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    arguments.update(config.training_args)
    try:
        return TrainingArguments(**arguments)
    except TypeError as error:  # an unknown key in training_args
        raise ValueError(f"training_args: {error}") from None


def primary_metrics(method: str):
    """compute_metrics that also names the accuracy used to pick the best checkpoint."""

    def compute(prediction):
        metrics = pairwise_metrics(prediction)
        metrics["accuracy"] = metrics["implicit_accuracy"] if method == "dpo" else metrics["reward_accuracy"]
        return metrics

    return compute


def resume_point(config: TrainConfig) -> str | None:
    """The checkpoint to resume from: a given one, which must be readable, or with 'auto' the newest
    readable one in output_dir (None if there is none).

    A checkpoint cut off mid-write or with an unreadable file is set aside (renamed incomplete-*) with a
    warning naming the file, and the one before it is tried: a kill or a full disk costs a few steps, not the run.
    """
    if config.resume_from_checkpoint != "auto":
        problem = config.resume_from_checkpoint and checkpoint_problem(config.resume_from_checkpoint)
        if problem:
            raise ValueError(f"cannot resume from {config.resume_from_checkpoint}: {problem}")
        return config.resume_from_checkpoint
    if not Path(config.output_dir).is_dir():
        return None
    last = get_last_checkpoint(config.output_dir)
    while last is not None and (problem := checkpoint_problem(last)):
        logger.warning("Not resuming from %s: %s; setting it aside and trying the checkpoint before it", last, problem)
        Path(last).rename(Path(last).with_name(f"incomplete-{Path(last).name}"))
        last = get_last_checkpoint(config.output_dir)
    return last


def previous_run(output_dir: str | Path) -> list[Path]:
    """What shows that output_dir already holds a run: its exported hafrm.json and its checkpoints."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in [folder / "hafrm.json", *folder.glob("checkpoint-*")] if p.exists())


def claim_output_dir(config: TrainConfig) -> None:
    """Refuse to train over another run unless told to resume it or overwrite it.

    Overwriting removes the old run's checkpoints: the Trainer would otherwise keep them (their step numbers
    are higher) and delete the new ones, and a later 'auto' resume would pick them up.
    """
    check_writable_dir(config.output_dir)
    existing = previous_run(config.output_dir)
    if not existing or config.resume_from_checkpoint:
        return
    if not config.overwrite_output_dir:
        raise ValueError(
            f"output folder {config.output_dir} already holds a run ({', '.join(p.name for p in existing[:3])}); "
            "pass --resume-from-checkpoint auto to continue it, --overwrite-output-dir to replace it, or another --output-dir"
        )
    for checkpoint in [p for p in existing if p.is_dir()]:
        logger.warning("Overwriting the run in %s: removing %s", config.output_dir, checkpoint.name)
        shutil.rmtree(checkpoint, ignore_errors=True)  # ignore_errors: other processes of a distributed run do the same


def has_eval_set(config: TrainConfig) -> bool:
    """Whether load_splits will build an eval set: given eval data, the shipped default, or a fraction of train."""
    return config.eval_data is not None or config.train_data is None or config.eval_fraction > 0


def preflight(config: TrainConfig) -> None:
    """Every check that needs no model or data, run before anything heavy, so that a user error costs
    seconds instead of a model load and a reference precompute: the output folder, the model folder, the
    loss settings, the TrainingArguments, and the checkpoint to resume from."""
    claim_output_dir(config)
    if config.model not in (None, "", "default"):
        check_model_folder(config.model)
    objective_from_config(config)
    training_arguments(config, has_eval_set(config))
    resume_point(config)


def final_eval_metrics(trainer: HafTrainer) -> dict:
    """Metrics of the checkpoint training ends with (the best one), from the log when it was evaluated there."""
    target = trainer.state.best_global_step or trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_accuracy" in entry and entry.get("step") == target:
            return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
    return trainer.evaluate()


def train(config: TrainConfig, callbacks: list | None = None) -> TrainResult:
    """Train one model and export it; returns the output folder and final evaluation metrics.

    callbacks: extra transformers.TrainerCallback objects (progress hooks, timers, early stopping).
    """
    preflight(config)
    set_seed(config.seed)
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    encoder = PairEncoder(tokenizer, config.max_length)
    train_set, eval_set, report = load_splits(config, encoder)
    model = build_model(config, model_path, tokenizer)
    objective = objective_from_config(config)
    args = training_arguments(config, eval_set is not None)
    collator = pair_collator(config, model, tokenizer)
    if objective.uses_policy_head and objective.policy_loss.needs_reference:
        if config.reference == "precompute":
            model.to(args.device)  # the Trainer would move it later; the precomputation needs it there now
            with args.main_process_first(desc="reference log-probs"):
                train_set = add_reference_logps(model, train_set, collator, config.micro_batch_size, args.device, "train")
                if eval_set is not None:
                    eval_set = add_reference_logps(model, eval_set, collator, config.micro_batch_size, args.device, "eval")
        elif not model.is_peft:
            model.keep_frozen_reference()
    trainer = HafTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        compute_metrics=primary_metrics(config.method),
        objective=objective,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_point(config))
    metrics = final_eval_metrics(trainer) if eval_set is not None else {}
    output_dir = Path(config.output_dir)
    if trainer.is_world_process_zero():
        metadata = {
            "hafrm_version": __version__,
            "base_model": config.model or "default",
            "base_model_path": model_path,
            "config": config.to_dict(),
            "eval_metrics": metrics,
            "data": report.as_dict(),
        }
        model.export(output_dir, tokenizer, metadata)
        (output_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(output_dir, metrics, report.as_dict(), trainer.state.log_history)

"""The training pipeline behind `hafrm train`: config -> data -> model -> Trainer -> exported models."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments, set_seed

from hafrm import __version__
from hafrm.data import PairCollator, PairEncoder, SkipReport, llamafactory, load_pairs, train_test_split
from hafrm.data.encoding import chat_template_for, encode_pairs
from hafrm.data.splits import split_by_prompt
from hafrm.eval.metrics import (
    accuracy_interval,
    correctness_from_predictions,
    paired_difference,
    primary_metrics,
)
from hafrm.io.atomic import write_atomically
from hafrm.io.defaults import DEFAULT_EVAL_DATA, DEFAULT_MODEL_HUB_ID, DEFAULT_TRAIN_DATA
from hafrm.io.export import RUN_RECORD_FILE, TRAINABLE_STATE_FILE
from hafrm.io.filechecks import check_apart_from_data, check_model_folder, check_writable_dir
from hafrm.io.locking import output_lock
from hafrm.io.pretrained import (
    check_attention_trains,
    fit_embeddings,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from hafrm.io.remote_code import trust_remote_code
from hafrm.model.hybrid import METADATA_FILE, PADDED_LAST_COLUMN, HybridRewardModel, LoraSettings
from hafrm.training.config import TrainConfig, world_size
from hafrm.training.precompute import add_reference_logps, cached_trunk_states
from hafrm.training.trainer import EVAL_SCORES_DIR, HafTrainer, checkpoint_problem, pair_collator_for

logger = logging.getLogger(__name__)
CLOCK_FILE = "hafrm-run-clock.json"  # in each checkpoint: {"wall_s": seconds the run had spent when it was written}


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    data_report: dict
    log_history: list[dict]


Rows = datasets.Dataset | list[dict]  # preference data in memory, in any schema a file may have
VALIDATION = "validation"  # the name of the set a checkpoint is chosen on: metrics eval_validation_*


@dataclass
class Splits:
    """The encoded data of one run: what it trains on, the named eval sets whose accuracy it reports, and (when a
    checkpoint is to be chosen) the validation pairs carved from the training data to choose it on."""

    train: datasets.Dataset
    evals: dict[str, datasets.Dataset]
    validation: datasets.Dataset | None
    report: SkipReport


def load_splits(config: TrainConfig, encoder: PairEncoder, train_rows: Rows | None = None, eval_rows=None) -> Splits:
    """The train set, the named eval sets and the validation set: given files or rows in memory (eval_rows may also
    be a mapping of test-set names to rows), the shipped default, or a seeded split of the train data. One unnamed
    eval set is called "eval"; no eval set gives an empty mapping. The validation pairs (only when the config
    chooses a checkpoint) are whole prompt groups of the training pairs, so no validation question is trained on
    and no reported pair is used to choose."""
    options = dict(data_format=config.data_format, column_map=config.column_map, on_error=config.on_bad_row)
    registry = {
        name: llamafactory.selection(config.dataset_dir, names)
        for name, names in (("train", config.dataset), ("eval", config.eval_dataset))
        if names
    }
    train_source = (
        train_rows if train_rows is not None else registry.get("train") or config.train_data or str(DEFAULT_TRAIN_DATA)
    )
    train_pairs, report = load_pairs(train_source, limit=config.max_train_pairs, name="train_data", **options)
    own_train_data = gives_train_data(config, train_rows is not None)
    eval_source = (
        eval_rows
        if eval_rows is not None
        else registry.get("eval") or config.eval_data or (str(DEFAULT_EVAL_DATA) if not own_train_data else None)
    )
    eval_pairs: dict[str, list[dict]] = {}
    for name, source in (
        eval_source.items()
        if isinstance(eval_source, dict)
        else [("eval", eval_source)]
        if eval_source is not None
        else []
    ):
        eval_pairs[name], eval_report = load_pairs(
            source, split="test", limit=config.max_eval_pairs, name=name, **options
        )
        report.merge(eval_report)
    if eval_source is None and config.eval_fraction > 0:
        train_pairs, held_out = train_test_split(train_pairs, config.eval_fraction, config.seed)
        eval_pairs["eval"] = held_out[: config.max_eval_pairs]
    validation_pairs = None
    if config.selects_checkpoint and VALIDATION in eval_pairs:
        raise ValueError(f"an eval set is named {VALIDATION!r}, the name of the pairs a checkpoint is chosen on")
    if config.selects_checkpoint:
        wanted = config.validation_pairs or max(1, round(0.1 * len(train_pairs)))
        train_pairs, validation_pairs = split_by_prompt(train_pairs, wanted, config.seed)
        if not train_pairs:
            raise ValueError(
                f"validation_pairs {wanted} takes every training pair (all {len(validation_pairs)}, whole prompts): "
                "ask for fewer"
            )
        logger.info(
            "Checkpoint chosen on %d validation pairs carved from the training data by prompt (%d left to train on)",
            len(validation_pairs),
            len(train_pairs),
        )
    train_set = encode_pairs(train_pairs, encoder, report)
    eval_sets = {name: encode_pairs(pairs, encoder, report) for name, pairs in eval_pairs.items() if pairs}
    validation = encode_pairs(validation_pairs, encoder, report) if validation_pairs else None
    logger.info("Data: %s", report.summary())
    return Splits(train_set, eval_sets, validation, report)


def weights_dtype(config: TrainConfig) -> torch.dtype:
    """fp16 training keeps fp32 master weights under fp16 autocast; bf16 and fp32 train in their own dtype."""
    dtype = resolve_dtype(config.dtype)
    return torch.float32 if dtype == torch.float16 else dtype


def build_model(config: TrainConfig, model_path: str, tokenizer) -> HybridRewardModel:
    causal_lm = load_causal_lm(model_path, weights_dtype(config), config.attn_implementation)
    fit_embeddings(causal_lm, tokenizer)
    lora = (
        LoraSettings(
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
        )
        if config.lora
        else None
    )
    model = HybridRewardModel.from_causal_lm(
        causal_lm, lora, head_init=config.reward_head_init, reward_readout=config.reward_readout
    )
    if config.reward_readout == PADDED_LAST_COLUMN:
        logger.warning(
            "ABLATION: reward_readout %s reads each reward at the last column of right-padded rows (pad = EOS), "
            "as the paper's code did: rewards of rows shorter than their batch's widest are read at padding. "
            "Not a setting to train a reward model with; the export is read at the last token as usual",
            PADDED_LAST_COLUMN,
        )
    if config.freeze_layers:
        model.freeze_trunk(config.freeze_layers)
    if config.disable_dropout:
        model.disable_dropout()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def replay_frozen_trunk(model: HybridRewardModel, collator: PairCollator, sets: list, batch_size: int, device) -> list:
    """Number the pairs through all sets and give the collator their cached frozen-trunk states to replay."""
    numbered, start = [], 0
    for dataset in sets:
        numbered.append(dataset.add_column("pair_index", list(range(start, start + len(dataset)))))
        start += len(dataset)
    collator.trunk = cached_trunk_states(model, sets, collator, batch_size, device)
    return numbered


PAPER_EVAL_PAIRS = 8  # pairs per evaluation forward in the paper's code (16 rows padded to the widest)


def optimizer_steps(config: TrainConfig, train_pairs: int) -> int:
    """Optimiser steps of the run, counted as transformers' Trainer counts them: max_steps, or epochs x the
    updates per epoch (each process's batches of micro_batch_size pairs, ceil-divided by accumulation)."""
    if config.max_steps > 0:
        return config.max_steps
    per_forward = config.micro_batch_size * world_size()
    accumulation = config.batch_size // per_forward
    batches = math.ceil(train_pairs / per_forward)
    return math.ceil(config.epochs * max(math.ceil(batches / accumulation), 1))


def warmup_steps(config: TrainConfig, train_pairs: int | None) -> int:
    """Warmup as a step count: warmup_ratio of the optimiser steps, rounded up as transformers rounds a ratio.
    transformers 5 has no warmup_ratio argument and reads a warmup_steps below 1 as a ratio, 1 or more as steps;
    an explicit count says what is meant whatever the value."""
    return 0 if not train_pairs else math.ceil(config.warmup_ratio * optimizer_steps(config, train_pairs))


def training_arguments(config: TrainConfig, has_eval: bool, train_pairs: int | None = None) -> TrainingArguments:
    """Map the config onto TrainingArguments; config.training_args passes anything else through.

    has_eval: whether the run has an eval set to report (validation pairs are implied by config.selects_checkpoint).
    train_pairs: size of the training set, for the warmup's step count (None: before the data is read, no warmup).
    The last step is what the run exports unless the config chooses a checkpoint on its validation pairs.
    """
    per_step = config.micro_batch_size * world_size()
    if config.batch_size % per_step:
        raise ValueError(
            f"batch_size {config.batch_size} is not a multiple of micro_batch_size x processes = {per_step}"
        )
    has_eval = has_eval or config.selects_checkpoint
    # Checkpoints follow evaluations when there is an eval set, so that a chosen one can be reloaded.
    save_steps = config.save_steps or (config.eval_steps if has_eval else None)
    eval_steps = (config.eval_steps or save_steps) if has_eval else None
    save_strategy = "steps" if save_steps else "epoch"
    eval_strategy = ("steps" if eval_steps else "epoch") if has_eval else "no"
    if config.eval_at_steps:
        # EvaluateAtSteps evaluates and checkpoints at those steps; the last step's model is the result. save_steps
        # adds checkpoints between them, so a long run cut off between evaluations loses at most save_steps steps.
        eval_strategy = "no"
        save_strategy = "steps" if config.save_steps else "no"
    dtype = resolve_dtype(config.dtype)
    arguments = dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=PAPER_EVAL_PAIRS
        if config.reward_readout == PADDED_LAST_COLUMN
        else config.micro_batch_size,
        gradient_accumulation_steps=config.batch_size // per_step,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=warmup_steps(config, train_pairs),
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=config.selects_checkpoint,
        metric_for_best_model=f"{VALIDATION}_accuracy" if config.selects_checkpoint else None,
        greater_is_better=True,
        report_to=config.report_to,
        run_name=config.run_name,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length",
        **mixed_precision(dtype),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    arguments.update(config.training_args)
    for half, other in (("bf16", "fp16"), ("fp16", "bf16")):  # one asked for turns off the one hafrm chose
        if config.training_args.get(half) and other not in config.training_args:
            arguments[other] = False
    try:
        return TrainingArguments(**arguments)
    except TypeError as error:  # an unknown key in training_args
        raise ValueError(f"training_args: {error}") from None


def mixed_precision(dtype: torch.dtype) -> dict:
    """TrainingArguments' bf16/fp16: what `accelerate launch` was told (its config file's mixed_precision, which
    DeepSpeed's config must match), else autocast in the weights' own half dtype on a GPU (fp16: over fp32 weights).
    training_args' own bf16/fp16 override both."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher in ("bf16", "fp16"):
        return {"bf16": launcher == "bf16", "fp16": launcher == "fp16"}
    on_gpu = torch.cuda.is_available()
    return {"bf16": dtype == torch.bfloat16 and on_gpu, "fp16": dtype == torch.float16 and on_gpu}


def resume_point(config: TrainConfig) -> str | None:
    """The checkpoint `hafrm train` resumes from (`checkpoint_to_resume` with hafrm's checkpoint checks)."""
    return checkpoint_to_resume(config.resume_from_checkpoint, config.output_dir, checkpoint_problem)


def checkpoint_to_resume(given: str | None, output_dir: str, problem: Callable[[str], str | None]) -> str | None:
    """The checkpoint to resume from: a given one, which must be readable, or with 'auto' the newest readable one in
    output_dir (None if there is none). problem(folder) says why a checkpoint cannot be resumed from, or None.

    A checkpoint cut off mid-write or with an unreadable file is set aside (renamed incomplete-* by the main process;
    every process of a distributed run skips it) with a warning naming the file, and the one before it is tried: a
    kill or a full disk costs a few steps, not the run.
    """
    if given != "auto":
        if given and (reason := problem(given)):
            raise ValueError(f"cannot resume from {given}: {reason}")
        return given
    if not Path(output_dir).is_dir():
        return None
    for checkpoint in checkpoints_newest_first(output_dir):
        if not (reason := problem(str(checkpoint))):
            logger.info("Resuming from %s", checkpoint)
            return str(checkpoint)
        logger.warning("Not resuming from %s: %s; trying the checkpoint before it", checkpoint, reason)
        if int(os.environ.get("RANK", "0")) == 0:  # one process sets it aside; every process skips it
            checkpoint.rename(checkpoint.with_name(f"incomplete-{checkpoint.name}"))
    return None


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    """The Trainer's checkpoint-N folders in output_dir, the highest step first."""
    found = [p for p in Path(output_dir).iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)


def previous_run(output_dir: str | Path, record: str = METADATA_FILE) -> list[Path]:
    """What shows that output_dir already holds a run: its exported record and its checkpoints."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in [folder / record, *folder.glob("checkpoint-*")] if p.exists())


def claim_output_dir(output_dir: str, resume: str | None, overwrite: bool, record: str = METADATA_FILE) -> None:
    """Refuse to train over another run unless told to resume it or overwrite it.

    Overwriting removes the old run's checkpoints: the Trainer would otherwise keep them (their step numbers
    are higher) and delete the new ones, and a later 'auto' resume would pick them up.
    """
    check_writable_dir(output_dir)
    existing = previous_run(output_dir, record)
    if not existing or resume:
        return
    if not overwrite:
        raise ValueError(
            f"output folder {output_dir} already holds a run ({', '.join(p.name for p in existing[:3])}); "
            "pass --resume-from-checkpoint auto to continue it, --overwrite-output-dir to replace it, "
            "or another --output-dir"
        )
    for checkpoint in [p for p in existing if p.is_dir()]:
        logger.warning("Overwriting the run in %s: removing %s", output_dir, checkpoint.name)
        shutil.rmtree(checkpoint, ignore_errors=True)  # ignore_errors: other processes of a distributed run do the same


# The package each transformers tracker needs, where its name is not the tracker's own.
TRACKER_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "flyte": "flytekit", "kubeflow": "kubeflow"}


def check_trackers(report_to: str | list[str]) -> None:
    """Every tracker in report_to can be used now: one line naming the package to install, before any model or data
    is loaded (transformers would fail only once training starts, after the reference pass)."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [n.strip() for n in (report_to.split(",") if isinstance(report_to, str) else report_to) if n.strip()]
    available = set(get_available_reporting_integrations())
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(
                f"report_to {name!r} is no tracker transformers knows; known: {', '.join(INTEGRATION_TO_CALLBACK)}"
            )
        if name not in available:
            package = TRACKER_PACKAGES.get(name, name)
            raise ValueError(
                f"report_to {name} needs the package {package}: pip install {package}"
                + (' (or pip install "hafrm[trackers]")' if name == "tensorboard" else "")
            )


def gives_train_data(config: TrainConfig, train_in_memory: bool = False) -> bool:
    """Whether the run trains on data of its own (a path, LLaMA-Factory sets or rows in memory), not the shipped
    sample, whose eval set then is not the shipped test sample either."""
    return train_in_memory or bool(config.dataset) or config.train_data is not None


def has_eval_set(config: TrainConfig, train_in_memory: bool = False, eval_in_memory: bool = False) -> bool:
    """Whether load_splits will build an eval set: given eval data, the shipped default, or a fraction of train."""
    own_train_data = gives_train_data(config, train_in_memory)
    given_eval = config.eval_data is not None or bool(config.eval_dataset)
    return eval_in_memory or given_eval or not own_train_data or config.eval_fraction > 0


def preflight(config: TrainConfig, train_in_memory: bool = False, eval_in_memory: bool = False) -> None:
    """Every check that needs no model or data, run before anything heavy, so that a user error costs
    seconds instead of a model load and a reference precompute: the output folder, the model folder, the
    loss settings, the TrainingArguments, the attention kernel on the run's device, and the checkpoint to resume
    from."""
    claim_output_dir(config.output_dir, config.resume_from_checkpoint, config.overwrite_output_dir)
    registry = [config.dataset_dir] if config.dataset or config.eval_dataset else []
    check_apart_from_data(config.output_dir, [config.train_data, config.eval_data, *registry])
    if config.model not in (None, "", "default"):
        check_model_folder(config.model)
    config.objective()
    check_trackers(config.report_to)
    args = training_arguments(config, has_eval_set(config, train_in_memory, eval_in_memory))
    check_attention_trains(config.attn_implementation, args.device)
    resume_point(config)


def final_eval_metrics(trainer: HafTrainer, eval_set, evaluated_in_full: bool) -> dict:
    """Metrics of the exported model on the whole eval set: from the log when training evaluated all of it at its
    last step, else evaluated now (a chosen checkpoint is never evaluated on the eval set before this)."""
    logged = {}
    for entry in trainer.state.log_history if evaluated_in_full else []:
        if entry.get("step") == trainer.state.global_step and any(
            k.startswith("eval_") and k.endswith("accuracy") for k in entry
        ):
            logged.update({k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"})
    return logged or trainer.evaluate(eval_dataset=eval_set)


def evaluation_sample(config: TrainConfig, eval_set):
    """The pairs evaluated during training: all of the eval set, or a seeded sample of eval_during_training_pairs."""
    if eval_set is None or not config.eval_during_training_pairs or config.eval_during_training_pairs >= len(eval_set):
        return eval_set
    return eval_set.shuffle(seed=config.seed).select(range(config.eval_during_training_pairs))


def compare_with_untrained(before, after) -> dict:
    """Each head's accuracy before and after training on the same pairs, with 95% intervals, and the paired
    difference."""
    comparison = {}
    before_correct, after_correct = correctness_from_predictions(before), correctness_from_predictions(after)
    for head, correct in after_correct.items():
        if head in before_correct:
            comparison[head] = {
                "pairs": len(correct),
                "before": accuracy_interval(before_correct[head]),
                "after": accuracy_interval(correct),
                "difference": paired_difference(correct, before_correct[head]),
            }
    return comparison


def train(
    config: TrainConfig | None = None,
    callbacks: list | None = None,
    *,
    train_data: str | os.PathLike | Rows | None = None,
    eval_data: str | os.PathLike | Rows | dict | None = None,
) -> TrainResult:
    """Train one model and export it; returns the output folder and final evaluation metrics.

    config: the settings (default: TrainConfig(), the paper's defaults on the shipped data).
    callbacks: extra transformers.TrainerCallback objects (progress hooks, timers).
    train_data, eval_data: override config.train_data / config.eval_data with a path, a datasets.Dataset or a list
    of dicts, in any schema a file may have (read through the same adapters, nothing written to disk). eval_data may
    also map test-set names to such data: each is evaluated apart (metrics eval_<name>_...).
    """
    config = config or TrainConfig()
    train_rows, eval_rows = _in_memory(train_data), _in_memory(eval_data)
    paths = {
        name: str(value)
        for name, value in (("train_data", train_data), ("eval_data", eval_data))
        if value is not None and isinstance(value, (str, os.PathLike))
    }
    if paths:
        config = dataclasses.replace(config, **paths)
    trust_remote_code(config.trust_remote_code)
    with output_lock(config.output_dir):
        return _train(config, callbacks, train_rows, eval_rows)


def check_template_name(config: TrainConfig, tokenizer) -> None:
    """LLaMA-Factory's `template` names a format hafrm does not have: the tokenizer's own chat template stands in
    for it (logged); without one, or beside prompt_template, it is refused."""
    if not config.template:
        return
    if config.prompt_template or not tokenizer.chat_template:
        raise ValueError(
            f"template {config.template!r} (LLaMA-Factory) names a format hafrm does not have: the tokenizer has "
            + (
                "no chat template of its own; give the prompt format as prompt_template"
                if not config.prompt_template
                else "prompt_template given too; drop template"
            )
        )
    logger.info(
        "template %s (LLaMA-Factory): hafrm formats with the tokenizer's own chat template, which the export carries",
        config.template,
    )


def _train(config: TrainConfig, callbacks, train_rows, eval_rows) -> TrainResult:
    """`train` once the output folder's lock is held."""
    preflight(config, train_rows is not None, eval_rows is not None)
    if isinstance(eval_rows, dict) and (config.compare_to_untrained or config.eval_during_training_pairs):
        raise ValueError(
            "compare_to_untrained and eval_during_training_pairs work on one eval set, not on named test sets"
        )
    set_seed(config.seed)
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    check_template_name(config, tokenizer)
    if config.prompt_template:
        tokenizer.chat_template = chat_template_for(config.prompt_template)
    encoder = PairEncoder(tokenizer, config.max_length, config.truncation)
    splits = load_splits(config, encoder, train_rows, eval_rows)
    train_set, report = splits.train, splits.report
    eval_sets = {**splits.evals, **({VALIDATION: splits.validation} if splits.validation is not None else {})}
    model = build_model(config, model_path, tokenizer)
    objective = config.objective()
    args = training_arguments(config, bool(eval_sets), len(train_set))
    callbacks = list(callbacks or [])
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    if config.eval_at_steps:
        callbacks.append(EvaluateAtSteps(config.eval_at_steps))
    model.to(args.device)  # the Trainer would move it later; the checks and precomputations need it there now
    collator = pair_collator_for(model, tokenizer, config.share_prompt)  # after the move: its check runs there
    if objective.uses_policy_head:  # before the precomputations, which would be wasted on a refused model
        model.check_policy_logits()
    if config.freeze_layers and config.trunk_cache and collator.share_prompt:
        with args.main_process_first(desc="frozen trunk"):
            train_set, *evaluated = replay_frozen_trunk(
                model, collator, [train_set, *eval_sets.values()], config.micro_batch_size, args.device
            )
            eval_sets = dict(zip(eval_sets, evaluated))
    # precomputed here, or (reference "live") a frozen copy of the policy kept by HafTrainer
    if objective.uses_policy_head and objective.policy_loss.needs_reference and config.reference == "precompute":
        with args.main_process_first(desc="reference log-probs"):
            train_set = add_reference_logps(model, train_set, collator, config.micro_batch_size, args.device, "train")
            eval_sets = {
                name: add_reference_logps(model, s, collator, config.micro_batch_size, args.device, name)
                for name, s in eval_sets.items()
            }
    validation = eval_sets.pop(VALIDATION, None)
    eval_set = eval_sets.get("eval") if list(eval_sets) == ["eval"] else (eval_sets or None)
    during = {VALIDATION: validation} if validation is not None else evaluation_sample(config, eval_set)
    record = run_metadata(config, model_path, splits, train_rows, eval_rows)
    trainer = HafTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=during,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=primary_metrics(config.method),
        objective=objective,
        callbacks=callbacks,
        eval_scores_dir=Path(config.output_dir) / EVAL_SCORES_DIR if config.keep_eval_scores else None,
        run_record=record,
    )
    before = trainer.predict(eval_set).predictions if config.compare_to_untrained and eval_set is not None else None
    trainer.train(resume_from_checkpoint=resume_point(config))
    if eval_set is None:
        metrics = {}
    elif before is not None:
        after = trainer.predict(eval_set, metric_key_prefix="eval")
        metrics = {**after.metrics, "compared_to_untrained": compare_with_untrained(before, after.predictions)}
    else:
        metrics = final_eval_metrics(trainer, eval_set, evaluated_in_full=during is eval_set)
    output_dir = Path(config.output_dir)
    statistics = reward_statistics(trainer, train_set)
    exported = exported_checkpoint(trainer, config, None if validation is None else len(validation))
    rebuild = functools.partial(build_model, config, model_path, tokenizer)
    with exportable_model(model, sharding(trainer), rebuild) as whole:  # every process gathers; the main exports
        if trainer.is_world_process_zero():
            export_run(whole, tokenizer, {**record, "reward_statistics": statistics}, metrics, exported)
    return TrainResult(output_dir, metrics, report.as_dict(), trainer.state.log_history)


@contextmanager
def exportable_model(model: HybridRewardModel, sharded_by: str | None, rebuild: Callable[[], HybridRewardModel]):
    """The model with whole parameters for an export the main process writes; every process must enter the block,
    since each holds a part of the parameters the others need, and a process gathering alone would wait on a
    collective the others never join (a crash under gloo, a hang under NCCL).

    sharded_by: None (one process, DDP, ZeRO-1/2: parameters are whole already), "zero3" (DeepSpeed gathers them in
    place) or "fsdp" (torch's FSDP2: torch.distributed.checkpoint gathers the full state dict to the main process's
    CPU, and the main process loads it into a model built again by `rebuild`; the other processes get None).
    """
    if sharded_by == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model
    elif sharded_by == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not state:  # not the main process: its part is gathered, it writes nothing
            yield None
            return
        whole = rebuild()
        whole.load_state_dict(state)
        yield whole
    else:
        yield model


def sharding(trainer: HafTrainer) -> str | None:
    """How a Trainer's run shards the parameters: "zero3", "fsdp" or None (whole on every process)."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    if trainer.is_deepspeed_enabled and trainer.accelerator.deepspeed_config["zero_optimization"].get("stage") == 3:
        return "zero3"
    return None


def reward_statistics(trainer: HafTrainer, train_set) -> dict:
    """Mean and std of the exported reward head over the chosen and rejected responses of the eval sets as the last
    evaluation scored them (no extra pass), or of the training pairs (one pass) where there is no eval set: what
    OpenRLHF's reward models carry as config.mean and config.std for `--normalize_reward` (std at least 1e-8)."""
    from hafrm.eval.metrics import reward_mean_std

    step = trainer.state.global_step
    final = {
        name: predictions
        for name, (at, predictions) in trainer.evaluated.items()
        if at == step and name != f"eval_{VALIDATION}"
    }
    if not final:
        final = {"train": trainer.predict(train_set, metric_key_prefix="statistics").predictions}
    mean, std, count = reward_mean_std(list(final.values()))
    sets = [name.removeprefix("eval_") for name in final]
    return {"mean": mean, "std": std, "responses": count, "computed_on": sets}


def exported_checkpoint(trainer: HafTrainer, config: TrainConfig, validation_pairs: int | None) -> dict:
    """Which step the export holds and how it was chosen, for hafrm.json and the model card."""
    state = trainer.state
    if not config.selects_checkpoint:
        return {"step": state.global_step, "of_steps": state.global_step, "chosen_by": "last step"}
    chosen = state.best_global_step is not None
    return {
        "step": state.best_global_step if chosen else state.global_step,
        "of_steps": state.global_step,
        "chosen_by": "best validation accuracy" if chosen else "last step (no validation evaluation ran)",
        "validation_pairs": validation_pairs,
        "validation_accuracy": state.best_metric,
    }


def run_metadata(config: TrainConfig, model_path: str, splits: Splits, train_rows=None, eval_rows=None) -> dict:
    """What identifies a run: versions, the base model, the config, the pairs of each part and the data report;
    written into every checkpoint (so `hafrm export` can rebuild the model) and, with the metrics and the exported
    step, as hafrm.json."""
    in_memory = [name for name, rows in (("train", train_rows), ("eval", eval_rows)) if rows is not None]
    return {
        "hafrm_version": __version__,
        "base_model": config.model or "default",
        "base_model_name": config.model or f"{DEFAULT_MODEL_HUB_ID} (hafrm's embedded copy, dequantized from Q4_1)",
        "base_model_path": model_path,
        "config": config.to_dict(),
        **({"in_memory_data": in_memory} if in_memory else {}),
        "pairs": {
            "train": len(splits.train),
            "validation": len(splits.validation) if splits.validation is not None else 0,
            "eval": {name: len(dataset) for name, dataset in splits.evals.items()},
        },
        "data": splits.report.as_dict(),
    }


def export_run(model, tokenizer, record: dict, metrics: dict, exported: dict) -> None:
    """The run's Hugging Face folders and its record (hafrm.json: the run metadata, metrics, exported step)."""
    metadata = {**record, "exported_checkpoint": exported, "eval_metrics": metrics}
    extra = {"eval_metrics.json": json.dumps(metrics, indent=2)}
    model.export(record["config"]["output_dir"], tokenizer, metadata, extra_files=extra)


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path) -> Path:
    """Write the folders a finished run writes from one of its checkpoints: the model rebuilt from the checkpoint's
    run record (config, base model) and tokenizer, with its trainable state loaded; hafrm.json names the step."""
    checkpoint = Path(checkpoint)
    if problem := checkpoint_problem(checkpoint):
        raise ValueError(f"{checkpoint} cannot be exported: {problem}")
    record_path = checkpoint / RUN_RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if "config" not in record:
        raise ValueError(
            f"{checkpoint} has no run record with its config ({RUN_RECORD_FILE}): it was written by a HafTrainer "
            "built by hand, or by a hafrm that did not record runs in checkpoints yet; rebuild the model in Python "
            f"and call load_trainable_state_dict on its {TRAINABLE_STATE_FILE}"
        )
    with output_lock(output_dir):
        claim_output_dir(str(output_dir), None, False)
        config = TrainConfig(**{**record["config"], "output_dir": str(output_dir)})
        return _export_from(checkpoint, record, config)


def _export_from(checkpoint: Path, record: dict, config: TrainConfig) -> Path:
    """`export_checkpoint` once the target's lock is held."""
    from safetensors.torch import load_file

    tokenizer = load_tokenizer(str(checkpoint))
    model = build_model(config, record["base_model_path"], tokenizer)
    model.load_trainable_state_dict(load_file(checkpoint / TRAINABLE_STATE_FILE))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    exported = {
        "step": state["global_step"],
        "of_steps": state.get("max_steps"),
        "chosen_by": f"hafrm export of {checkpoint.name}",
    }
    export_run(model, tokenizer, {**record, "config": config.to_dict()}, {}, exported)
    return Path(config.output_dir)


class EvaluateAtSteps(TrainerCallback):
    """Evaluate and checkpoint at exactly these optimiser steps (learning curves at 16, 32, 64, ... steps)."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_evaluate = control.should_save = True
        return control


class RunClock(TrainerCallback):
    """A run's wall time across restarts, for the report's cost: every checkpoint records the seconds spent up to it
    (CLOCK_FILE), and a run resumed from a checkpoint counts on from that record. What a cut-off process did after
    its last checkpoint is lost and not counted; the restart redoes it."""

    def __init__(self):
        self.start = time.perf_counter()
        self.before = 0.0  # seconds spent by earlier processes, up to the checkpoint this one resumed from

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    @staticmethod
    def record(args, state) -> Path:
        """The clock record of the checkpoint at the current step."""
        return Path(args.output_dir) / f"checkpoint-{state.global_step}" / CLOCK_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        record = self.record(args, state)
        if not (state.global_step and record.exists()):  # a fresh run, or a checkpoint written without a clock
            return
        try:
            self.before = float(json.loads(record.read_text())["wall_s"])
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("Run time before the restart not counted: %s is unreadable (%s)", record, error)

    def on_save(self, args, state, control, **kwargs):
        record = self.record(args, state)
        if state.is_world_process_zero:
            text = json.dumps({"wall_s": self.elapsed()})
            write_atomically(record, lambda path: path.write_text(text))  # a kill never leaves half a record


def _in_memory(data):
    """`data` if it is rows in memory (a datasets.Dataset or a list of dicts) or a mapping of names to data;
    None for a path or nothing."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None
    if isinstance(data, dict):
        return {
            str(name): value if isinstance(value, (str, os.PathLike)) else _in_memory(value)
            for name, value in data.items()
        }
    if isinstance(data, datasets.Dataset) or (isinstance(data, list) and all(isinstance(row, dict) for row in data)):
        return data
    raise TypeError(f"training data must be a path, a datasets.Dataset or a list of dicts, got {type(data).__name__}")

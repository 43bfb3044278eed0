"""A transformers.Trainer for the hybrid objective (so Accelerate, DeepSpeed and FSDP work unchanged).

The Trainer drives optimisation, logging, evaluation and checkpoints; this subclass only says how a
batch becomes a loss, how evaluation turns into pairwise accuracies, and how the hybrid model's
trainable state is written to and read from a checkpoint (atomically).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput

from hafrm.data import PairCollator, PairEncoder, load_pairs
from hafrm.data.encoding import EVAL_POSITION, encode_pairs
from hafrm.eval.scores import forward_batch, implicit_rewards
from hafrm.io.atomic import write_atomically, write_errors_named
from hafrm.io.export import RUN_RECORD_FILE, TRAINABLE_STATE_FILE
from hafrm.io.filechecks import first_line, safetensors_problem, torch_file_problem
from hafrm.io.pretrained import check_attention_trains, fit_embeddings
from hafrm.model.hybrid import PADDED_LAST_COLUMN, HybridRewardModel
from hafrm.model.losses import HafObjective

logger = logging.getLogger(__name__)
STATE_FILE = TRAINABLE_STATE_FILE
EVAL_SCORES_DIR = "eval-scores"  # per-pair scores of every evaluation: step-<N>-<eval set>.npz (PairScores)
TRAINER_STATE_FILE = "trainer_state.json"
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")  # the Trainer loads these with weights_only=True


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stops instead of silently diverging."""


class _TrainableStateCheckpoints:
    """Checkpoints of the hybrid model's trainable state only (LoRA weights + reward head, or everything under
    full fine-tuning), written atomically, for a Trainer.

    These override private transformers.Trainer methods (checked against transformers 5.24; tests/test_interface.py
    fails when their signatures change): the Trainer has no public hook for how a model that is not a
    PreTrainedModel is written to and read from a checkpoint. `save_model` is public but would have to repeat the
    DeepSpeed/FSDP state gathering it does before calling `_save`; resuming (`_load_from_checkpoint`) and reloading the
    best checkpoint (`_load_best_model`) have no public counterpart at all, nor has a failed checkpoint write
    (`_save_checkpoint`, which also calls `_get_output_dir`). They are kept here, together and small.
    """

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write the trainable state to a temporary file and rename it into place (atomic on POSIX)."""
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        trainable = model.trainable_state_dict()
        if state_dict:  # gathered by the Trainer under DeepSpeed/FSDP, where local parameters are shards
            trainable = {name: state_dict[name].contiguous() for name in trainable}
        write_atomically(output_dir / STATE_FILE, lambda path: save_file(trainable, path))
        torch.save(self.args, output_dir / "training_args.bin")
        if self.processing_class is not None:  # with the record, what `hafrm export` rebuilds the model from
            self.processing_class.save_pretrained(output_dir)
        record = json.dumps(self.run_record or {"base_model_path": model.causal_lm.name_or_path}, indent=2, default=str)
        write_atomically(output_dir / RUN_RECORD_FILE, lambda path: path.write_text(record))

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, with a failed write (a full disk, say) raised as one OSError naming the file; the
        checkpoint left behind has no trainer_state.json, so resuming never starts from it."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        with write_errors_named(folder, f"checkpoint-{self.state.global_step}"):
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        state_path = Path(resume_from_checkpoint) / STATE_FILE
        problem = safetensors_problem(state_path)
        if problem:
            raise ValueError(f"{resume_from_checkpoint} is not a usable hafrm checkpoint: {problem}")
        (model or self.accelerator.unwrap_model(self.model)).load_trainable_state_dict(load_file(state_path))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class HafTrainer(_TrainableStateCheckpoints, Trainer):
    """A transformers.Trainer for the hybrid objective, constructed like TRL's trainers::

        tokenizer = hafrm.io.pretrained.load_tokenizer("path/to/causal-lm")
        trainer = HafTrainer(model=AutoModelForCausalLM.from_pretrained("path/to/causal-lm"),
                             args=TrainingArguments("out"), train_dataset=rows, processing_class=tokenizer)
        trainer.train()

    model: a HybridRewardModel, or a causal LM (given a fresh reward head, and an embedding row for the tokenizer's
        pad token where it has none).
    args: transformers.TrainingArguments; remove_unused_columns is turned off (the collator reads every column).
    train_dataset, eval_dataset: preference rows in any schema hafrm reads (a datasets.Dataset or a list of dicts),
        tokenized here with processing_class up to max_length; or sets already encoded by hafrm.data.PairEncoder.
    processing_class: the tokenizer; load it with hafrm.io.pretrained.load_tokenizer, which picks a pad token that no
        text contains (the reward is read at the last non-pad token).
    objective: the loss (default HafObjective(): haf, alpha 0.2, tau 0.1, sigmoid DPO loss).
    run_record: what `hafrm train` records of the run (config, base model path, data report), written with the
        tokenizer into every checkpoint so `hafrm export CHECKPOINT` can rebuild the model; without it a checkpoint
        records only the base model's path.
    When the policy loss needs a reference and the data carries no precomputed reference log-probs, the reference
    is the LoRA base with adapters off, else a frozen copy of the initial policy (as TRL's DPOTrainer keeps one).

    The Trainer drives optimisation, logging, evaluation and checkpoints (so Accelerate, DeepSpeed and FSDP work
    unchanged); this subclass says how a batch becomes a loss, how evaluation becomes pairwise accuracies, and how
    the trainable state is checkpointed. `hafrm.train` builds all of this from a TrainConfig.
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        objective: HafObjective | None = None,
        max_length: int = 512,
        compute_metrics=None,
        eval_scores_dir: str | Path | None = None,
        run_record: dict | None = None,
        **kwargs,
    ):
        objective = objective or HafObjective()
        if model is not None and not isinstance(model, HybridRewardModel):
            if processing_class is not None:
                fit_embeddings(model, processing_class)
            model = HybridRewardModel.from_causal_lm(model)
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")
        if model is not None:
            check_attention_trains(model.config._attn_implementation, args.device)
        args.remove_unused_columns = False
        train_dataset = self._encoded(train_dataset, "train_dataset", processing_class, max_length)
        eval_dataset = self._eval_sets(eval_dataset, processing_class, max_length)
        build_collator = data_collator is None and processing_class is not None and model is not None
        if compute_metrics is None:
            from hafrm.eval.metrics import primary_metrics

            compute_metrics = primary_metrics(objective.method)
        precomputed = train_dataset is not None and "reference_chosen_logps" in train_dataset.column_names
        if (
            objective.uses_policy_head
            and objective.policy_loss.needs_reference
            and model is not None
            and not precomputed
        ):
            if not model.is_peft and model.reference_model is None:
                model.keep_frozen_reference()
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            **kwargs,
        )
        check_sharding_is_on(self)
        if objective.uses_policy_head and model is not None:
            self.model.check_policy_logits()  # where the Trainer put it (DeepSpeed and FSDP place it later)
        if build_collator:
            self.data_collator = pair_collator_for(self.model, processing_class)
        elif isinstance(self.data_collator, PairCollator) and self.data_collator.share_prompt:
            self._unshare_prompts_unless_checked(self.data_collator)
        self.objective = objective
        self.max_length = max_length
        self.eval_scores_dir = Path(eval_scores_dir) if eval_scores_dir is not None else None
        self.run_record = run_record
        self.evaluated: dict[str, tuple[int, np.ndarray]] = {}  # metric prefix -> (step, its last predictions)
        self._train_stats: dict[str, list[float]] = defaultdict(list)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer.save_model; called by a user (not for a checkpoint) it writes the folders `hafrm train` exports
        (reward_model/, policy/, adapters, hafrm.json), from a copy where LoRA adapters must be merged, so training
        can go on. Under DeepSpeed or FSDP it writes the trainable state only: export that with `hafrm export`."""
        if _internal_call or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super().save_model(output_dir, _internal_call)
            if not _internal_call:
                logger.warning("save_model under DeepSpeed/FSDP wrote the trainable state only: hafrm export it")
            return
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        exported = copy.deepcopy(model) if model.is_peft else model
        step = self.state.global_step
        metadata = {
            **(self.run_record or {"base_model_path": model.causal_lm.name_or_path}),
            "exported_checkpoint": {"step": step, "of_steps": self.state.max_steps, "chosen_by": "save_model"},
        }
        exported.export(output_dir or self.args.output_dir, self.processing_class, metadata)

    def _unshare_prompts_unless_checked(self, collator: PairCollator) -> None:
        """A given shared-prompt collator turns to separate rows where `check_prompt_sharing` finds this model
        cannot share; cached frozen-trunk states of shared rows cannot be replayed into separate rows, so refuse."""
        if self.model.check_prompt_sharing():
            return
        if collator.trunk is not None:
            raise ValueError(
                "the collator replays frozen-trunk states of shared-prompt rows, but this model cannot share prompts "
                "(see the log line above): build the trunk cache with PairCollator(share_prompt=False)"
            )
        collator.share_prompt = False

    @staticmethod
    def _encoded(data, name: str, tokenizer, max_length: int):
        """A set encoded for the collator: as given if it already is, else preference rows read and tokenized."""
        if data is None or (isinstance(data, datasets.Dataset) and "chosen_input_ids" in data.column_names):
            return data
        if tokenizer is None:
            raise ValueError(f"{name} holds preference rows: pass processing_class (the tokenizer) to encode them")
        pairs, report = load_pairs(data, name=name)
        return encode_pairs(pairs, PairEncoder(tokenizer, max_length), report)

    @classmethod
    def _eval_sets(cls, eval_data, tokenizer, max_length: int):
        """Eval sets encoded (`_encoded`), each pair numbered by its position in its set: batches of similar length
        (group_by_length) take pairs out of order, and evaluation_loop puts their scores back in it."""
        if isinstance(eval_data, dict):
            return {k: cls._eval_sets(v, tokenizer, max_length) for k, v in eval_data.items()}
        encoded = cls._encoded(eval_data, "eval_dataset", tokenizer, max_length)
        if encoded is None:
            return None
        if EVAL_POSITION in encoded.column_names:  # numbered as part of a larger set (a sample of it): renumbered
            encoded = encoded.remove_columns(EVAL_POSITION)
        return encoded.add_column(EVAL_POSITION, list(range(len(encoded))))

    # ------------------------------------------------------------------ loss

    def _batch_outputs(self, model, inputs, with_logps: bool):
        """Forward the batch once; return the loss, its statistics, the outputs and the reference log-probs."""
        outputs, reference = forward_batch(
            model, self.objective, inputs, with_logps, self.accelerator.unwrap_model(model)
        )
        loss, stats = self.objective(
            outputs.rewards, outputs.logps, outputs.token_counts, reference, inputs.get("margin")
        )
        return loss, stats, outputs, reference

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, stats, outputs, _ = self._batch_outputs(model, inputs, with_logps=self.objective.trains_policy)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at optimisation step {self.state.global_step + 1} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in stats.items())}); lower the learning rate, "
                "check the data for extreme lengths, or use fp32"
            )
        if model.training:
            for key, value in stats.items():
                self._train_stats[key].append(value.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the running means of the reward/policy statistics to each training log line, averaged over all
        processes (each has seen as many batches since the last line, so the mean of their means is the mean)."""
        if "loss" in logs and self._train_stats:
            keys = sorted(self._train_stats)
            local = torch.tensor([float(np.mean(self._train_stats[k])) for k in keys], device=self.accelerator.device)
            gathered = self.accelerator.reduce(local, reduction="mean")
            logs.update({key: float(value) for key, value in zip(keys, gathered.tolist())})
            self._train_stats.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Trainer.evaluate; a set given here (not by name) is encoded and numbered as the constructor's are."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._eval_sets(eval_dataset, self.processing_class, self.max_length)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test"):
        """Trainer.predict, the set encoded and numbered as the constructor's eval sets are."""
        test_dataset = self._eval_sets(test_dataset, self.processing_class, self.max_length)
        return super().predict(test_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """Trainer.evaluation_loop with the predictions in the eval set's order (the sampler's order depends on the
        seed under group_by_length), keeping each evaluation's per-pair scores when eval_scores_dir is set."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if output.predictions is not None:
            output = in_eval_set_order(output)
            self.evaluated[metric_key_prefix] = (self.state.global_step, output.predictions)
        if self.eval_scores_dir is not None and self.is_world_process_zero() and output.predictions is not None:
            from hafrm.eval.evaluation import PairScores

            name = metric_key_prefix.removeprefix("eval_") if metric_key_prefix != "eval" else "eval"
            self.eval_scores_dir.mkdir(parents=True, exist_ok=True)
            PairScores.from_predictions(output.predictions).save(
                self.eval_scores_dir / f"step-{self.state.global_step}-{name}.npz"
            )
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Return per-pair [r_w, r_l, implicit_w, implicit_l] as the 'logits' for compute_metrics."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, _, outputs, reference = self._batch_outputs(model, inputs, with_logps=self.objective.uses_policy_head)
        rewards, implicit = outputs.rewards, implicit_rewards(self.objective, outputs, reference)
        chosen_r, rejected_r = rewards.chunk(2)
        chosen_i, rejected_i = implicit.chunk(2)
        scores = torch.stack([chosen_r, rejected_r, chosen_i, rejected_i], dim=1)
        return loss.detach(), scores, inputs[EVAL_POSITION]  # the "labels": where each pair's scores belong


def pair_collator_for(model: HybridRewardModel, tokenizer, share_prompt: bool = True) -> PairCollator:
    """The batches a model trains on: pairs share their prompt where `check_prompt_sharing` finds it gives what
    separate rows give (it logs why not); the paper code's readout ablation reads right-padded separate rows whose
    padding is EOS."""
    if model.reward_readout == PADDED_LAST_COLUMN:
        return PairCollator(tokenizer.eos_token_id, "right", share_prompt=False)
    return PairCollator(tokenizer.pad_token_id, tokenizer.padding_side, share_prompt and model.check_prompt_sharing())


def check_sharding_is_on(trainer: Trainer) -> None:
    """Refuse FSDP that was asked for but is not running. accelerate 1.16 turns FSDP on only for GPU-like devices:
    under torchrun on CPUs (its MULTI_CPU), the Trainer's `fsdp` arguments and an accelerate FSDP config are dropped
    without a word and training runs as plain data parallelism, every process holding the whole model."""
    import os

    asked = bool(trainer.args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not trainer.is_fsdp_enabled:
        raise ValueError(
            f"FSDP was asked for, but accelerate runs this job as {trainer.accelerator.distributed_type.value} "
            "without it (accelerate enables FSDP on GPUs and other accelerators only, not on CPUs): drop the FSDP "
            "settings to train data-parallel, or run on GPUs"
        )


def in_eval_set_order(output: EvalLoopOutput) -> EvalLoopOutput:
    """The evaluation's prediction rows sorted by the eval-set position each pair carried through the batches."""
    positions = np.asarray(output.label_ids).astype(np.int64)
    if not np.array_equal(np.sort(positions), np.arange(len(positions))):
        raise RuntimeError(f"evaluation returned {len(positions)} pairs that are not each eval pair once")
    order = np.argsort(positions)
    return output._replace(predictions=output.predictions[order], label_ids=positions[order])


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why the Trainer could not resume from this checkpoint folder, naming the bad file; None if it can.

    Checks every file the Trainer reads on resume, the way it reads them, without loading tensors: our
    trainable state and trainer_state.json (written last, so missing means cut off mid-write), then the
    optimizer, scheduler, scaler and RNG states where present (transformers loads each with weights_only=True).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if problem := safetensors_problem(folder / STATE_FILE) or trainer_state_problem(folder / TRAINER_STATE_FILE):
        return problem
    for path in [folder / name for name in TORCH_STATE_FILES if (folder / name).exists()]:
        if problem := torch_file_problem(path):
            return problem
    for path in sorted(folder.glob("rng_state*.pth")):  # transformers allowlists numpy types for these
        if problem := torch_file_problem(path, numpy_allowed=True):
            return problem
    return None


def trainer_state_problem(path: Path) -> str | None:
    """Why transformers' TrainerState could not be read from this file (it names neither file nor cause)."""
    from transformers import TrainerState

    if not path.is_file():
        return f"{path} is missing"
    try:
        state = TrainerState.load_from_json(str(path))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        return f"{path} is not a valid trainer state ({first_line(error)})"
    if not isinstance(state.global_step, int) or not isinstance(state.log_history, list):
        return f"{path} is not a valid trainer state (global_step or log_history has the wrong type)"
    return None

"""A transformers.Trainer for the hybrid objective (so Accelerate, DeepSpeed and FSDP work unchanged).

The Trainer drives optimisation, logging, evaluation and checkpoints; this subclass only says how a
batch becomes a loss, how evaluation turns into pairwise accuracies, and how the hybrid model's
trainable state is written to and read from a checkpoint (atomically).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from hafrm.filechecks import first_line, safetensors_problem, torch_file_problem
from hafrm.losses import HafObjective
from hafrm.scores import forward_batch, implicit_rewards

STATE_FILE = "hafrm_trainable.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")  # the Trainer loads these with weights_only=True


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stops instead of silently diverging."""


class HafTrainer(Trainer):
    def __init__(self, *args, objective: HafObjective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self._train_stats: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------ loss

    def _batch_outputs(self, model, inputs, with_logps: bool):
        """Forward the batch once; return the loss, its statistics, the outputs and the reference log-probs."""
        outputs, reference = forward_batch(model, self.objective, inputs, with_logps, self.accelerator.unwrap_model(model))
        loss, stats = self.objective(outputs.rewards, outputs.logps, outputs.token_counts, reference, inputs.get("margin"))
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
        """Add the running means of the reward/policy statistics to each training log line."""
        if "loss" in logs and self._train_stats:
            logs.update({key: float(np.mean(values)) for key, values in self._train_stats.items()})
            self._train_stats.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Return per-pair [r_w, r_l, implicit_w, implicit_l] as the 'logits' for compute_metrics."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, _, outputs, reference = self._batch_outputs(model, inputs, with_logps=self.objective.uses_policy_head)
        rewards, implicit = outputs.rewards, implicit_rewards(self.objective, outputs, reference)
        chosen_r, rejected_r = rewards.chunk(2)
        chosen_i, rejected_i = implicit.chunk(2)
        scores = torch.stack([chosen_r, rejected_r, chosen_i, rejected_i], dim=1)
        return loss.detach(), scores, torch.zeros(scores.shape[0], device=scores.device)

    # ------------------------------------------------------------------ checkpoints

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write the trainable state to a temporary folder and rename it into place (atomic on POSIX)."""
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        temporary = output_dir / f".{STATE_FILE}.tmp"
        trainable = model.trainable_state_dict()
        if state_dict:  # gathered by the Trainer under DeepSpeed/FSDP, where local parameters are shards
            trainable = {name: state_dict[name].contiguous() for name in trainable}
        save_file(trainable, temporary)
        os.replace(temporary, output_dir / STATE_FILE)
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        state_path = Path(resume_from_checkpoint) / STATE_FILE
        problem = safetensors_problem(state_path)
        if problem:
            raise ValueError(f"{resume_from_checkpoint} is not a usable hafrm checkpoint: {problem}")
        (model or self.accelerator.unwrap_model(self.model)).load_trainable_state_dict(load_file(state_path))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


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

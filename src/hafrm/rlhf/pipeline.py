"""`hafrm rlhf`: a policy trained against a reward model with TRL's GRPOTrainer.

Why GRPO: TRL 1.16 ships two online trainers, GRPOTrainer and RLOOTrainer, and no PPO (not even under
`trl.experimental`). GRPO is its main one and takes a KL penalty to a reference (`beta`), as the paper's PPO
has. How it differs from the paper's PPO (LLaMA-Factory): no value model and no GAE; the advantage of a completion is
its reward minus the mean reward of the `num_generations` completions of the same prompt (divided by their std with
`scale_rewards: group`); the KL to the start policy is a loss term, not folded into the reward; one policy update
per batch of rollouts (TRL's `num_iterations` 1), so no clipped ratio comes into play.

What a run writes in output_dir:
  checkpoint-N/   TRL's checkpoints: the policy at step N (loads with AutoModelForCausalLM, its tokenizer beside it),
                  optimizer, scheduler and RNG state to resume from
  policy/         the policy at the last step (LoRA: merged), adapter/ the LoRA adapter (LoRA runs); each written
                  in a staging folder and renamed into place
  rollouts.jsonl  every completion trained on: the step it was sampled for, prompt index, text, tokens, reward
  rlhf.json       the run record, written last: config, start policy, reward model, prompts, steps
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from hafrm import __version__
from hafrm.data.encoding import PairEncoder
from hafrm.data.loading import load_prompts
from hafrm.io.atomic import staged_parts, write_atomically
from hafrm.io.export import ADAPTER_DIR, POLICY_DIR
from hafrm.io.filechecks import check_model_folder, safetensors_problem
from hafrm.io.locking import output_lock
from hafrm.io.pretrained import load_causal_lm, load_tokenizer, resolve_policy_path
from hafrm.io.remote_code import trust_remote_code
from hafrm.rlhf.config import RlhfConfig
from hafrm.serve.rlhf import reward_function, spec_model_head
from hafrm.training.pipeline import check_trackers, checkpoint_to_resume, claim_output_dir

logger = logging.getLogger(__name__)
RECORD_FILE = "rlhf.json"
ROLLOUTS_FILE = "rollouts.jsonl"


def capped_prompts(
    source: str, tokenizer, max_prompt_length: int, data_format: str = "auto", split: str = "train", limit=None
) -> tuple[list[list[dict]], dict]:
    """The distinct prompts of `source` as chat messages, without those longer than max_prompt_length tokens once
    formatted for `tokenizer`; and their counts."""
    prompts, report = load_prompts(source, data_format, split, limit=limit)
    encoder = PairEncoder(tokenizer)
    kept = [p for p in prompts if len(encoder.tokenize(encoder.prompt_text(p))) <= max_prompt_length]
    counts = {"rows_read": report.rows_read, "distinct": len(prompts), "used": len(kept)}
    if len(kept) < len(prompts):
        logger.info(
            "%d of %d prompts are over %d tokens and left out",
            len(prompts) - len(kept),
            len(prompts),
            max_prompt_length,
        )
    if not kept:
        raise ValueError(f"{source}: no prompt of at most {max_prompt_length} tokens (max_prompt_length)")
    return kept, counts


def resume_checkpoint(config: RlhfConfig) -> str | None:
    """The checkpoint `hafrm rlhf` resumes from (`checkpoint_to_resume` with `policy_checkpoint_problem`)."""
    return checkpoint_to_resume(config.resume_from_checkpoint, config.output_dir, policy_checkpoint_problem)


def policy_checkpoint_problem(folder: str) -> str | None:
    """Why a TRL checkpoint cannot be resumed from: it is whole once its trainer_state.json (written last) is there and
    its weights read."""
    if not Path(folder).is_dir():
        return "no such folder"
    if not (Path(folder) / "trainer_state.json").is_file():
        return "it has no trainer_state.json (cut off while it was written)"
    weights = sorted(Path(folder).glob("*.safetensors"))
    return "it holds no weights" if not weights else next(filter(None, map(safetensors_problem, weights)), None)


class RolloutLog:
    """Wraps a reward function: every (prompt, completion, reward) it scores goes to rollouts.jsonl, with the step it
    was sampled for (TRL passes its TrainerState) and the prompt's index (the data set's prompt_id column)."""

    def __init__(self, reward, path: Path, resumed_at: int):
        self.reward, self.path = reward, path
        self.__name__ = reward.__name__
        keep_rows_up_to(path, resumed_at)  # rows of steps after the checkpoint are sampled again

    def __call__(self, prompts, completions, completion_ids=None, trainer_state=None, prompt_id=None, **kwargs):
        rewards = self.reward(prompts, completions)
        step = (trainer_state.global_step if trainer_state is not None else 0) + 1
        ids = prompt_id or [None] * len(prompts)
        lengths = [len(c) for c in completion_ids] if completion_ids is not None else [None] * len(prompts)
        rows = [
            {
                "step": step,
                "prompt_id": i,
                "completion": c[-1]["content"] if isinstance(c, list) else c,
                "completion_tokens": n,
                "reward": r,
            }
            for i, c, n, r in zip(ids, completions, lengths, rewards)
        ]
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return rewards


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rollouts of steps after `step` (a resumed run samples them again), and a last line cut off by a kill."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if (row := _row(line)) is not None and row["step"] <= step]
    if len(kept) < len(rows):
        write_atomically(
            path, lambda target: target.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        )


def _row(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class LogLines(TrainerCallback):
    """One log line per logging step, as `hafrm train` logs: the reward, its spread, KL and completion length."""

    KEYS = ("reward", "reward_std", "kl", "completions/mean_length", "loss")

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: logs[k] for k in self.KEYS if logs and k in logs}
        if shown:
            logger.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))


def grpo_arguments(config: RlhfConfig):
    """TRL's GRPOConfig from ours: the CPU or the GPU as found, bf16 autocast on a GPU that has it."""
    from trl import GRPOConfig

    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to=config.report_to,
        run_name=config.run_name,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=0,
    )


def lora_config(config: RlhfConfig):
    from peft import LoraConfig

    modules = config.lora_target_modules
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules if modules == "all-linear" else [m.strip() for m in modules.split(",")],
    )


def preflight(config: RlhfConfig) -> str:
    """The checks that need no model: the output folder, the reward model's name and folder, the start policy's
    folder, the checkpoint to resume from. Returns the start policy's path."""
    claim_output_dir(config.output_dir, config.resume_from_checkpoint, config.overwrite_output_dir, RECORD_FILE)
    check_trackers(config.report_to)
    spec_model_head(config.reward_model)
    policy_path = resolve_policy_path(config.policy)
    check_model_folder(policy_path)
    resume_checkpoint(config)
    return policy_path


def train_policy(config: RlhfConfig, callbacks: list | None = None) -> Path:
    """Train the policy and write the folders above, holding output_dir's lock; returns output_dir."""
    trust_remote_code(config.trust_remote_code)
    with output_lock(config.output_dir):
        return _train_policy(config, callbacks)


def _train_policy(config: RlhfConfig, callbacks: list | None) -> Path:
    import datasets
    from trl import GRPOTrainer

    policy_path = preflight(config)
    output_dir = Path(config.output_dir)
    tokenizer = load_tokenizer(policy_path)
    prompts, prompt_counts = capped_prompts(
        config.prompts, tokenizer, config.max_prompt_length, config.data_format, config.split, config.max_prompts
    )
    reward = reward_function(
        config.reward_model, config.reward_max_length, config.reward_batch_size, label_index=config.label_index
    )
    resume = resume_checkpoint(config)
    resumed_at = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = datasets.Dataset.from_list([{"prompt": p, "prompt_id": i} for i, p in enumerate(prompts)])
    trainer = GRPOTrainer(
        model=load_causal_lm(policy_path, torch.float32),
        reward_funcs=[RolloutLog(reward, output_dir / ROLLOUTS_FILE, resumed_at)],
        args=grpo_arguments(config),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.lora else None,
        callbacks=[LogLines(), *(callbacks or [])],
    )
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        export_policy(trainer.model, tokenizer, output_dir)
        record = {
            "hafrm_version": __version__,
            "config": config.to_dict(),
            "start_policy": policy_path,
            "prompts": prompt_counts,
            "steps": trainer.state.global_step,
            "exported_step": trainer.state.global_step,
            "last_log": next((e for e in reversed(trainer.state.log_history) if "reward" in e), {}),
        }
        write_atomically(output_dir / RECORD_FILE, lambda path: path.write_text(json.dumps(record, indent=2)))
    return output_dir


def export_policy(model, tokenizer, output_dir: Path) -> None:
    """policy/ (and adapter/ for LoRA), built in a staging folder and renamed into place after the old run record is
    removed (`staged_parts`): a reader never finds a record beside half a policy."""
    with staged_parts(output_dir, RECORD_FILE) as staging:
        if hasattr(model, "peft_config"):
            model.save_pretrained(staging / ADAPTER_DIR)
            tokenizer.save_pretrained(staging / ADAPTER_DIR)
            model = model.merge_and_unload()
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging / POLICY_DIR)
        tokenizer.save_pretrained(staging / POLICY_DIR)

"""Training throughput and peak memory: hafrm (baseline, dpo, haf) against TRL RewardTrainer and DPOTrainer.

Same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), same pairs (HH-RLHF harmless train rows
that fit max_length untruncated, so every trainer sees the same tokens), same batch size and max
length. Each run is a fresh subprocess (so peak RSS is its own), and runs are interleaved round by
round so drifting machine load hits every trainer alike. Throughput counts optimisation steps after
the first (warm-up) step; one-time setup (model load, tokenization, hafrm's reference log-prob
precomputation with a cold cache) is reported separately.

Peak RSS under glibc's default allocator includes freed memory the allocator keeps (it varied by
over 1 GiB between identical runs here). --live-memory runs the children with
MALLOC_MMAP_THRESHOLD_=131072, so every block of 128 KiB or more is returned on free and peak RSS
tracks the tensors actually alive (slower: time those runs separately).

    python benchmarks/train_throughput.py --rounds 2 --steps 6 --output docs/benchmark-train.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = ["trl-reward", "hafrm-baseline", "trl-dpo", "hafrm-dpo", "hafrm-haf"]
LORA_RUNS = ["trl-reward-lora", "hafrm-haf-lora"]


def select_pairs(tokenizer, max_length: int, count: int) -> list[dict]:
    from hafrm.data import PairEncoder, load_pairs
    from hafrm.defaults import DEFAULT_TRAIN_DATA

    pairs, _ = load_pairs(str(DEFAULT_TRAIN_DATA))
    encoder = PairEncoder(tokenizer, max_length)
    fitting = [p for p in pairs if not encoder.encode_pair(p)["truncated"]]
    return fitting[:count]


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time from the end of the first optimisation step to the end of the last."""

        def __init__(self):
            self.train_begin = self.first_step_end = self.last_step_end = None
            self.steps = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1
            now = time.perf_counter()
            if self.steps == 1:
                self.first_step_end = now
            self.last_step_end = now

    return StepTimer()


def run_hafrm(method: str, lora: bool, args, pairs, model_path: str, output: str, timer) -> None:
    from hafrm.config import TrainConfig
    from hafrm.training import train

    data = Path(output) / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = TrainConfig(
        model=model_path, method=method, lora=lora, train_data=str(data), eval_fraction=0.0, max_length=args.max_length,
        batch_size=args.batch_size, micro_batch_size=args.batch_size, max_steps=args.steps, output_dir=output,
        save_steps=10_000, logging_steps=10_000, group_by_length=not args.no_group_by_length,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    train(config, callbacks=[timer])


def trl_dataset(pairs):
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}], "rejected": [{"role": "assistant", "content": p["rejected"]}]}
        for p in pairs
    ])


def run_trl(kind: str, lora: bool, args, pairs, model_path: str, output: str, timer) -> None:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hafrm.pretrained import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    common = dict(
        output_dir=output, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, max_steps=args.steps,
        learning_rate=1e-5, max_length=args.max_length, save_strategy="no", logging_steps=10_000, report_to="none",
        use_cpu=True, seed=0, bf16=False, fp16=False, gradient_checkpointing=args.gradient_checkpointing,
    )
    peft_config = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM") if lora else None
    if kind == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=trl_dataset(pairs), processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    else:
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        trainer = DPOTrainer(model=model, args=DPOConfig(beta=0.1, **common), train_dataset=trl_dataset(pairs), processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    trainer.train()


def child(args) -> None:
    """One measured run, printed as a JSON line."""
    import torch

    from hafrm.defaults import default_model_path
    from hafrm.pretrained import load_tokenizer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model_path = str(default_model_path())
    pairs = select_pairs(load_tokenizer(model_path), args.max_length, args.steps * args.batch_size)
    timer = step_timer()
    lora = args.run.endswith("-lora")
    name = args.run.removesuffix("-lora")
    with tempfile.TemporaryDirectory() as output:
        if name.startswith("hafrm-"):
            run_hafrm(name.removeprefix("hafrm-"), lora, args, pairs, model_path, output, timer)
        else:
            run_trl(name.removeprefix("trl-"), lora, args, pairs, model_path, output, timer)
    measured_steps = timer.steps - 1
    print(json.dumps({
        "run": args.run,
        "pairs_per_s": measured_steps * args.batch_size / (timer.last_step_end - timer.first_step_end),
        "setup_s": timer.train_begin - start,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "steps": timer.steps,
    }))


def parent(args) -> None:
    runs = (RUNS if not args.only else args.only.split(",")) + (LORA_RUNS if args.lora else [])
    results: dict[str, list[dict]] = {run: [] for run in runs}
    for round_number in range(args.rounds):
        for run in runs:
            command = [sys.executable, __file__, "--child", "--run", run] + [f"--{k.replace('_', '-')}={v}" for k, v in child_options(args).items()]
            if args.no_group_by_length:
                command.append("--no-group-by-length")
            env = {**os.environ, "HAFRM_CACHE": tempfile.mkdtemp(prefix="hafrm-bench-")}  # cold reference cache
            if args.live_memory:
                env["MALLOC_MMAP_THRESHOLD_"] = "131072"
            (Path(env["HAFRM_CACHE"]) / "models").symlink_to(Path.home() / ".cache" / "hafrm" / "models")
            completed = subprocess.run(command, capture_output=True, text=True, env=env)
            line = [l for l in completed.stdout.splitlines() if l.startswith("{")]
            if completed.returncode or not line:
                sys.exit(f"{run} failed:\n{completed.stderr[-3000:]}")
            results[run].append(json.loads(line[-1]))
            print(f"round {round_number + 1} {run}: {results[run][-1]}", flush=True)
    table = summarize(results, args)
    print(table)
    if args.output:
        Path(args.output).write_text(table)


def child_options(args) -> dict:
    return {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads, "gradient_checkpointing": args.gradient_checkpointing}


def summarize(results: dict[str, list[dict]], args) -> str:
    median = {run: {k: statistics.median(r[k] for r in rows) for k in ("pairs_per_s", "setup_s", "peak_rss_gib")} for run, rows in results.items()}

    def ratio(a, b, key="pairs_per_s"):
        return f"{median[a][key] / median[b][key]:.2f}x" if a in median and b in median else "n/a"

    lines = [
        f"Settings: {args.rounds} interleaved rounds, {args.steps} steps of {args.batch_size} pairs (first step not timed), "
        f"max_length {args.max_length}, {args.threads} torch threads, fp32 CPU, SmolLM2-135M-Instruct, full fine-tuning unless -lora "
        f"(LoRA r 64, alpha 16, all linear layers), gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} for every trainer, "
        f"length grouping in hafrm: {'off' if args.no_group_by_length else 'on (default)'}, "
        f"allocator: {'MALLOC_MMAP_THRESHOLD_=131072 (live memory)' if args.live_memory else 'glibc default'}. Medians over rounds.",
        "",
        "| run | pairs/s (median) | all rounds | setup s (incl. hafrm reference precompute) | peak RSS GiB |",
        "|---|---|---|---|---|",
    ]
    for run, rows in results.items():
        all_rounds = ", ".join(f"{r['pairs_per_s']:.3f}" for r in rows)
        lines.append(f"| {run} | {median[run]['pairs_per_s']:.3f} | {all_rounds} | {median[run]['setup_s']:.1f} | {median[run]['peak_rss_gib']:.2f} |")
    lines += [
        "",
        "| ratio | target | measured |",
        "|---|---|---|",
        f"| hafrm haf / TRL DPOTrainer (pairs/s) | >= 1.0x | {ratio('hafrm-haf', 'trl-dpo')} |",
        f"| hafrm haf / TRL RewardTrainer (pairs/s) | >= 0.9x | {ratio('hafrm-haf', 'trl-reward')} |",
        f"| hafrm baseline / TRL RewardTrainer (pairs/s) | >= 1.1x | {ratio('hafrm-baseline', 'trl-reward')} |",
        f"| hafrm dpo / TRL DPOTrainer (pairs/s) | | {ratio('hafrm-dpo', 'trl-dpo')} |",
        f"| hafrm haf LoRA / TRL RewardTrainer LoRA (peak memory) | <= 1.1x | {ratio('hafrm-haf-lora', 'trl-reward-lora', 'peak_rss_gib')} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(RUNS + LORA_RUNS)}")
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="also compare LoRA memory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-group-by-length", action="store_true")
    parser.add_argument("--live-memory", action="store_true", help="measure live tensor memory (see the module docstring)")
    parser.add_argument("--gradient-checkpointing", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                        help="same setting for every trainer (TRL's default is on)")
    parser.add_argument("--output")
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()

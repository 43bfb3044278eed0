"""Training throughput, peak memory and share of the CPU's matmul peak: hafrm (baseline, dpo, haf) against TRL's
RewardTrainer and DPOTrainer at their best settings.

Same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), same pairs (HH-RLHF harmless or PKU-SafeRLHF rows
that fit max_length untruncated, so every trainer sees the same tokens), same batch of pairs. TRL's DPOTrainer
runs with `precompute_ref_log_probs=True` (its padding-free mode is off for DPO and needs FlashAttention); each
run takes its own gradient-checkpointing setting (`--checkpointing RUN=on,...`; off where memory allows, which is
fastest). Each run is a fresh subprocess (so peak RSS is its own), runs are interleaved round by round so drifting
machine load hits every trainer alike, and throughput counts the optimisation steps after the first (warm-up)
step; one-time setup (model load, tokenization, reference log-probs, frozen trunk) is reported apart.
`--batches length-matched` gives every trainer the same batches of near-equal lengths in one fixed order, as length
grouping makes them over a full data set; by default each trainer's own sampler batches the first pairs that fit,
which on so few pairs mixes lengths (see benchmark_pairs).

Achieved FLOP/s counts useful work only, per pair of the batch:
  6 x N x T          forward and backward through N non-embedding parameters for the T tokens processed
                     (hafrm: prompt once + both responses; TRL and hafrm-separate: the prompt twice),
  + 2 x N x T        when gradient checkpointing recomputes the forward,
  + 6 x V x H x L    the LM head (V x H) on the L tokens it runs on (hafrm: response tokens; TRL DPO: every token),
                     4 x V x H x L in -frozen runs: SmolLM2's LM head is tied to the frozen embeddings, so it
                     computes no weight gradient,
for the layers that train: a frozen trunk's layers count 2 x N_frozen x T once (setup), not per step.
Attention's T^2 terms and padding are not counted. The peak is a large fp32 sgemm (torch.matmul) on the same
threads, measured first.

    python benchmarks/train_throughput.py --data hh-harmless --rounds 3 --steps 5 --output docs/benchmark-hh.md
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

# the preference data beside the checkout; HAFRM_DATA_ROOT elsewhere (scripts/gpu_check.sh: .whl/data)
SHARED_DATA = Path(os.environ.get("HAFRM_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data")
RUNS = ["trl-reward", "hafrm-baseline", "trl-dpo", "hafrm-dpo", "hafrm-haf"]
FROZEN_RUNS = ["hafrm-baseline-frozen", "hafrm-dpo-frozen", "hafrm-haf-frozen"]
EXTRA_RUNS = ["hafrm-haf-separate", *FROZEN_RUNS, "trl-reward-lora", "hafrm-haf-lora"]


# ---------------------------------------------------------------------------------------------- data


def load_benchmark_pairs(name: str, tokenizer, max_length: int, count: int) -> tuple[list[dict], list[int], int]:
    """The first `count` pairs of a data set that fit max_length untruncated, their shared-prompt row lengths, and
    how many pairs were looked at."""
    from hafrm.data import PairEncoder, load_pairs
    from hafrm.io.defaults import DEFAULT_TRAIN_DATA

    source = {
        "hh-harmless": str(DEFAULT_TRAIN_DATA),
        "pku-saferlhf": str(SHARED_DATA / "pku-saferlhf" / "PKU-Alignment_PKU-SafeRLHF_sample.jsonl"),
    }[name]
    pairs, _ = load_pairs(source)
    encoder = PairEncoder(tokenizer, max_length)
    fitting, lengths = [], []
    for looked, pair in enumerate(pairs, start=1):
        encoded = encoder.encode_pair(pair)
        if not encoded["truncated"]:
            fitting.append(pair)
            lengths.append(encoded["length"])
        if len(fitting) == count:
            return fitting, lengths, looked
    return fitting, lengths, len(pairs)


def benchmark_pairs(args, tokenizer) -> tuple[list[dict], int]:
    """The pairs every trainer gets, and how many pairs were looked at.

    sampled: the first steps x batch pairs that fit, batched by each trainer's own sampler. With so few pairs
      transformers' length grouping makes each batch its own group, so batches mix short and long pairs (about
      half of the tokens are padding on HH-Harmless).
    length-matched: of the first `pool` pairs that fit, the steps x batch around the median length, in length
      order, batched in that order for every trainer (sequential sampling): batches of near-equal lengths, as
      length grouping makes them on a full data set (0.6-2.5% padding, benchmarks/padding_waste.py).
    """
    count = args.steps * args.batch_size
    if args.batches == "sampled":
        pairs, _, looked = load_benchmark_pairs(args.data, tokenizer, args.max_length, count)
        return pairs, looked
    pool, lengths, looked = load_benchmark_pairs(args.data, tokenizer, args.max_length, args.pool)
    ordered = [pool[i] for i in sorted(range(len(pool)), key=lengths.__getitem__)]
    start = max(0, (len(ordered) - count) // 2)
    return ordered[start : start + count], looked


def sampling(args) -> dict:
    """TrainingArguments for the batch order: each trainer's own, or the given order (length-matched)."""
    return {"train_sampling_strategy": "sequential"} if args.batches == "length-matched" else {}


def token_counts(pairs: list[dict], tokenizer, max_length: int) -> dict[str, float]:
    """Mean tokens per pair: prompt, responses, and what each layout processes."""
    from hafrm.data import PairEncoder

    encoder = PairEncoder(tokenizer, max_length)
    encoded = [encoder.encode_pair(p) for p in pairs]
    prompt = sum(e["prompt_length"] for e in encoded) / len(encoded)
    responses = sum(
        len(e["chosen_input_ids"]) + len(e["rejected_input_ids"]) - 2 * e["prompt_length"] for e in encoded
    ) / len(encoded)
    return {"prompt": prompt, "responses": responses, "shared": prompt + responses, "separate": 2 * prompt + responses}


# ---------------------------------------------------------------------------------------------- one run


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


def run_hafrm(method: str, variant: str, args, pairs, model_path: str, output: str, timer) -> None:
    from hafrm.training.config import TrainConfig
    from hafrm.training.pipeline import train

    config = TrainConfig(
        model=model_path,
        method=method,
        dtype="bf16" if args.device == "cuda" else "fp32",
        eval_fraction=0.0,
        max_length=args.max_length,
        batch_size=args.batch_size,
        micro_batch_size=args.batch_size,
        max_steps=args.steps,
        output_dir=output,
        save_steps=10_000,
        logging_steps=10_000,
        gradient_checkpointing=args.gradient_checkpointing,
        lora=variant == "lora",
        share_prompt=variant != "separate",
        freeze_layers=args.freeze_layers if variant == "frozen" else 0,
        training_args=sampling(args),
    )
    train(config, callbacks=[timer], train_data=pairs)


def trl_dataset(pairs):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": p["prompt"],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )


def run_trl(kind: str, lora: bool, args, pairs, model_path: str, output: str, timer) -> None:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hafrm.io.pretrained import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    common = dict(
        output_dir=output,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=1e-5,
        max_length=args.max_length,
        save_strategy="no",
        logging_steps=10_000,
        report_to="none",
        use_cpu=args.device == "cpu",
        seed=0,
        bf16=args.device == "cuda",
        fp16=False,
        gradient_checkpointing=args.gradient_checkpointing,
        **sampling(args),
    )
    peft_config = (
        LoraConfig(
            r=64,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM",
        )
        if lora
        else None
    )
    if kind == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=weights_dtype(args))
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(
            model=model,
            args=RewardConfig(**common),
            train_dataset=trl_dataset(pairs),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[timer],
        )
    else:
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=weights_dtype(args))
        config = DPOConfig(beta=0.1, precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch_size, **common)
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=trl_dataset(pairs),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[timer],
        )
    trainer.train()


def weights_dtype(args):
    """fp32 on a CPU (bf16 is about 25x slower there), bf16 on a GPU, for TRL's models as for hafrm's."""
    import torch

    return torch.bfloat16 if args.device == "cuda" else torch.float32


def parameter_counts(model_path: str) -> dict[str, int]:
    """Non-embedding parameters per layer and in all, and the LM head's V x H."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    layers = model.model.layers
    per_layer = sum(p.numel() for p in layers[0].parameters())
    head = model.get_output_embeddings().weight
    return {
        "layers": len(layers),
        "per_layer": per_layer,
        "non_embedding": per_layer * len(layers) + model.model.norm.weight.numel(),
        "lm_head": head.numel(),
    }


def flops_per_pair(run: str, args, tokens: dict, params: dict) -> float:
    """Useful training FLOPs per pair of a step (see the module docstring)."""
    separate = run.startswith("trl-") or run.endswith("-separate")
    processed = tokens["separate"] if separate else tokens["shared"]
    trained_layers = params["layers"] - (args.freeze_layers if run.endswith("-frozen") else 0)
    body = params["per_layer"] * trained_layers
    flops = 6 * body * processed + (2 * body * processed if checkpointing(run, args) else 0)
    if run in ("trl-dpo",):
        flops += 6 * params["lm_head"] * processed
    elif run.startswith("hafrm-") and "baseline" not in run:
        flops += (4 if run.endswith("-frozen") else 6) * params["lm_head"] * tokens["responses"]
    return flops


def child(args) -> None:
    """One measured run, printed as a JSON line."""
    import torch

    from hafrm.io.defaults import default_model_path
    from hafrm.io.pretrained import load_tokenizer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model_path = str(default_model_path())
    pairs, _ = benchmark_pairs(args, load_tokenizer(model_path))
    timer = step_timer()
    name = args.run
    with tempfile.TemporaryDirectory() as output:
        if name.startswith("hafrm-"):
            method, _, variant = name.removeprefix("hafrm-").partition("-")
            run_hafrm(method, variant, args, pairs, model_path, output, timer)
        else:
            kind, _, variant = name.removeprefix("trl-").partition("-")
            run_trl(kind, variant == "lora", args, pairs, model_path, output, timer)
    measured_steps = timer.steps - 1
    print(
        json.dumps(
            {
                "run": name,
                "pairs_per_s": measured_steps * args.batch_size / (timer.last_step_end - timer.first_step_end),
                "setup_s": timer.train_begin - start,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0,
                "steps": timer.steps,
            }
        )
    )


# ---------------------------------------------------------------------------------------------- the parent


def matmul_peak_gflops(threads: int, device: str = "cpu", repeats: int = 10) -> float:
    """GFLOP/s of a large matmul, the ceiling the trainers are compared against: fp32 2048^2 on `threads` CPU
    threads, or bf16 8192^2 on the GPU."""
    import torch

    torch.set_num_threads(threads)
    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def run_child(run: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--run",
        run,
        "--data",
        args.data,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--threads",
        str(args.threads),
        "--freeze-layers",
        str(args.freeze_layers),
        "--batches",
        args.batches,
        "--pool",
        str(args.pool),
        "--gradient-checkpointing",
        "on" if checkpointing(run, args) else "off",
        "--device",
        args.device,
    ]
    env = {**os.environ, "HAFRM_CACHE": tempfile.mkdtemp(prefix="hafrm-bench-")}  # cold reference and trunk caches
    if args.live_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    from hafrm.io.defaults import cache_dir

    (Path(env["HAFRM_CACHE"]) / "models").symlink_to(cache_dir() / "models")  # the converted default model
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    line = [entry for entry in completed.stdout.splitlines() if entry.startswith("{")]
    if completed.returncode or not line:
        sys.exit(f"{run} failed:\n{completed.stderr[-3000:]}")
    return json.loads(line[-1])


def checkpointing(run: str, args) -> bool:
    settings = dict(item.split("=") for item in args.checkpointing.split(",") if item)
    return settings.get(run, settings.get("all", "off")) == "on"


def parent(args) -> None:
    from hafrm.io.defaults import default_model_path
    from hafrm.io.pretrained import load_tokenizer

    model_path = str(default_model_path())
    tokenizer = load_tokenizer(model_path)
    pairs, looked = benchmark_pairs(args, tokenizer)
    batches = batches_text(args, pairs, tokenizer, looked)
    tokens, params = token_counts(pairs, tokenizer, args.max_length), parameter_counts(model_path)
    peak = matmul_peak_gflops(args.threads, args.device)
    print(
        f"{len(pairs)} pairs ({looked} looked at), tokens per pair {tokens}, matmul peak {peak:.1f} GFLOP/s", flush=True
    )
    runs = args.runs.split(",")
    results: dict[str, list[dict]] = {run: [] for run in runs}
    for round_number in range(args.rounds):
        for run in runs:
            results[run].append(run_child(run, args))
            print(f"round {round_number + 1} {run}: {results[run][-1]}", flush=True)
    table = summarize(results, args, tokens, params, peak, len(pairs), looked, batches)
    print(table)
    if args.output:
        Path(args.output).write_text(table)


def batches_text(args, pairs: list[dict], tokenizer, looked: int) -> str:
    """How the pairs are batched, with the padding share of hafrm's shared-prompt rows in those batches."""
    import torch
    from padding_waste import padding_share
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from hafrm.data import PairEncoder

    encoder = PairEncoder(tokenizer, args.max_length)
    lengths = [encoder.encode_pair(pair)["length"] for pair in pairs]
    if args.batches == "sampled":
        order = get_length_grouped_indices(lengths, args.batch_size, generator=torch.Generator().manual_seed(0))
        share = padding_share(lengths, order, args.batch_size)
        return f"each trainer's own sampler (hafrm's length-grouped one: {100 * share:.0f}% padding, seed 0)"
    share = padding_share(lengths, list(range(len(pairs))), args.batch_size)
    return (
        f"length-matched (the {len(pairs)} around the median length of those that fit among the first {looked}, in "
        f"length order, sequential sampling for every trainer; {100 * share:.1f}% of hafrm's row tokens are padding)"
    )


def summarize(
    results: dict[str, list[dict]],
    args,
    tokens: dict,
    params: dict,
    peak: float,
    pairs: int,
    looked: int,
    batches: str,
) -> str:
    median = {
        run: {
            k: statistics.median(r.get(k, 0.0) for r in rows)
            for k in ("pairs_per_s", "setup_s", "peak_rss_gib", "peak_gpu_gib")
        }
        for run, rows in results.items()
    }

    def ratio(a, b, key="pairs_per_s"):
        return f"{median[a][key] / median[b][key]:.2f}x" if a in median and b in median else "not run"

    def protocol_step_cost():
        """Seconds per pair of a baseline + dpo + haf protocol with the frozen trunk, over the same without it (each
        method runs the same steps and seeds either way, so this is the protocol's training-step cost ratio)."""
        full = [run.removesuffix("-frozen") for run in FROZEN_RUNS]
        if not all(run in median for run in FROZEN_RUNS + full):
            return "not run"
        seconds_per_pair = {run: 1 / median[run]["pairs_per_s"] for run in FROZEN_RUNS + full}
        frozen_cost = sum(seconds_per_pair[run] for run in FROZEN_RUNS)
        return f"{frozen_cost / sum(seconds_per_pair[run] for run in full):.2f}x"

    def spread(rows):
        values = [r["pairs_per_s"] for r in rows]
        return f"{(max(values) - min(values)) / statistics.median(values) * 100:.0f}%" if len(values) > 1 else "-"

    lines = [
        f"Data: {args.data}, {pairs} pairs that fit {args.max_length} tokens untruncated (of the first {looked}); "
        f"batches: {batches}; "
        f"mean tokens per pair: prompt {tokens['prompt']:.0f}, both responses {tokens['responses']:.0f} "
        f"(shared-prompt row {tokens['shared']:.0f}, two rows {tokens['separate']:.0f}).",
        f"Settings: {args.rounds} interleaved rounds, {args.steps} steps of {args.batch_size} pairs "
        f"(first step not timed), {args.threads} torch threads, "
        f"{'bf16 on the GPU' if args.device == 'cuda' else 'fp32 CPU'}, "
        f"SmolLM2-135M-Instruct, full fine-tuning unless -lora (r 64, alpha 16, all linear layers) "
        f"or -frozen (bottom {args.freeze_layers} of {params['layers']} layers frozen, trunk cached); "
        f"gradient checkpointing: {args.checkpointing or 'off for all'}; "
        f"allocator: {'MALLOC_MMAP_THRESHOLD_=131072 (live memory)' if args.live_memory else 'glibc default'}. "
        f"Matmul peak {peak:.1f} GFLOP/s. Medians over rounds.",
        "",
        "| run | pairs/s (median) | all rounds | spread | setup s | peak RSS GiB | peak GPU GiB | GFLOP/s "
        "| % of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, rows in results.items():
        gflops = flops_per_pair(run, args, tokens, params) * median[run]["pairs_per_s"] / 1e9
        all_rounds = ", ".join(f"{r['pairs_per_s']:.3f}" for r in rows)
        lines.append(
            f"| {run} | {median[run]['pairs_per_s']:.3f} | {all_rounds} | {spread(rows)} | "
            f"{median[run]['setup_s']:.1f} | "
            f"{median[run]['peak_rss_gib']:.2f} | {median[run]['peak_gpu_gib']:.2f} | {gflops:.1f} | "
            f"{100 * gflops / peak:.0f}% |"
        )
    lines += [
        "",
        "| ratio | target | measured |",
        "|---|---|---|",
        f"| hafrm haf / TRL RewardTrainer (pairs/s) | >= 1.4x | {ratio('hafrm-haf', 'trl-reward')} |",
        f"| hafrm haf / TRL DPOTrainer, precomputed reference (pairs/s) | >= 2.5x | {ratio('hafrm-haf', 'trl-dpo')} |",
        f"| hafrm baseline / TRL RewardTrainer (pairs/s) | >= 1.5x | {ratio('hafrm-baseline', 'trl-reward')} |",
        f"| hafrm haf / hafrm baseline (pairs/s) | >= 0.8x | {ratio('hafrm-haf', 'hafrm-baseline')} |",
        f"| hafrm haf, prompt shared / two rows (pairs/s) | | {ratio('hafrm-haf', 'hafrm-haf-separate')} |",
        f"| hafrm haf frozen trunk / full (pairs/s) | | {ratio('hafrm-haf-frozen', 'hafrm-haf')} |",
        f"| baseline + dpo + haf protocol, training steps: frozen trunk / full (time) | <= 0.33x | "
        f"{protocol_step_cost()} |",
        f"| hafrm haf / TRL RewardTrainer (peak memory) | <= 1.1x | "
        f"{ratio('hafrm-haf', 'trl-reward', 'peak_rss_gib')} |",
        f"| hafrm haf LoRA / TRL RewardTrainer LoRA (peak memory) | <= 1.1x | "
        f"{ratio('hafrm-haf-lora', 'trl-reward-lora', 'peak_rss_gib')} |",
    ]
    return "\n".join(lines) + "\n"


def add_batch_options(parser) -> None:
    parser.add_argument(
        "--batches",
        choices=("sampled", "length-matched"),
        default="sampled",
        help="which pairs and in what batches (see benchmark_pairs); default: sampled",
    )
    parser.add_argument("--pool", type=int, default=512, help="length-matched: pairs that fit to choose from")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {','.join(RUNS + EXTRA_RUNS)}")
    parser.add_argument("--data", choices=("hh-harmless", "pku-saferlhf"), default="hh-harmless")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 on the GPU for every run")
    add_batch_options(parser)
    parser.add_argument(
        "--freeze-layers", type=int, default=22, help="for the -frozen run: bottom layers frozen (SmolLM2 has 30)"
    )
    parser.add_argument("--checkpointing", default="", help="RUN=on|off,... (or all=on); default off for every run")
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="children run with MALLOC_MMAP_THRESHOLD_=131072 so peak RSS tracks live tensors",
    )
    parser.add_argument("--output")
    args = parser.parse_args()
    unknown = sorted(set(args.runs.split(",")) - set(RUNS + EXTRA_RUNS))
    if unknown:
        parser.error(f"unknown --runs {','.join(unknown)}; choose from {','.join(RUNS + EXTRA_RUNS)}")
    args.gradient_checkpointing = args.gradient_checkpointing == "on"
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()

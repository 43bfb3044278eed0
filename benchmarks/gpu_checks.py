"""Checks that need a GPU, run by scripts/gpu_check.sh (each prints one JSON line and exits 1 when it fails).

precision  the same haf run trained in bf16 and in fp32 (default model, HH-Harmless, same seed and batches): the
           training losses step by step and the eval accuracy and rewards afterwards must agree within the stated
           tolerances (bf16 rounds every activation to 8 bits of mantissa, so they are not equal)
flex       flex attention with the shared-prompt BlockMask against SDPA on separate rows, same batches: rewards and
           log-probs (fp32: 1e-4 apart; bf16: 5e-2) and the time of a forward + backward of each (synchronised)

python benchmarks/gpu_checks.py precision --steps 40
python benchmarks/gpu_checks.py flex --batches 8 --batch-size 16 --max-length 512
python benchmarks/gpu_checks.py flex --device cpu --batches 1 --batch-size 2   # the CPU dry run: forward only
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

PRECISION_TOLERANCES = {"loss": 0.05, "accuracy_points": 3.0}  # |bf16 - fp32| per logged step; eval accuracy


def harmless_pairs(count: int, offset: int = 0) -> list[dict]:
    from hafrm.data import load_pairs
    from hafrm.io.defaults import DEFAULT_TRAIN_DATA

    pairs, _ = load_pairs(str(DEFAULT_TRAIN_DATA), limit=offset + count)
    return pairs[offset:]


def precision(args) -> dict:
    from hafrm.training.config import TrainConfig
    from hafrm.training.pipeline import train

    results = {}
    for dtype in ("fp32", "bf16"):
        config = TrainConfig(
            model=args.model,
            dtype=dtype,
            max_steps=args.steps,
            batch_size=16,
            micro_batch_size=8,
            max_length=512,
            learning_rate=1e-5,
            logging_steps=1,
            eval_fraction=0.0,
            output_dir=f"{args.output}/precision-{dtype}",
            overwrite_output_dir=True,
            training_args={"train_sampling_strategy": "sequential"},
        )
        run = train(config, train_data=harmless_pairs(16 * args.steps), eval_data=harmless_pairs(256, 16 * args.steps))
        losses = [entry["loss"] for entry in run.log_history if "loss" in entry and "eval_loss" not in entry]
        results[dtype] = {"losses": losses, "accuracy": run.metrics.get("eval_reward_accuracy")}
    loss_gap = max(abs(a - b) for a, b in zip(results["bf16"]["losses"], results["fp32"]["losses"]))
    accuracy_gap = 100 * abs(results["bf16"]["accuracy"] - results["fp32"]["accuracy"])
    return {
        "check": "precision",
        "steps": args.steps,
        "max_loss_gap": loss_gap,
        "accuracy_points_gap": accuracy_gap,
        "accuracy": {dtype: r["accuracy"] for dtype, r in results.items()},
        "tolerances": PRECISION_TOLERANCES,
        "ok": loss_gap <= PRECISION_TOLERANCES["loss"] and accuracy_gap <= PRECISION_TOLERANCES["accuracy_points"],
    }


def timed(step, device: str, repeats: int = 3) -> float:
    """Median seconds of `step()` after one warm-up call (compilation, caches)."""
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def flex(args) -> dict:
    from hafrm.data import PairCollator, PairEncoder
    from hafrm.io.pretrained import load_causal_lm, load_tokenizer, resolve_dtype
    from hafrm.model import HybridRewardModel

    dtype = resolve_dtype(args.dtype)
    tokenizer = load_tokenizer(args.model)
    encoder = PairEncoder(tokenizer, args.max_length)
    pairs = [encoder.encode_pair(p) for p in harmless_pairs(args.batches * args.batch_size)]
    models = {}
    for kernel in ("sdpa", "flex_attention"):
        causal_lm = load_causal_lm(args.model, dtype, kernel).to(args.device)
        torch.manual_seed(0)
        models[kernel] = HybridRewardModel.from_causal_lm(causal_lm).to(args.device)
    models["flex_attention"].score.load_state_dict(models["sdpa"].score.state_dict())
    layouts = {  # SDPA on separate rows is the reference; flex on the shared-prompt rows under the BlockMask
        "sdpa": PairCollator(tokenizer.pad_token_id, "right", share_prompt=False),
        "flex_attention": PairCollator(tokenizer.pad_token_id, "right", share_prompt=True),
    }
    worst = {"rewards": 0.0, "logps": 0.0}
    seconds = {kernel: 0.0 for kernel in models}
    train = args.device == "cuda"  # torch has no flex attention backward on a CPU
    for index in range(args.batches):
        features = pairs[index * args.batch_size : (index + 1) * args.batch_size]
        outputs = {}
        for kernel, model in models.items():
            batch = {k: v.to(args.device) for k, v in layouts[kernel](features).items() if torch.is_tensor(v)}
            inputs = (batch["input_ids"], batch["segment_ids"], batch.get("position_ids"))

            def step(model=model, inputs=inputs):
                with torch.set_grad_enabled(train):
                    out = model(*inputs)
                    if train:
                        (out.rewards.sum() + out.logps.sum()).backward()
                        model.zero_grad(set_to_none=True)
                return out

            seconds[kernel] += timed(step, args.device)
            with torch.no_grad():
                outputs[kernel] = model(*inputs)
        for key in worst:
            gap = (getattr(outputs["flex_attention"], key) - getattr(outputs["sdpa"], key)).abs().max().item()
            worst[key] = max(worst[key], gap)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    logps_tolerance = 1e-3 if dtype == torch.float32 else 1.0  # sums over hundreds of response tokens
    return {
        "check": "flex",
        "device": args.device,
        "dtype": str(dtype),
        "batches": args.batches,
        "batch_size": args.batch_size,
        "max_abs_gap": worst,
        "tolerance_rewards": tolerance,
        "tolerance_logps": logps_tolerance,
        "seconds_per_batch": {k: v / args.batches for k, v in seconds.items()},
        "timed": "forward + backward" if train else "forward",
        "ok": worst["rewards"] <= tolerance and worst["logps"] <= logps_tolerance,
    }


def main() -> int:
    from hafrm.io.defaults import default_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=("precision", "flex"))
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", help="flex: weights dtype (bf16 or fp32)")
    parser.add_argument("--steps", type=int, default=40, help="precision: optimiser steps of each run")
    parser.add_argument("--batches", type=int, default=8, help="flex: batches compared and timed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--output", default="outputs/gpu-check", help="precision: run folders")
    args = parser.parse_args()
    args.model = args.model or str(default_model_path())
    result = {"precision": precision, "flex": flex}[args.check](args)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The Trainer with FSDP on one GPU (issue 45; accelerate enables FSDP on GPUs only, so this cannot run on a CPU):
`hafrm train` a few steps plainly and under `accelerate launch --config_file configs/accelerate/fsdp.yaml` with one
process, export both, and compare the exports; then resume the FSDP run once from its first checkpoint and compare
again. Prints one JSON line; exit 1 when an export differs by more than the tolerance or a run fails.

    python benchmarks/fsdp_trainer_check.py --model DIR --train-data DATA --output DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

EXPORTED = ("reward_model", "policy")


def train_command(args, output: Path) -> list[str]:
    return [
        "-m",
        "hafrm.cli",
        "train",
        "--model",
        args.model,
        "--train-data",
        args.train_data,
        "--max-train-pairs",
        "64",
        "--max-length",
        "256",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "8",
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        "--eval-fraction",
        "0",
        "--dtype",
        "fp32",
        "--output-dir",
        str(output),
        "--training-args",
        json.dumps({"train_sampling_strategy": "sequential"}),
    ]


def run(command: list[str], log: Path) -> bool:
    with log.open("a") as stream:
        return subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode == 0


def largest_difference(one: Path, two: Path) -> float:
    """The largest difference between the exports' tensors, relative to each tensor's largest value."""
    worst = 0.0
    for folder in EXPORTED:
        a, b = load_file(one / folder / "model.safetensors"), load_file(two / folder / "model.safetensors")
        if a.keys() != b.keys():
            return float("inf")
        for name in a:
            scale = max(a[name].abs().max().item(), 1e-12)
            worst = max(worst, (a[name].float() - b[name].float()).abs().max().item() / scale)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train-data", required=True)
    parser.add_argument("--output", default="outputs/gpu-check/fsdp")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    root = Path(args.output)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    log = root / "runs.log"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp.yaml"]
    launch += ["--num_processes", "1", "--mixed_precision", "no"]
    result: dict = {"plain": run([sys.executable, *train_command(args, root / "plain")], log)}
    result["fsdp"] = run(launch + train_command(args, root / "fsdp"), log)
    if result["plain"] and result["fsdp"]:
        result["fsdp_vs_plain"] = largest_difference(root / "plain", root / "fsdp")
        # resume once: the run's end taken away, then the same command from its checkpoint-2
        resumed = root / "fsdp"
        for part in ["checkpoint-4", *EXPORTED, "hafrm.json", "reward_head.safetensors", "eval_metrics.json"]:
            path = resumed / part
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        result["resume"] = run(launch + train_command(args, resumed) + ["--resume-from-checkpoint", "auto"], log)
        if result["resume"]:
            result["resumed_vs_plain"] = largest_difference(root / "plain", resumed)
    differences = [result.get("fsdp_vs_plain", float("inf")), result.get("resumed_vs_plain", float("inf"))]
    result["ok"] = all(d <= args.tolerance for d in differences)
    result["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

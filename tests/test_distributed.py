"""Data-parallel training with `accelerate launch --num_processes 2 --cpu` equals one process at the same global batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hafrm.defaults import DEFAULT_TRAIN_DATA

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")


def train_command(model_dir, output_dir):
    return ["-m", "hafrm.cli", "train", "--model", str(model_dir), "--train-data", str(DEFAULT_TRAIN_DATA), "--eval-fraction", "0",
            "--max-train-pairs", "16", "--max-length", "48", "--batch-size", "4", "--micro-batch-size", "2", "--max-steps", "3",
            "--learning-rate", "1e-3", "--output-dir", str(output_dir), "--training-args", json.dumps({"train_sampling_strategy": "sequential", "save_strategy": "no"})]


def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable] + train_command(tiny_model_dir, tmp_path / "one"), env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = subprocess.run([accelerate, "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
                              + train_command(tiny_model_dir, tmp_path / "two"), env=env, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = load_file(tmp_path / "one" / "reward_model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "reward_model" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.allclose(one["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])  # training moved it

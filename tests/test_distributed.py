"""Data-parallel training with two processes (torchrun, gloo on CPU) equals one process at the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hafrm.io.defaults import DEFAULT_TRAIN_DATA

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")


def train_command(model_dir, output_dir):
    return [
        "-m",
        "hafrm.cli",
        "train",
        "--model",
        str(model_dir),
        "--train-data",
        str(DEFAULT_TRAIN_DATA),
        "--eval-fraction",
        "0",
        "--max-train-pairs",
        "16",
        "--max-length",
        "48",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-3",
        "--logging-steps",
        "1",
        "--save-steps",
        "3",
        "--output-dir",
        str(output_dir),
        "--training-args",
        json.dumps({"train_sampling_strategy": "sequential"}),
    ]


def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    """Also the logged training statistics: each process's are averaged with the other's (the two see the two halves
    of the global batch that the single process sees), so both runs log the same values."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable] + train_command(tiny_model_dir, tmp_path / "one"), env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launched = run_torchrun(train_command(tiny_model_dir, tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = load_file(tmp_path / "one" / "reward_model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "reward_model" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.allclose(
        one["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"]
    )  # training moved it
    logs = {
        run: json.loads((tmp_path / run / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
        for run in ("one", "two")
    }
    steps = [entry for entry in logs["one"] if "reward_loss" in entry]
    assert len(steps) == 3
    for single_entry, launched_entry in zip(steps, [entry for entry in logs["two"] if "reward_loss" in entry]):
        for key in ("reward_loss", "reward_accuracy"):
            assert launched_entry[key] == pytest.approx(single_entry[key], rel=1e-4, abs=1e-6), (
                key,
                single_entry["step"],
            )


def run_torchrun(script_args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """torchrun, not `accelerate launch --cpu`: the latter starts a single process on a machine without GPUs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.run(command + script_args, env=env, capture_output=True, text=True)


FSDP2_STEP = os.path.join(os.path.dirname(__file__), "fsdp2_step.py")


def assert_same_exports(one, two, folders, tolerance=1e-4):
    """Every tensor of each exported folder's safetensors files equal, relative to the tensor's largest value."""
    for folder in folders:
        files = sorted(p.name for p in (one / folder).glob("*.safetensors"))
        assert files and files == sorted(p.name for p in (two / folder).glob("*.safetensors")), folder
        for file in files:
            a, b = load_file(one / folder / file), load_file(two / folder / file)
            assert a.keys() == b.keys(), f"{folder}/{file}"
            for name in a:
                scale = max(a[name].abs().max().item(), 1e-12)
                torch.testing.assert_close(b[name], a[name], rtol=0, atol=tolerance * scale, msg=f"{folder}: {name}")


@pytest.mark.parametrize("mode", ["full"])  # LoRA's trainable state loads by the same call; its export is tested
def test_a_fully_sharded_model_resumes_a_checkpoints_trainable_state(mode, tmp_path):
    """FSDP2's resume (issue 45): a checkpoint's trainable state (full tensors, as HafTrainer writes it from the
    gathered state dict) loaded into a fully_shard model on 2 CPU processes, then a step: equal to one process
    loading it and stepping (1e-5 of each tensor's largest), and not the step from the initial weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HAFRM_TEST_RESUME": "1"}
    single = subprocess.run(
        [sys.executable, FSDP2_STEP, mode, "haf", str(tmp_path / "one.safetensors")], env=env, capture_output=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    sharded = subprocess.run(
        command + [FSDP2_STEP, mode, "haf", str(tmp_path / "two.safetensors")], env=env, capture_output=True
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    fresh = subprocess.run(
        [sys.executable, FSDP2_STEP, mode, "haf", str(tmp_path / "fresh.safetensors")],
        env={**env, "HAFRM_TEST_RESUME": ""},
        capture_output=True,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    one, two, initial = (load_file(tmp_path / f"{n}.safetensors") for n in ("one", "two", "fresh"))
    for name in one:
        scale = one[name].abs().max().item()
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5 * scale, msg=name)
    assert max((one[n] - initial[n]).abs().max().item() for n in one) > 1e-3  # the loaded state mattered


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_fully_sharded_model_exports_what_one_process_exports(mode, tmp_path):
    """FSDP2's export (issue 45): after a sharded step on 2 CPU processes, every rank gathers and rank 0 writes
    reward_model/, policy/ and (LoRA) both adapters, equal to one process's export of the same step (1e-4)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, FSDP2_STEP, mode, "haf", str(tmp_path / "one.safetensors"), str(tmp_path / "one")],
        env=env,
        capture_output=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = run_torchrun([FSDP2_STEP, mode, "haf", str(tmp_path / "two.safetensors"), str(tmp_path / "two")])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    folders = ["reward_model", "policy"] + (["adapter", "reward_adapter"] if mode == "lora" else [])
    assert_same_exports(tmp_path / "one", tmp_path / "two", folders)
    assert (tmp_path / "two" / "hafrm.json").is_file()


@pytest.mark.parametrize(
    "mode,method", [("full", "haf"), ("full", "baseline"), ("full", "dpo"), ("frozen", "haf"), ("lora", "haf")]
)
def test_an_fsdp2_sharded_step_equals_one_process(mode, method, tmp_path):
    """torch's FSDP2 (fully_shard on every decoder layer, then the root with the reward head) on 2 CPU processes:
    the shared-prompt forward, the frozen trunk and LoRA give the step of one process over all the pairs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, FSDP2_STEP, mode, method, str(tmp_path / "one.safetensors")], env=env, capture_output=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = run_torchrun([FSDP2_STEP, mode, method, str(tmp_path / "two.safetensors")])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    from hafrm.testing import tiny_llama

    vocab_size = next(len(v) for k, v in one.items() if k.endswith("embed_tokens.weight"))
    initial = {f"policy.{k}": v for k, v in tiny_llama(vocab_size).state_dict().items()}
    moved = 0
    for name in one:
        scale = one[name].abs().max().item()
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5 * scale, msg=name)
        if name in initial:
            moved = max(moved, (one[name] - initial[name]).abs().max().item() / scale)
    lora_b = [v for k, v in one.items() if "lora_B" in k]
    assert moved > 1e-3 if mode != "lora" else all(v.abs().max() > 1e-3 for v in lora_b)  # far above the tolerance


def test_fsdp_asked_for_on_cpus_is_refused_not_dropped(tiny_model_dir, tmp_path):
    """accelerate 1.16 turns FSDP on for GPUs only; on CPUs the Trainer would silently run plain DDP."""
    fsdp = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"fsdp_version": 2}}
    command = train_command(tiny_model_dir, tmp_path / "out")
    command[command.index("--training-args") + 1] = json.dumps(fsdp)
    launched = run_torchrun(command)
    assert launched.returncode != 0
    assert "FSDP was asked for, but accelerate runs this job as MULTI_CPU" in launched.stderr


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_matches_one_process(stage, tiny_model_dir, tmp_path):
    """DeepSpeed's CPU accelerator with gloo, through the Trainer's `deepspeed` argument under torchrun: ZeRO-2
    (optimizer states and gradients sharded) and ZeRO-3 (parameters too, gathered for the export) give the
    exports of one process."""
    pytest.importorskip("deepspeed")
    root = os.path.dirname(os.path.dirname(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable] + train_command(tiny_model_dir, tmp_path / "one"), env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    command = train_command(tiny_model_dir, tmp_path / "zero")
    deepspeed = {"train_sampling_strategy": "sequential", "deepspeed": f"{root}/configs/deepspeed/zero{stage}.json"}
    command[command.index("--training-args") + 1] = json.dumps(deepspeed)
    launched = run_torchrun(command)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (tmp_path / "zero" / "checkpoint-3" / "global_step3").is_dir()  # DeepSpeed's engine wrote its shards
    for folder in ("reward_model", "policy"):
        one = load_file(tmp_path / "one" / folder / "model.safetensors")
        zero = load_file(tmp_path / "zero" / folder / "model.safetensors")
        assert one.keys() == zero.keys()
        for name in one:
            torch.testing.assert_close(zero[name], one[name], rtol=1e-4, atol=1e-5, msg=f"{folder}: {name}")


def test_the_shipped_deepspeed_accelerate_config_runs_as_written(tiny_model_dir, tmp_path):
    """`accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml` as the file is written (8 processes,
    bf16, ZeRO-2; here on DeepSpeed's CPU accelerator): the paper's batch of 16 is split 2 pairs a process, and
    TrainingArguments' bf16 follows the launcher, as DeepSpeed's config does."""
    pytest.importorskip("deepspeed")
    root = os.path.dirname(os.path.dirname(__file__))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    config = ["--config_file", f"{root}/configs/accelerate/deepspeed-zero2.yaml"]
    command = train_command(tiny_model_dir, tmp_path / "out")
    for option in ("--batch-size", "--micro-batch-size"):  # the paper's defaults, as a user's run would have them
        del command[command.index(option) : command.index(option) + 2]
    launched = subprocess.run(
        accelerate + config + command + ["--max-steps", "1", "--max-train-pairs", "32"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "micro_batch_size 2: batch_size 16 over 8 processes is 2 pairs each" in launched.stderr
    record = json.loads((tmp_path / "out" / "hafrm.json").read_text())["config"]
    assert (record["batch_size"], record["micro_batch_size"]) == (16, 2)
    arguments = torch.load(tmp_path / "out" / "checkpoint-1" / "training_args.bin", weights_only=False)
    assert arguments.bf16 and arguments.gradient_accumulation_steps == 1


def test_the_launchers_precision_and_process_count_shape_the_run(monkeypatch, tmp_path):
    from hafrm.training.config import TrainConfig
    from hafrm.training.pipeline import training_arguments

    monkeypatch.setenv("WORLD_SIZE", "8")
    assert TrainConfig.from_dict({}).micro_batch_size == 2  # 16 pairs over 8 processes
    assert TrainConfig.from_dict({"batch_size": 64}).micro_batch_size == 4  # 8 each: the default fits
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size x processes"):
        training_arguments(TrainConfig.from_dict({"micro_batch_size": 4, "output_dir": str(tmp_path)}), False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    arguments = training_arguments(TrainConfig.from_dict({"output_dir": str(tmp_path)}), False)
    assert arguments.bf16 and not arguments.fp16
    config = TrainConfig.from_dict({"output_dir": str(tmp_path), "bf16": False})  # an explicit value wins
    assert not training_arguments(config, False).bf16


def with_options(command: list[str], **options) -> list[str]:
    """The command with these --options' values replaced (or added)."""
    command = list(command)
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if flag in command:
            command[command.index(flag) + 1] = value
        else:
            command += [flag, value]
    return command


RESUME_STEPS = dict(max_steps="6", save_steps="2")
ENGINES = {
    "ddp": {},
    "zero2": {"deepspeed": "configs/deepspeed/zero2.json"},
    "zero3": {"deepspeed": "configs/deepspeed/zero3.json"},
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """One process, never stopped: what every engine's resumed run must end with (same global batch)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    command = [sys.executable] + with_options(train_command(tiny_model_dir, out), **RESUME_STEPS)
    run = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(
    engine, tiny_model_dir, uninterrupted, tmp_path
):
    """Resume under every engine (issue 45): 2 CPU processes under torchrun, the whole launch killed with SIGKILL
    once checkpoint-2 is complete, then launched again with --resume-from-checkpoint auto: the export equals the
    uninterrupted run's (1e-4), so weights, optimizer, scheduler and data order came back."""
    import signal
    import time

    if engine != "ddp":
        pytest.importorskip("deepspeed")
    root = os.path.dirname(os.path.dirname(__file__))
    extra = {k: f"{root}/{v}" for k, v in ENGINES[engine].items()}
    training_args = json.dumps({"train_sampling_strategy": "sequential", **extra})
    command = with_options(train_command(tiny_model_dir, tmp_path / "run"), **RESUME_STEPS, training_args=training_args)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen(
        torchrun + command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").exists():
        assert launch.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(launch.pid, signal.SIGKILL)  # the launcher and both workers
    launch.wait()
    assert not (tmp_path / "run" / "hafrm.json").exists()  # it died mid-run
    resumed = run_torchrun(command + ["--resume-from-checkpoint", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {tmp_path / 'run' / 'checkpoint-'}" in resumed.stderr
    assert_same_exports(uninterrupted, tmp_path / "run", ["reward_model", "policy"])

"""Resuming survives corrupt checkpoints (falls back to the newest readable one, naming the bad file), and
model weights are loaded without trusting pickles."""

import json
import logging
import os
import shutil

import pytest
import torch
from helpers import TINY_RUN, train_command

from hafrm.cli.main import main
from hafrm.training.config import TrainConfig
from hafrm.training.pipeline import CLOCK_FILE, RunClock, resume_point, train
from hafrm.training.trainer import STATE_FILE


def run_args(model_dir, output_dir, *extra):
    return train_command(
        model_dir,
        output_dir,
        *extra,
        max_length=48,
        micro_batch_size=4,
        eval_fraction=0,
        learning_rate="1e-3",
        save_steps=1,
        save_total_limit=3,
    )


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A three-step run that kept a checkpoint after every step."""
    output = tmp_path_factory.mktemp("checkpointed")
    assert main(run_args(tiny_model_dir, output, "--max-steps", "3")) == 0
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    return output


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path):
    path.write_bytes(os.urandom(max(64, path.stat().st_size)))


def garble(path):
    path.write_text('{"global_step": 3, "log_history": [')


def auto(output):
    return TrainConfig(output_dir=str(output), resume_from_checkpoint="auto")


@pytest.mark.parametrize(
    "name, damage",
    [
        (STATE_FILE, truncate),
        ("trainer_state.json", garble),
        ("optimizer.pt", truncate),
        ("scheduler.pt", truncate),
        ("rng_state.pth", scramble),
    ],
)
def test_resume_falls_back_past_a_corrupt_checkpoint(run_copy, caplog, name, damage):
    damage(run_copy / "checkpoint-3" / name)
    with caplog.at_level(logging.WARNING):
        assert resume_point(auto(run_copy)) == str(run_copy / "checkpoint-2")
    assert str(run_copy / "checkpoint-3" / name) in caplog.text
    assert (run_copy / "incomplete-checkpoint-3").is_dir() and not (run_copy / "checkpoint-3").exists()


def test_resume_skips_several_bad_checkpoints_and_none_left_means_a_fresh_start(run_copy):
    truncate(run_copy / "checkpoint-3" / "optimizer.pt")
    garble(run_copy / "checkpoint-2" / "trainer_state.json")
    assert resume_point(auto(run_copy)) == str(run_copy / "checkpoint-1")
    scramble(run_copy / "checkpoint-1" / "rng_state.pth")
    assert resume_point(auto(run_copy)) is None


def test_given_checkpoint_that_is_corrupt_is_an_error_naming_the_file(run_copy):
    garble(run_copy / "checkpoint-3" / "trainer_state.json")
    config = TrainConfig(output_dir=str(run_copy), resume_from_checkpoint=str(run_copy / "checkpoint-3"))
    with pytest.raises(
        ValueError, match=f"{run_copy / 'checkpoint-3' / 'trainer_state.json'} is not a valid trainer state"
    ):
        resume_point(config)
    assert resume_point(TrainConfig(resume_from_checkpoint=str(run_copy / "checkpoint-2"))) == str(
        run_copy / "checkpoint-2"
    )


def test_cli_resume_after_a_truncated_state_file_continues_from_the_checkpoint_before(tiny_model_dir, run_copy, capsys):
    truncate(run_copy / "checkpoint-3" / STATE_FILE)
    assert main(run_args(tiny_model_dir, run_copy, "--max-steps", "4", "--resume-from-checkpoint", "auto")) == 0
    state = (run_copy / "checkpoint-4" / "trainer_state.json").read_text()
    assert '"global_step": 4' in state
    garble(run_copy / "checkpoint-4" / "trainer_state.json")
    capsys.readouterr()
    given = run_copy / "checkpoint-4"
    assert main(run_args(tiny_model_dir, run_copy, "--max-steps", "5", "--resume-from-checkpoint", str(given))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{given / 'trainer_state.json'} is not a valid trainer state" in err


def clock_of(checkpoint) -> float:
    return json.loads((checkpoint / CLOCK_FILE).read_text())["wall_s"]


def test_run_clock_counts_on_from_the_checkpoint_a_run_resumes_from(tiny_model_dir, tmp_path, caplog):
    settings = dict(
        TINY_RUN, model=str(tiny_model_dir), eval_fraction=0.0, save_steps=1, output_dir=str(tmp_path / "run")
    )
    clock = RunClock()
    train(TrainConfig(**settings, max_steps=2), [clock])
    assert clock.before == 0.0  # a fresh run
    early, late = clock_of(tmp_path / "run" / "checkpoint-1"), clock_of(tmp_path / "run" / "checkpoint-2")
    assert 0 < early < late <= clock.elapsed()
    # as if the process that wrote checkpoint-2 had run for 1000 s: the resumed run counts on from there
    (tmp_path / "run" / "checkpoint-2" / CLOCK_FILE).write_text('{"wall_s": 1000.0}')
    resumed = RunClock()
    train(TrainConfig(**settings, max_steps=3, resume_from_checkpoint="auto"), [resumed])
    assert resumed.before == 1000.0 and 1000.0 < clock_of(tmp_path / "run" / "checkpoint-3") <= resumed.elapsed()
    # an unreadable record costs the earlier time, with a warning, never the resume
    (tmp_path / "run" / "checkpoint-3" / CLOCK_FILE).write_text('{"wall_s": ')
    garbled = RunClock()
    with caplog.at_level(logging.WARNING, logger="hafrm.training.pipeline"):
        train(TrainConfig(**settings, max_steps=4, resume_from_checkpoint="auto"), [garbled])
    assert garbled.before == 0.0 and "Run time before the restart not counted" in caplog.text
    assert (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").exists()


# ---------------------------------------------------------------------------------------- model weights


def copy_model(source, target):
    shutil.copytree(source, target)
    return target


class Payload:
    """Unpickling this would run a command: weights-only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_pickled_weights_with_code_are_refused_in_one_line(tiny_model_dir, tmp_path):
    from hafrm.io.pretrained import load_causal_lm

    folder = copy_model(tiny_model_dir, tmp_path / "model")
    state = {k: v for k, v in load_causal_lm(str(folder), torch.float32).state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused to unpickle its weights") as refused:
        load_causal_lm(str(folder), torch.float32)
    assert "\n" not in str(refused.value)


def test_safetensors_are_preferred_over_a_pickle_beside_them(tiny_model_dir, tmp_path):
    from hafrm.io.pretrained import load_causal_lm

    folder = copy_model(tiny_model_dir, tmp_path / "model")
    torch.save({"payload": Payload()}, folder / "pytorch_model.bin")
    assert load_causal_lm(str(folder), torch.float32) is not None


def test_truncated_or_missing_model_weights_are_clear(tiny_model_dir, tmp_path):
    from hafrm.io.pretrained import load_causal_lm

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nowhere"), torch.float32)
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    truncate(folder / "model.safetensors")
    with pytest.raises(ValueError, match=f"{folder / 'model.safetensors'} is truncated or corrupt"):
        load_causal_lm(str(folder), torch.float32)

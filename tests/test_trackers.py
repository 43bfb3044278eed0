"""Trackers (issue 46, item 3): tensorboard installs with the README's install and writes its event files; a tracker
whose package is missing is one line naming it, before any model or data is loaded."""

import pytest
from helpers import train_command

from hafrm.cli.main import main


def test_tensorboard_writes_event_files(tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    assert main(train_command(tiny_model_dir, output, "--report-to", "tensorboard", max_steps=2, logging_steps=1)) == 0
    events = list(output.rglob("events.out.tfevents.*"))
    assert events and all(event.stat().st_size > 0 for event in events)


@pytest.mark.parametrize(
    "tracker, message",
    [("wandb", "report_to wandb needs the package wandb: pip install wandb"), ("tensorbored", "no tracker")],
)
def test_a_tracker_that_cannot_run_is_one_line_before_anything_loads(tracker, message, tmp_path, capsys, monkeypatch):
    import hafrm.training.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_tokenizer", lambda *args: pytest.fail("loaded before the tracker check"))
    if tracker == "wandb":
        from transformers.integrations import is_wandb_available

        if is_wandb_available():
            pytest.skip("wandb is installed here")
    assert main(["train", "--report-to", tracker, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_run_without_deepspeed_prints_no_deepspeed_line(tiny_model_dir, tmp_path):
    """DeepSpeed is installed with the dev extra; a run that does not use it says nothing of it (issue 46, item 9)."""
    import os
    import subprocess
    import sys

    argv = train_command(tiny_model_dir, tmp_path / "out", max_steps=1)
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-m", "hafrm.cli", *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Setting accelerator to CPU" not in done.stdout + done.stderr

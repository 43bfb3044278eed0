"""What a run leaves is whole or refused (issue 42, item 4): an export cut off at any part leaves no run record and is
refused by the readers in one line, a failed write (a full disk, simulated) is one line naming the file, a checkpoint
cut off is never resumed from, and one writer at a time holds an output folder."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import train_command

from hafrm.cli.main import main
from hafrm.io.locking import LOCK_FILE
from hafrm.training.trainer import checkpoint_problem

FULL = OSError(errno.ENOSPC, "No space left on device")


def error_line(capsys) -> str:
    """The command's one error line (a progress bar may precede it on the same terminal line)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if "hafrm train: error" in line]
    assert len(lines) == 1, lines
    return lines[0][lines[0].index("hafrm train: error") :]


def write_then_fail(folder, name="weights.bin"):
    """A write that put part of a file down and then found the disk full."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\0" * 64)
    raise FULL


@pytest.mark.parametrize("part", ["save_sequence_classifier", "save_causal_lm", "save_reward_adapter"])
def test_an_export_cut_off_leaves_no_run_and_is_refused(part, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from hafrm.model import hybrid

    output = tmp_path / "out"
    extra = ["--lora", "--lora-r", "4"] if part == "save_reward_adapter" else []
    folder_argument = {"save_sequence_classifier": 3, "save_causal_lm": 2, "save_reward_adapter": 3}[part]
    monkeypatch.setattr(hybrid, part, lambda *args: write_then_fail(args[folder_argument]))
    assert main(train_command(tiny_model_dir, output, *extra, max_steps=1)) == 2
    error = error_line(capsys)
    assert error.startswith("hafrm train: error: could not write the export in") and "No space left" in error
    assert str(output) in error and ".staging" not in error and "weights.bin" in error
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith("checkpoint-")) == []


def test_an_overwrite_cut_off_is_refused_by_every_reader(tiny_model_dir, tmp_path, monkeypatch, capsys, write_jsonl):
    from hafrm.model import hybrid

    output = tmp_path / "out"
    assert main(train_command(tiny_model_dir, output, max_steps=1)) == 0
    monkeypatch.setattr(hybrid, "save_causal_lm", lambda causal_lm, tokenizer, folder: write_then_fail(folder))
    assert main(train_command(tiny_model_dir, output, "--overwrite-output-dir", max_steps=1)) == 2
    assert (output / "reward_model").is_dir() and not (output / "hafrm.json").exists()
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Hi", "response": "Hello"}])
    capsys.readouterr()
    assert main(["score", str(output), "--input", str(rows)]) == 2
    assert "is an unfinished hafrm export" in capsys.readouterr().err
    assert main(["eval", str(output), "--data", str(rows)]) == 2
    assert "is an unfinished hafrm export" in capsys.readouterr().err


def test_a_checkpoint_write_that_fails_is_one_line_and_never_resumed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch

    real_save = torch.save

    def full_disk_for_the_optimizer(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            with open(path, "wb") as handle:
                handle.write(b"PK\0\0")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                "data/0: file write failed"
            )
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_for_the_optimizer)
    output = tmp_path / "out"
    assert main(train_command(tiny_model_dir, output, "--save-steps", "1", max_steps=2)) == 2
    error = error_line(capsys)
    assert f"could not write checkpoint-1 ({output / 'checkpoint-1' / 'optimizer.pt'})" in error, error
    assert checkpoint_problem(output / "checkpoint-1") is not None  # cut off: resume sets it aside


def test_a_second_writer_is_refused_while_the_first_lives(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom hafrm.io.locking import output_lock\n"
            f"with output_lock({str(output)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(train_command(tiny_model_dir, output, max_steps=1)) == 2
        error = capsys.readouterr().err
        assert f"output folder {output} is in use by process {holder.pid} on {socket.gethostname()}" in error
    finally:
        holder.kill()
        holder.wait()
    # its process gone, the lock is taken over and the run goes ahead; the lock is released at the end
    assert (output / LOCK_FILE).exists()
    assert main(train_command(tiny_model_dir, output, max_steps=1)) == 0
    assert not (output / LOCK_FILE).exists()
    assert json.loads((output / "hafrm.json").read_text())["exported_checkpoint"]["step"] == 1


def test_other_ranks_do_not_take_the_lock(tmp_path, monkeypatch):
    from hafrm.io.locking import output_lock

    monkeypatch.setenv("RANK", "1")
    with output_lock(tmp_path):
        assert not (tmp_path / LOCK_FILE).exists()
    assert os.environ["RANK"] == "1"

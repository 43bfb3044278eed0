"""Checkpoints that export (issue 42, item 3): each carries the run record and the tokenizer, `hafrm export` writes
the folders a finished run writes from one, and the scoring commands given a checkpoint say how to export it."""

import json

import pytest
from helpers import train_command
from safetensors.torch import load_file

from hafrm.cli.main import main
from hafrm.eval.scoring import RewardScorer
from hafrm.io.export import RUN_RECORD_FILE


@pytest.fixture(scope="module", params=["full", "lora"])
def finished_run(request, tiny_model_dir, tmp_path_factory):
    """Four steps, a checkpoint every two; the run's own export is of step 4."""
    output = tmp_path_factory.mktemp(f"run-{request.param}") / "out"
    extra = ["--lora", "--lora-r", "4"] if request.param == "lora" else []
    argv = train_command(tiny_model_dir, output, "--save-steps", "2", *extra, max_steps=4, learning_rate="1e-3")
    assert main(argv) == 0
    return output


def test_every_checkpoint_carries_its_run_record_and_tokenizer(finished_run):
    for step in (2, 4):
        checkpoint = finished_run / f"checkpoint-{step}"
        record = json.loads((checkpoint / RUN_RECORD_FILE).read_text())
        assert record["config"] == json.loads((finished_run / "hafrm.json").read_text())["config"]
        assert (checkpoint / "tokenizer.json").is_file()


def test_the_last_checkpoint_exports_the_run_s_own_model(finished_run, tmp_path):
    exported = tmp_path / "exported"
    assert main(["export", str(finished_run / "checkpoint-4"), str(exported)]) == 0
    for part in ("reward_model/model.safetensors", "policy/model.safetensors"):
        ours, theirs = load_file(exported / part), load_file(finished_run / part)
        assert ours.keys() == theirs.keys()
        assert all((ours[name] == theirs[name]).all() for name in ours), part
    record = json.loads((exported / "hafrm.json").read_text())
    assert record["exported_checkpoint"] == {"step": 4, "of_steps": 4, "chosen_by": "hafrm export of checkpoint-4"}


def test_an_earlier_checkpoint_exports_its_own_step(finished_run, tmp_path):
    exported = tmp_path / "exported"
    assert main(["export", str(finished_run / "checkpoint-2"), str(exported)]) == 0
    state = load_file(finished_run / "checkpoint-2" / "hafrm_trainable.safetensors")
    head = next(value for name, value in state.items() if name.endswith("score.weight"))
    assert (load_file(exported / "reward_head.safetensors")["weight"] == head).all()
    prompt, response = [{"role": "user", "content": "Hi"}], "Hello!"
    assert RewardScorer(exported).score([prompt], [response]) != RewardScorer(finished_run).score([prompt], [response])


@pytest.mark.parametrize("command", ["score", "eval"])
def test_scoring_a_checkpoint_says_how_to_export_it(finished_run, command, tmp_path, capsys, write_jsonl):
    checkpoint = str(finished_run / "checkpoint-2")
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Hi", "response": "Hello", "chosen": "a", "rejected": "b"}])
    argv = [command, checkpoint, "--input" if command == "score" else "--data", str(data)]
    assert main(argv) == 2
    assert f"export it with `hafrm export {checkpoint} OUTPUT_DIR`" in capsys.readouterr().err


def test_an_export_never_overwrites_a_run(finished_run, capsys):
    assert main(["export", str(finished_run / "checkpoint-2"), str(finished_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err

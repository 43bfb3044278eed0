"""Reliability: malformed data never crashes, runs are reproducible, NaN stops, SIGKILL + resume is exact."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import train_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from hafrm.cli.main import main
from hafrm.data import DataError, load_pairs
from hafrm.io.atomic import write_atomically
from hafrm.io.defaults import DEFAULT_EVAL_DATA

text = st.one_of(st.text(max_size=40), st.just(""), st.just("x" * 20_000))
value = st.one_of(
    text,
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(st.text(max_size=5), max_size=3),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": text}), max_size=3),
)
row = st.dictionaries(
    st.sampled_from(
        ["prompt", "chosen", "rejected", "margin", "subset", "extra", "response_0", "response_1", "safer_response_id"]
    ),
    value,
    max_size=7,
)
line = st.one_of(
    row.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=60),
    st.just(b"\xff\xfe{}"),
    st.just(b"[1, 2]"),
    st.just(b'{"prompt": "p", "chosen": "a", "rejected": "a"}'),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, min_size=1, max_size=12))
def test_every_row_is_used_or_counted(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(text.replace(b"\n", b" ") for text in lines) + b"\n")
    try:
        pairs, report = load_pairs(str(path), on_error="skip")
    except DataError as error:
        assert "no usable preference pairs" in str(error) or "fuzz.jsonl" in str(error)
        return
    assert report.rows_read == report.rows_used + report.rows_skipped
    assert report.rows_used == len(pairs)
    assert all(isinstance(p["chosen"], str) and p["chosen"].strip() and p["chosen"] != p["rejected"] for p in pairs)
    try:
        load_pairs(str(path), on_error="error")
    except DataError as error:
        assert "fuzz.jsonl" in str(error)  # strict mode: only clear, located errors


def run_args(model_dir, output_dir, *extra):
    return train_command(
        model_dir,
        output_dir,
        *extra,
        eval_data=DEFAULT_EVAL_DATA,
        max_train_pairs=24,
        max_eval_pairs=8,
        max_length=48,
        learning_rate="1e-3",
    )


def test_same_seed_same_result_to_the_last_digit(tiny_model_dir, tmp_path):
    for name in ("a", "b"):
        assert main(run_args(tiny_model_dir, tmp_path / name, "--max-steps", "3")) == 0
    metrics = [json.loads((tmp_path / n / "eval_metrics.json").read_text()) for n in ("a", "b")]
    for key in ("eval_loss", "eval_reward_accuracy", "eval_implicit_accuracy"):
        assert metrics[0][key] == metrics[1][key]
    heads = [load_file(tmp_path / n / "reward_head.safetensors")["weight"] for n in ("a", "b")]
    assert torch.equal(*heads)


def test_nan_loss_stops_with_the_step(tokenizer, tmp_path, capsys, tiny_causal_lm):
    model = tiny_causal_lm(len(tokenizer))
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan-model")
    tokenizer.save_pretrained(tmp_path / "nan-model")
    assert main(run_args(tmp_path / "nan-model", tmp_path / "out", "--reference", "live")) == 2
    assert "loss is nan at optimisation step 1" in capsys.readouterr().err


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    common = [
        "--max-steps",
        "12",
        "--save-steps",
        "1",
        "--save-total-limit",
        "3",
        "--eval-data",
        str(DEFAULT_EVAL_DATA),
    ]
    assert main(run_args(tiny_model_dir, tmp_path / "whole", *common)) == 0
    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "hafrm.cli"] + run_args(tiny_model_dir, interrupted, *common)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while not (interrupted / "checkpoint-5" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "hafrm.json").exists()  # it really died mid-run
    assert main(run_args(tiny_model_dir, interrupted, *common, "--resume-from-checkpoint", "auto")) == 0
    whole = load_file(tmp_path / "whole" / "reward_model" / "model.safetensors")
    resumed = load_file(interrupted / "reward_model" / "model.safetensors")
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)
    metrics = [json.loads((d / "eval_metrics.json").read_text()) for d in (tmp_path / "whole", interrupted)]
    assert metrics[0]["eval_loss"] == pytest.approx(metrics[1]["eval_loss"], rel=1e-5)


def test_incomplete_checkpoint_is_set_aside(tmp_path):
    from safetensors.torch import save_file

    from hafrm.training.config import TrainConfig
    from hafrm.training.pipeline import resume_point
    from hafrm.training.trainer import STATE_FILE

    complete, cut_off = tmp_path / "checkpoint-2", tmp_path / "checkpoint-3"
    for folder in (complete, cut_off):
        folder.mkdir()
        save_file({"weight": torch.zeros(2)}, folder / STATE_FILE)
    (complete / "trainer_state.json").write_text("{}")
    assert resume_point(TrainConfig(output_dir=str(tmp_path), resume_from_checkpoint="auto")) == str(complete)
    assert not cut_off.exists() and (tmp_path / "incomplete-checkpoint-3").exists()
    assert resume_point(TrainConfig(output_dir=str(tmp_path / "fresh"), resume_from_checkpoint="auto")) is None


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")

    def fail_halfway(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_halfway)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]

    write_atomically(target, lambda path: path.write_text("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]

"""User errors on the command line: one line on stderr, exit 2, no traceback, found before any heavy work;
and runs that are never lost silently (an existing output folder, a folder of mixed formats)."""

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import train_command

from hafrm.cli.main import main
from hafrm.data import load_pairs

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class HeavyWorkStarted(Exception):
    """Raised by the stand-ins for model loading and scoring: a user error should have stopped the run before."""


def refuse(*args, **kwargs):
    raise HeavyWorkStarted


@pytest.fixture
def no_model_loading(monkeypatch):
    """Model loading, reference precompute and scoring fail the test if they start."""
    import hafrm.eval.scoring
    import hafrm.training.loading
    import hafrm.training.pipeline

    for module, name in [
        (hafrm.training.pipeline, "build_model"),
        (hafrm.training.pipeline, "add_reference_logps"),
        (hafrm.eval.scoring, "RewardScorer"),
        (hafrm.training.loading, "load_trained"),
    ]:
        monkeypatch.setattr(module, name, refuse)


@pytest.fixture
def nothing_loaded(monkeypatch, no_model_loading):
    """As no_model_loading, and not even the tokenizer or the data: for errors that need neither."""
    import hafrm.training.pipeline

    monkeypatch.setattr(hafrm.training.pipeline, "load_tokenizer", refuse)


def one_line_error(capsys, *fragments) -> str:
    """The command's stderr is a single error line containing every fragment."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ---------------------------------------------------------------------------------------- train options


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
        (["--batch-size", "-4"], "batch_size must be at least 1, got -4"),
        (["--micro-batch-size", "0"], "micro_batch_size must be at least 1, got 0"),
        (["--eval-fraction", "1.5"], "eval_fraction must be in [0, 1), got 1.5"),
        (["--max-length", "7"], "max_length must be at least 8, got 7"),
        (["--max-steps", "0"], "max_steps must be -1"),
        (["--tau", "0"], "tau must be positive"),
        (["--dtype", "fp8"], "dtype must be auto"),
        (["--training-args", '{"no_such_option": 1}'], "unknown option training_args no_such_option"),
    ],
)
def test_bad_training_options_stop_before_loading_anything(
    tiny_model_dir, tmp_path, capsys, nothing_loaded, extra, message
):
    assert main(train_command(tiny_model_dir, tmp_path / "out", *extra)) == 2
    one_line_error(capsys, "hafrm train: error:", message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: abc\n", "learning_rate must be a number, got 'abc'"),
        ("alpha: [1, 2]\n", "alpha must be a number, got [1, 2]"),
        ("batch_size: '4'\n", "batch_size must be an integer, got '4'"),
        ("lora: maybe\n", "lora must be true or false"),
        ("method: haf\n  alpha: 0.1\n", "not valid YAML at line 2"),
        ("learning_rate: [1e-5\n", "not valid YAML"),
        ("- method\n", "expected a mapping of config fields"),
    ],
)
def test_bad_yaml_names_the_file_and_field(tmp_path, capsys, nothing_loaded, text, message):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(text)
    assert main(["train", "--config", str(config_file), "--output-dir", str(tmp_path / "out")]) == 2
    one_line_error(capsys, f"{config_file}: ", message)


def test_yaml_reads_exponent_numbers_and_a_cli_flag_fixes_a_bad_file_value(tiny_model_dir, tmp_path):
    from hafrm.training.config import TrainConfig

    config_file = tmp_path / "run.yaml"
    config_file.write_text("learning_rate: 1e-5\nbatch_size: '4'\nalpha: 1\n")
    config = TrainConfig.from_yaml(config_file, batch_size=8)
    assert (
        config.learning_rate == 1e-5
        and config.batch_size == 8
        and config.alpha == 1.0
        and isinstance(config.alpha, float)
    )


def test_missing_or_truncated_model_folder(tiny_model_dir, tmp_path, capsys, nothing_loaded):
    assert main(train_command(tmp_path / "no-such-model", tmp_path / "out")) == 2
    one_line_error(capsys, f"model folder {tmp_path / 'no-such-model'} does not exist")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for file in tiny_model_dir.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(train_command(broken, tmp_path / "out")) == 2
    one_line_error(capsys, f"{weights} is truncated or corrupt")


def test_output_dir_that_is_a_file_or_not_writable(tiny_model_dir, tmp_path, capsys, monkeypatch, nothing_loaded):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(train_command(tiny_model_dir, a_file)) == 2
    one_line_error(capsys, f"output folder {a_file} is a file")
    assert main(train_command(tiny_model_dir, a_file / "out")) == 2
    one_line_error(capsys, f"{a_file} is a file")
    monkeypatch.setattr(
        "os.access", lambda path, mode: False
    )  # as a user without write permission (tests may run as root)
    assert main(train_command(tiny_model_dir, tmp_path / "out")) == 2
    one_line_error(capsys, "is not writable")


@pytest.mark.parametrize(
    "content",
    [
        b"prompt,chosen,rejected\nhello,\xff\xfe bad bytes,fine\n",
        b'prompt,chosen,rejected\n"an open quote,a,b\nx,y,z\n',
    ],
)
def test_unreadable_csv_is_one_line_naming_the_file(tiny_model_dir, tmp_path, capsys, no_model_loading, content):
    data = tmp_path / "pairs.csv"
    data.write_bytes(content)
    assert main(train_command(tiny_model_dir, tmp_path / "out", "--train-data", str(data))) == 2
    one_line_error(capsys, f"{data}: cannot read this CSV file")


# ---------------------------------------------------------------------------------------- existing runs


@pytest.mark.parametrize("marker", ["hafrm.json", "checkpoint-4"])
def test_output_folder_holding_a_run_is_refused(tiny_model_dir, tmp_path, capsys, nothing_loaded, marker):
    output = tmp_path / "out"
    output.mkdir()
    (output / "hafrm.json").write_text("{}") if marker == "hafrm.json" else (output / marker).mkdir()
    assert main(train_command(tiny_model_dir, output)) == 2
    one_line_error(capsys, f"output folder {output} already holds a run ({marker})", "--overwrite-output-dir")
    assert (output / marker).exists()


def test_overwrite_or_resume_gets_past_the_check(tiny_model_dir, tmp_path, nothing_loaded):
    output = tmp_path / "out"
    (output / "checkpoint-4").mkdir(parents=True)
    (output / "hafrm.json").write_text("{}")
    with pytest.raises(HeavyWorkStarted):  # auto with no readable checkpoint starts afresh
        main(train_command(tiny_model_dir, output, "--resume-from-checkpoint", "auto"))
    (output / "checkpoint-4").mkdir()
    with pytest.raises(HeavyWorkStarted):
        main(train_command(tiny_model_dir, output, "--overwrite-output-dir"))
    assert not (output / "checkpoint-4").exists()  # an overwritten run's checkpoints would outrank the new ones


def test_second_run_into_the_same_folder_keeps_the_first(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(train_command(tiny_model_dir, output, "--max-steps", "1", "--eval-fraction", "0")) == 0
    before = (output / "hafrm.json").read_text()
    capsys.readouterr()
    assert (
        main(train_command(tiny_model_dir, output, "--max-steps", "1", "--eval-fraction", "0", "--method", "dpo")) == 2
    )
    one_line_error(capsys, "already holds a run")
    assert (output / "hafrm.json").read_text() == before


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_report_reruns_its_own_runs_in_place(tiny_model_dir, tmp_path):
    args = [
        "report",
        "--protocol",
        "in-distribution",
        "--datasets",
        "hh-harmless",
        "--methods",
        "baseline",
        "--seeds",
        "0",
        "--data-root",
        str(SHARED_DATA),
        "--train-pairs",
        "4",
        "--test-pairs",
        "4",
        "--output",
        str(tmp_path),
        "--model",
        str(tiny_model_dir),
        "--max-length",
        "48",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "4",
    ]
    assert main(args) == 0
    assert main(args) == 0
    assert json.loads((tmp_path / "results.json").read_text())[0]["method"] == "baseline"


# ---------------------------------------------------------------------------------------- data


def test_folder_of_mixed_formats_detects_each_file(tmp_path):
    """An HH JSONL, a canonical JSONL, a CSV and a Parquet file in one folder: every row is used."""
    hh = [
        {"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"}
        for i in range(15)
    ]
    canonical = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(15)]
    (tmp_path / "a-hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    (tmp_path / "b-canonical.jsonl").write_text("".join(json.dumps(r) + "\n" for r in canonical))
    pd.DataFrame(canonical).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame(hh).to_parquet(tmp_path / "d.parquet")
    pairs, report = load_pairs(str(tmp_path))
    assert (len(pairs), report.rows_read, report.rows_skipped) == (60, 60, 0)
    assert pairs[0]["prompt"] == [{"role": "user", "content": "q0"}] and pairs[0]["chosen"] == "good 0"
    assert pairs[-1]["prompt"] == [{"role": "user", "content": "q14"}] and pairs[-1]["rejected"] == "bad 14"
    assert len(load_pairs(str(tmp_path), limit=20)[0]) == 20


# ---------------------------------------------------------------------------------------- score and eval


@pytest.mark.parametrize(
    "command",
    [
        ["score", "MODEL", "--input", "x.jsonl"],
        ["eval", "MODEL", "--data", "x.jsonl"],
        ["best-of-n", "--prompts", "x.jsonl", "--selector", "MODEL", "--judge", "JUDGE"],
    ],
)
@pytest.mark.parametrize(
    "option, message", [(["--batch-size", "0"], "--batch-size: 0 is below 1"), (["--max-length", "7"], "7 is below 8")]
)
def test_scoring_commands_refuse_a_zero_batch_or_a_too_short_row(tmp_path, capsys, command, option, message):
    with pytest.raises(SystemExit) as stopped:
        main(command + option)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_score_and_eval_output_stops_before_scoring(tmp_path, capsys, no_model_loading):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    for command in (["score", str(tmp_path), "--input", str(rows)], ["eval", str(tmp_path), "--data", str(rows)]):
        assert main(command + ["--output", str(tmp_path / "missing-folder" / "out.json")]) == 2
        one_line_error(capsys, "missing-folder does not exist")
        assert main(command + ["--output", str(tmp_path)]) == 2
        one_line_error(capsys, f"output file {tmp_path} is a folder")


def test_score_refuses_an_empty_response_before_loading_a_model(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": "q", "response": "fine"}) + "\n" + json.dumps({"prompt": "q", "response": " "}) + "\n"
    )
    # the model folder does not exist: the error is about the row, so the rows were read before any model
    assert main(["score", str(tmp_path / "no-model"), "--input", str(rows)]) == 2
    one_line_error(capsys, f"{rows}:2: empty response")

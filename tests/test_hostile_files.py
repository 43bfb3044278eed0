"""Model folders and data files from an attacker's point of view (issue 44, items 8 and 9): no code from a model folder
runs unless asked, and every bad file is one line naming it."""

import json
import shutil
import subprocess
import sys

import pytest

EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


@pytest.fixture
def folder_with_code(tiny_model_dir, tmp_path):
    """The tiny model, its config and tokenizer config mapped to the folder's own Python files, which leave a marker
    when they run."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "RAN"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evilllama", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.M"})
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    code = EVIL.format(marker=str(marker))
    code += "from transformers import LlamaConfig, LlamaForCausalLM as M, PreTrainedTokenizerFast as EvilTokenizer\n"
    code += "class EvilConfig(LlamaConfig):\n    model_type = 'evilllama'\n"
    (folder / "evil.py").write_text(code)
    return folder, marker


def test_a_model_folder_runs_no_code_unless_asked_even_with_yes_on_stdin(folder_with_code, tmp_path):
    folder, marker = folder_with_code
    command = [sys.executable, "-m", "hafrm.cli", "train", "--model", str(folder), "--max-train-pairs", "4"]
    command += ["--max-steps", "1", "--output-dir", str(tmp_path / "out")]
    done = subprocess.run(command, input="y\ny\ny\n", capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("hafrm train: error:")]
    assert len(errors) == 1 and "--trust-remote-code" in errors[0] and str(folder) in errors[0]
    assert not marker.exists()


def test_scoring_commands_refuse_such_a_folder_too(folder_with_code, tmp_path, capsys, write_jsonl):
    from hafrm.cli.main import main

    folder, marker = folder_with_code
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Hi", "response": "Hello"}])
    assert main(["score", str(folder), "--input", str(rows)]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err and not marker.exists()


def truncated_gzip(path, rows):
    import gzip

    data = gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode())
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


PAIR = {"prompt": "How are you?", "chosen": "Fine, and you?", "rejected": "Go away."}


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
def test_a_truncated_gzip_file_is_one_line_naming_it_whatever_on_bad_row_says(
    tiny_model_dir, tmp_path, capsys, on_bad_row
):
    from hafrm.cli.main import main

    data = truncated_gzip(tmp_path / "train.jsonl.gz", [{**PAIR, "chosen": f"Fine {i}."} for i in range(400)])
    argv = ["train", "--model", str(tiny_model_dir), "--train-data", str(data), "--on-bad-row", on_bad_row]
    assert main([*argv, "--max-steps", "1", "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"hafrm train: error: {data}: the file is truncated"), error


def test_a_file_that_is_not_gzip_is_named(tmp_path, capsys):
    from hafrm.cli.main import main

    fake = tmp_path / "rows.jsonl.gz"
    fake.write_text(json.dumps(PAIR) + "\n")
    assert main(["score", str(tmp_path), "--input", str(fake)]) == 2
    assert f"{fake}: cannot be read: Not a gzipped file" in capsys.readouterr().err


@pytest.mark.parametrize("margin", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_margin_is_a_row_error_or_a_skipped_row(tmp_path, margin):
    from hafrm.data import load_pairs
    from hafrm.data.errors import DataError

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps(PAIR)[:-1] + f', "margin": {margin}}}\n')
    with pytest.raises(DataError, match=f"{path}:2: 'margin' must be a finite number"):
        load_pairs(str(path))
    pairs, report = load_pairs(str(path), on_error="skip")
    assert len(pairs) == 1 and report.rows_skipped == 1


def test_missing_model_folders_and_bad_output_folders_are_one_line(tiny_model_dir, tmp_path, capsys):
    from hafrm.cli.main import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    assert main(["score", "no-such-folder", "--input", str(rows)]) == 2
    assert "no-such-folder: no such local model folder, and no hub model" in capsys.readouterr().err
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    assert main(["train", "--model", str(tiny_model_dir), "--output-dir", str(dangling)]) == 2
    assert f"output folder {dangling} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in (
        capsys.readouterr().err
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(PAIR) + "\n")
    for output in (data, data / "run"):
        assert (
            main(["train", "--model", str(tiny_model_dir), "--train-data", str(data), "--output-dir", str(output)]) == 2
        )
        assert f"is inside the data folder {data}" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["train.jsonl"]  # nothing written into it

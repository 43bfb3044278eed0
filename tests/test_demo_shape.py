"""`hafrm train` keeps the demo's shape under options that only say where and how a run is recorded, and says which
defaults it runs (issue 46, item 8)."""

import logging

import pytest

import hafrm.training.pipeline as pipeline
from hafrm.cli.main import main
from hafrm.io.defaults import DEMO_TRAINING


@pytest.fixture
def captured(monkeypatch):
    """The config `hafrm train` would train with, captured instead of training."""
    seen = {}

    def fake_train(config, *args, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "train", fake_train)
    return seen


def run(argv, captured, caplog):
    caplog.set_level(logging.INFO, logger="hafrm")
    with pytest.raises(SystemExit):
        main(["train", *argv])
    return captured["config"], next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Defaults:"))


@pytest.mark.parametrize(
    "argv", [[], ["--output-dir", "X", "--report-to", "none", "--logging-steps", "1", "--run-name", "r"]]
)
def test_recording_options_keep_the_demo(argv, captured, caplog):
    config, line = run(argv, captured, caplog)
    assert all(getattr(config, name) == value for name, value in DEMO_TRAINING.items())
    assert line.startswith("Defaults: the first-run demo") and "--defaults paper" in line
    if argv:
        assert config.output_dir == "X" and config.logging_steps == 1


def test_a_training_option_runs_the_paper_defaults_and_says_how_to_get_the_demo(captured, caplog):
    config, line = run(["--learning-rate", "2e-5"], captured, caplog)
    assert config.freeze_layers == 0 and config.max_length == 512 and config.learning_rate == 2e-5
    assert line.startswith("Defaults: the paper's") and "--defaults demo" in line


def test_defaults_can_be_named_either_way(captured, caplog, tmp_path):
    config, _ = run(["--defaults", "paper", "--output-dir", "X"], captured, caplog)
    assert config.freeze_layers == 0
    yaml = tmp_path / "c.yaml"
    yaml.write_text("max_length: 128\n")
    config, _ = run(["--defaults", "demo", "--config", str(yaml), "--learning-rate", "1e-4"], captured, caplog)
    assert config.freeze_layers == DEMO_TRAINING["freeze_layers"] and config.max_length == 128
    assert config.learning_rate == 1e-4

"""The record and the model card say what was run (issue 42, item 5): a training_args value that sets one of our
options is the value recorded (and a conflicting pair is refused), pairs are counted per part, and the base model is
named."""

import json

import datasets
import pytest
from helpers import train_command

from hafrm.cli.main import main
from hafrm.data.errors import SkipReport
from hafrm.io.export import model_card
from hafrm.training.config import TrainConfig
from hafrm.training.pipeline import Splits, run_metadata


def test_training_args_value_is_what_the_record_and_card_say(tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    argv = train_command(
        tiny_model_dir,
        output,
        "--training-args",
        '{"learning_rate": 0.5}',
        max_steps=1,
        warmup_ratio=0,
        logging_steps=1,
    )
    assert main(argv) == 0
    record = json.loads((output / "hafrm.json").read_text())
    assert record["config"]["learning_rate"] == 0.5 and record["config"]["training_args"] == {}
    state = json.loads((output / "checkpoint-1" / "trainer_state.json").read_text())
    logged = next(entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry)
    assert logged == pytest.approx(0.5)  # trained at what the record says
    card = (output / "reward_model" / "README.md").read_text()
    assert "learning rate 0.5," in card
    # 8 pairs read, eval_fraction 0.1 of them held out (1), the rest trained on
    assert "- Pairs: training 7; evaluation eval 1 (8 rows read, 0 skipped)" in card


def test_a_training_args_value_that_conflicts_with_an_option_is_refused(tiny_model_dir, tmp_path, capsys):
    argv = train_command(tiny_model_dir, tmp_path / "out", "--training-args", '{"learning_rate": 0.5}')
    assert main([*argv, "--learning-rate", "3e-5"]) == 2
    assert "learning_rate is given twice: 3e-05 and training_args learning_rate=0.5" in capsys.readouterr().err


def test_the_embedded_base_model_is_named_in_the_card():
    splits = Splits(
        datasets.Dataset.from_list([{"x": 1}] * 3), {"test": datasets.Dataset.from_list([{"x": 1}])}, None, SkipReport()
    )
    record = run_metadata(TrainConfig(), "/cache/SmolLM2-135M-Instruct-fp32", splits)
    card = model_card({**record, "exported_checkpoint": {"step": 5, "of_steps": 5, "chosen_by": "last step"}})
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in card
    assert "Base model: `HuggingFaceTB/SmolLM2-135M-Instruct (hafrm's embedded copy" in card
    assert "- Pairs: training 3; evaluation test 1" in card and "Exported: step 5 of 5, chosen by last step" in card

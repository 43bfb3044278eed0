"""What a run exports: the last step unless a checkpoint is asked for, and then one chosen on validation pairs carved
from the training data by prompt, never on the pairs whose accuracy is reported (issue 42, item 1)."""

import json

import pytest
from helpers import train_command
from safetensors.torch import load_file

from hafrm.cli.main import main
from hafrm.data import PairEncoder
from hafrm.data.splits import prompt_key
from hafrm.io.defaults import DEFAULT_EVAL_DATA
from hafrm.training.config import TrainConfig
from hafrm.training.pipeline import VALIDATION, load_splits
from hafrm.training.trainer import STATE_FILE


def run(model_dir, output_dir, *extra):
    """Three steps, evaluated after each on one pair, every checkpoint kept: one pair's accuracy ties from step to
    step, so a rule that kept the best checkpoint would keep step 1 (a later one must be strictly better)."""
    argv = train_command(
        model_dir,
        output_dir,
        "--eval-steps",
        "1",
        "--save-total-limit",
        "5",
        *extra,
        eval_data=DEFAULT_EVAL_DATA,
        max_eval_pairs=1,
        max_steps=3,
        learning_rate="1e-4",
        method="baseline",
    )
    assert main(argv) == 0
    return json.loads((output_dir / "hafrm.json").read_text())


def exported_head_is_from(output_dir, step: int) -> bool:
    exported = load_file(output_dir / "reward_head.safetensors")["weight"]
    saved = load_file(output_dir / f"checkpoint-{step}" / STATE_FILE)
    head = next(value for name, value in saved.items() if name.endswith("score.weight"))
    return bool((exported == head).all())


def test_the_export_is_the_last_step_and_says_so(tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    record = run(tiny_model_dir, output)
    assert record["exported_checkpoint"] == {"step": 3, "of_steps": 3, "chosen_by": "last step"}
    assert exported_head_is_from(output, 3) and not exported_head_is_from(output, 1)
    card = (output / "reward_model" / "README.md").read_text()
    assert "Exported: step 3 of 3, chosen by last step" in card
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best_global_step"] is None  # nothing was chosen


def test_a_chosen_checkpoint_is_chosen_on_validation_pairs_and_named(tiny_model_dir, tmp_path):
    output = tmp_path / "out"
    record = run(tiny_model_dir, output, "--load-best-model-at-end", "--validation-pairs", "2")
    exported = record["exported_checkpoint"]
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if any(k.startswith("eval_") for k in entry)]
    # during training only the validation pairs were evaluated; the eval pair is scored once, on the export
    assert [e["step"] for e in evaluations] == [1, 2, 3]
    assert all(f"eval_{VALIDATION}_accuracy" in e and "eval_accuracy" not in e for e in evaluations)
    assert exported["chosen_by"] == "best validation accuracy" and exported["of_steps"] == 3
    assert exported["step"] == state["best_global_step"] and exported["validation_pairs"] >= 2
    assert exported["validation_accuracy"] == state["best_metric"]
    assert exported_head_is_from(output, exported["step"])
    assert "eval_accuracy" in record["eval_metrics"]


def test_validation_pairs_are_whole_prompts_of_the_training_data(tokenizer):
    config = TrainConfig(load_best_model_at_end=True, validation_pairs=5, max_train_pairs=60, max_eval_pairs=8)
    splits = load_splits(config, PairEncoder(tokenizer, 2048))

    def prompts(dataset) -> set[str]:
        return {tokenizer.decode(row["chosen_input_ids"][: row["prompt_length"]]) for row in dataset}

    texts, held_out = prompts(splits.train), prompts(splits.validation)
    assert len(splits.validation) >= 5 and len(splits.train) + len(splits.validation) == 60
    assert not texts & held_out
    assert "eval" in splits.evals and len(splits.evals["eval"]) == 8


def test_validation_split_keeps_prompt_groups_together():
    from hafrm.data.splits import split_by_prompt

    pairs = [{"prompt": [{"role": "user", "content": f"q{i // 3}"}], "chosen": "a", "rejected": "b"} for i in range(30)]
    train, validation = split_by_prompt(pairs, 4, seed=0)
    assert len(validation) == 6  # two whole groups of three
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in validation}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"training_args": {"metric_for_best_model": "eval_accuracy"}}, "never on the pairs whose accuracy"),
        ({"eval_at_steps": [2], "load_best_model_at_end": True}, "does not combine"),
        ({"eval_at_steps": [2], "early_stopping_patience": 1}, "does not combine"),
    ],
)
def test_choosing_on_the_reported_pairs_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_load_best_model_at_end_in_training_args_is_hafrms_own_choice_on_validation_pairs():
    config = TrainConfig(training_args={"load_best_model_at_end": True, "optim": "sgd"})
    assert config.load_best_model_at_end and config.selects_checkpoint and config.training_args == {"optim": "sgd"}


def test_a_validation_set_that_takes_every_training_pair_is_refused(tiny_model_dir, tmp_path, capsys):
    argv = train_command(
        tiny_model_dir, tmp_path / "out", "--load-best-model-at-end", validation_pairs=100, max_train_pairs=8
    )
    assert main(argv) == 2
    assert "takes every training pair" in capsys.readouterr().err

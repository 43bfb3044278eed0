"""The interface in the ecosystem's own words: documented options, aliases (TRL, transformers, LLaMA-Factory),
`--version`, early stopping, the Python API (in-memory data, `load`, a TRL-style trainer), warmup as steps, and
training statistics averaged over processes."""

import argparse
import dataclasses
import inspect
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hafrm.cli.main import build_parser, main
from hafrm.io.defaults import DEFAULT_TRAIN_DATA
from hafrm.model.losses import METHODS, POLICY_LOSSES
from hafrm.training.config import ALIASES, TrainConfig

OPTIONS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"  # the README links to it


def help_text(capsys, *command) -> str:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*command, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with single spaces


def pairs_rows(count: int, start: int = 0) -> list[dict]:
    return [
        {"prompt": f"Question {i}?", "chosen": f"A careful answer number {i}.", "rejected": f"No {i}."}
        for i in range(start, start + count)
    ]


# ---------------------------------------------------------------------------------------- documentation and --help


@pytest.mark.parametrize("command", ["train", "report"])
def test_every_option_is_documented_with_default_and_choices(capsys, command):
    text = help_text(capsys, command)
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        documentation = field.metadata.get("help", "")
        assert len(documentation.split()) >= 3, f"{field.name} has no real description"
        flag = "--" + field.name.replace("_", "-")
        assert re.search(rf"{flag}[ ,\[{{A-Z]", text), flag
        assert re.sub(r"\s", "", documentation) in re.sub(r"\s", "", text), field.name  # argparse wraps at hyphens too
    assert f"(default: {defaults.lr_scheduler})" in text and "(default: unset)" in text and "(default: off)" in text
    assert "--method {" + ",".join(METHODS) + "}" in text
    assert "--policy-loss {" + ",".join(POLICY_LOSSES) + "}" in text
    for name in ("reference", "on_bad_row", "dtype", "lr_scheduler", "data_format"):
        assert "--" + name.replace("_", "-") + " {" + ",".join(TrainConfig.choices(name)) + "}" in text, name
    for alias in ALIASES:
        assert "--" + alias.replace("_", "-") + " " in text, alias


def test_every_option_of_every_command_has_a_help_text():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help.split()) >= 3, f"hafrm {name} {action.dest} has no help"


def test_field_documentation_lives_only_in_the_metadata():
    """No field keeps an inline comment beside its metadata: one description per field."""
    source = inspect.getsource(TrainConfig).split("def __post_init__")[0]
    for line in source.splitlines():
        if re.match(r"\s+\w+: .*= field\(", line):
            assert "  # " not in line, line


def test_choices_come_from_the_validation_rules():
    from transformers.trainer_utils import SchedulerType

    assert TrainConfig.choices("method") == METHODS and TrainConfig.choices("policy_loss") == POLICY_LOSSES
    assert TrainConfig.choices("lr_scheduler") == tuple(
        kind.value for kind in SchedulerType
    )  # the list written out in config.py
    assert TrainConfig.choices("alpha") is None
    with pytest.raises(ValueError, match="lr_scheduler must be one of linear, cosine"):
        TrainConfig(lr_scheduler="cosine_annealing")
    with pytest.raises(ValueError, match="on_bad_row must be 'error' or 'skip'"):
        TrainConfig(on_bad_row="ignore")


def test_a_bad_choice_on_the_command_line_is_one_error_line(capsys):
    assert main(["train", "--method", "ppo", "--output-dir", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hafrm train: error: method must be one of baseline, dpo, haf, got 'ppo'"


def test_version(capsys):
    import hafrm

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"hafrm {hafrm.__version__}"


# ---------------------------------------------------------------------------------------- the ecosystem's names


def test_aliases_map_to_our_fields():
    config = TrainConfig.from_dict(
        {
            "beta": 0.25,
            "loss_type": ["ipo"],
            "model_name_or_path": "m",
            "dataset_name": "d.jsonl",
            "num_train_epochs": 3,
            "lr_scheduler_type": "linear",
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 4,
            "center_rewards_coefficient": 0.01,
            "precompute_ref_log_probs": False,
            "use_peft": True,
        }
    )
    assert (config.tau, config.policy_loss, config.model, config.train_data, config.epochs) == (
        0.25,
        "ipo",
        "m",
        "d.jsonl",
        3.0,
    )
    assert (config.lr_scheduler, config.micro_batch_size, config.batch_size) == ("linear", 2, 8)
    assert (config.center_rewards_coef, config.reference, config.lora) == (0.01, "live", True)
    factory = TrainConfig.from_dict(
        {"pref_beta": 0.3, "pref_loss": "simpo", "lora_rank": 8, "cutoff_len": 256, "finetuning_type": "lora"}
    )
    assert (factory.tau, factory.policy_loss, factory.lora_r, factory.max_length, factory.lora) == (
        0.3,
        "simpo",
        8,
        256,
        True,
    )
    assert TrainConfig.from_dict({"center_rewards_coefficient": None}).center_rewards_coef == 0.0  # TRL's default
    assert TrainConfig.from_dict({"precompute_ref_log_probs": True}).reference == "precompute"


def test_batch_size_in_transformers_words_counts_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig.from_dict({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3})
    assert (config.micro_batch_size, config.batch_size) == (4, 24)
    assert (
        TrainConfig.from_dict({"per_device_train_batch_size": 4}).batch_size == 8
    )  # TRL's default: 1 accumulation step
    assert TrainConfig.from_dict({"per_device_train_batch_size": 4, "batch_size": 32}).batch_size == 32


def test_command_line_aliases_in_both_spellings_and_over_a_yaml_file(tmp_path):
    from hafrm.cli.main import config_from_args

    parse = build_parser().parse_args
    args = parse(
        [
            "train",
            "--beta",
            "0.3",
            "--per_device_train_batch_size",
            "2",
            "--gradient-accumulation-steps",
            "3",
            "--use_peft",
            "--learning_rate",
            "2e-5",
            "--loss-type",
            "hinge",
        ]
    )
    config = config_from_args(args)
    assert (
        config.tau,
        config.micro_batch_size,
        config.batch_size,
        config.lora,
        config.learning_rate,
        config.policy_loss,
    ) == (0.3, 2, 6, True, 2e-5, "hinge")
    file = tmp_path / "run.yaml"
    file.write_text("beta: 0.5\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 2\n")
    config = config_from_args(parse(["train", "--config", str(file), "--tau", "0.2", "--micro-batch-size", "1"]))
    # the command line wins; accumulation stays 2 steps (as in transformers): the batch follows the per-device size
    assert (config.tau, config.micro_batch_size, config.batch_size) == (0.2, 1, 2)
    assert config_from_args(parse(["train", "--precompute-ref-log-probs", "false"])).reference == "live"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"loss_type": "exo_pair"}, "loss_type 'exo_pair' (TRL) has no counterpart in hafrm"),
        ({"loss_type": ["sigmoid", "sft"]}, "has no counterpart"),
        ({"pref_loss": "orpo"}, "pref_loss 'orpo' (LLaMA-Factory) has no counterpart"),
        ({"beta": 0.1, "tau": 0.2}, "tau is given twice, as beta=0.1 and as tau=0.2"),
        ({"batch_size": 8, "gradient_accumulation_steps": 2}, "give one of them"),
        ({"use_peft": "yes"}, "use_peft (TRL ModelConfig's name for lora): lora must be true or false"),
        ({"finetuning_type": "freeze"}, "finetuning_type 'freeze' (LLaMA-Factory) has no counterpart"),
    ],
)
def test_alias_errors_are_clear(values, message):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict(values)
    assert message in str(error.value)


def test_alias_error_in_a_yaml_file_names_the_file(tmp_path, capsys):
    file = tmp_path / "trl.yaml"
    file.write_text("loss_type: nca_pair\n")
    assert main(["train", "--config", str(file), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{file}: loss_type 'nca_pair' (TRL)" in capsys.readouterr().err


def test_the_options_page_documents_every_alias():
    text = OPTIONS_PAGE.read_text()
    for alias in ALIASES:
        assert f"`{alias}`" in text, alias


def test_a_yaml_in_trl_names_runs_unchanged_and_equals_ours(tiny_model_dir, tmp_path, capsys):
    output = str(tmp_path / "out")
    common = {
        "learning_rate": 1e-3,
        "max_steps": 2,
        "warmup_ratio": 0.1,
        "seed": 0,
        "logging_steps": 1,
        "max_train_pairs": 12,
        "eval_fraction": 0.25,
        "output_dir": output,
        "lora_r": 8,
        "lora_alpha": 16,
    }
    trl = {
        "model_name_or_path": str(tiny_model_dir),
        "dataset_name": str(DEFAULT_TRAIN_DATA),
        "beta": 0.2,
        "loss_type": ["sigmoid"],
        "num_train_epochs": 1,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr_scheduler_type": "linear",
        "center_rewards_coefficient": 0.01,
        "precompute_ref_log_probs": True,
        "use_peft": False,
        "max_length": 64,
        "gradient_checkpointing": False,
        "disable_dropout": True,
        "report_to": "none",
        **common,
    }
    ours = {
        "model": str(tiny_model_dir),
        "train_data": str(DEFAULT_TRAIN_DATA),
        "tau": 0.2,
        "policy_loss": "sigmoid",
        "epochs": 1,
        "micro_batch_size": 2,
        "batch_size": 4,
        "lr_scheduler": "linear",
        "center_rewards_coef": 0.01,
        "reference": "precompute",
        "lora": False,
        "max_length": 64,
        **common,
    }
    (tmp_path / "trl.yaml").write_text(yaml.safe_dump(trl))
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump(ours))
    assert main(["train", "--config", str(tmp_path / "trl.yaml")]) == 0
    recorded = json.loads((tmp_path / "out" / "hafrm.json").read_text())["config"]
    assert recorded == json.loads(json.dumps(TrainConfig.from_yaml(tmp_path / "ours.yaml").to_dict()))
    assert recorded["tau"] == 0.2 and recorded["batch_size"] == 4


# ---------------------------------------------------------------------------------------- early stopping


def test_early_stopping_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    """With no learning the validation accuracy never improves: training stops after `patience` evaluations past the
    first, and the export is the checkpoint chosen on the validation pairs (step 1), named as such. No eval set is
    needed: the validation pairs come from the training data."""
    output = tmp_path / "out"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_model_dir),
                "--train-data",
                str(DEFAULT_TRAIN_DATA),
                "--eval-fraction",
                "0",
                "--max-train-pairs",
                "16",
                "--validation-pairs",
                "4",
                "--max-length",
                "48",
                "--batch-size",
                "2",
                "--micro-batch-size",
                "2",
                "--learning-rate",
                "0",
                "--method",
                "baseline",
                "--eval-steps",
                "1",
                "--max-steps",
                "8",
                "--early-stopping-patience",
                "2",
                "--output-dir",
                str(output),
            ]
        )
        == 0
    )
    log = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert log["global_step"] == 3  # best at step 1, no improvement at steps 2 and 3: patience 2 runs out
    assert not list(output.glob("checkpoint-4"))
    exported = json.loads((output / "hafrm.json").read_text())["exported_checkpoint"]
    assert exported["step"] == 1 and exported["chosen_by"] == "best validation accuracy"


# ---------------------------------------------------------------------------------------- Python API


def test_import_hafrm_is_light_and_exports_the_api():
    probe = "import sys, hafrm; print('torch' in sys.modules, 'transformers' in sys.modules, sorted(hafrm.__all__))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False"), out
    from hafrm import HafObjective, HafTrainer, LoadedModel, TrainConfig, load, train  # noqa: F401
    from hafrm.training.pipeline import train as training_train

    assert train is training_train


class Watch:
    """A TrainerCallback that keeps the run's planned steps and its learning-rate schedule."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Watch(TrainerCallback):
            def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
                self.max_steps = state.max_steps
                self.factor = lr_scheduler.lr_lambdas[0]

        return _Watch()


def test_train_takes_rows_in_memory_and_equals_training_on_the_file(tiny_model_dir, tmp_path, write_jsonl):
    from datasets import Dataset

    from hafrm import load, train
    from hafrm.training.pipeline import optimizer_steps

    rows, eval_rows = pairs_rows(20), pairs_rows(6, start=100)
    base = dict(
        model=str(tiny_model_dir),
        max_length=48,
        batch_size=2,
        micro_batch_size=2,
        epochs=1.0,
        warmup_ratio=0.2,
        learning_rate=1e-3,
    )
    watch = Watch()
    in_memory = train(
        TrainConfig(**base, output_dir=str(tmp_path / "mem")),
        [watch],
        train_data=Dataset.from_list(rows),
        eval_data=eval_rows,
    )
    on_disk = train(
        TrainConfig(
            **base,
            output_dir=str(tmp_path / "file"),
            train_data=str(write_jsonl(tmp_path / "t.jsonl", rows)),
            eval_data=str(write_jsonl(tmp_path / "e.jsonl", eval_rows)),
        )
    )
    assert in_memory.data_report == on_disk.data_report and in_memory.data_report["rows_used"] == 26
    for key in ("eval_loss", "eval_reward_accuracy", "eval_implicit_accuracy"):
        assert in_memory.metrics[key] == pytest.approx(on_disk.metrics[key], rel=1e-5), key
    # warmup: 20% of the 10 optimiser steps the Trainer itself plans, as a step count
    assert watch.max_steps == optimizer_steps(TrainConfig(**base), 20) == 10
    assert watch.factor(1) == pytest.approx(0.5) and watch.factor(2) == pytest.approx(1.0)
    metadata = json.loads((tmp_path / "mem" / "hafrm.json").read_text())
    assert metadata["in_memory_data"] == ["train", "eval"] and metadata["config"]["train_data"] is None

    model = load(tmp_path / "mem")
    scores = model.score_pairs(
        [
            {"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in eval_rows
        ]
    )
    assert scores.metrics()["reward_accuracy"] == pytest.approx(in_memory.metrics["eval_reward_accuracy"])
    combined = model.score(["Question 1?"], ["A careful answer number 1."], head="combined")
    reward = model.score(["Question 1?"], ["A careful answer number 1."], head="reward")
    implicit = model.score(["Question 1?"], ["A careful answer number 1."], head="implicit")
    assert combined[0] == pytest.approx(reward[0] + implicit[0], rel=1e-5)


def test_in_memory_rows_go_through_the_schema_adapters_and_name_the_row(tiny_model_dir, tmp_path):
    from hafrm.data import DataError, load_pairs

    hh = [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}]
    pairs, report = load_pairs(hh, name="train_data")
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Hi?"}] and pairs[0]["chosen"] == "Hello!"
    with pytest.raises(DataError, match="train_data row 2: missing column"):
        load_pairs([*pairs_rows(1), {"prompt": "a", "chosen": "b"}], name="train_data")
    with pytest.raises(TypeError, match="a path, a datasets.Dataset or a list of dicts"):
        from hafrm import train

        train(TrainConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "o")), train_data=42)


def test_trainer_constructed_like_trl(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from hafrm import HafTrainer, HybridRewardModel, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    args = TrainingArguments(
        str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    trainer = HafTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=pairs_rows(8),
        eval_dataset=pairs_rows(4, start=50),
        processing_class=tokenizer,
    )
    assert (
        isinstance(trainer.model, HybridRewardModel) and trainer.model.reference_model is not None
    )  # live frozen reference
    trainer.train()
    assert trainer.state.global_step == 2
    assert "reward_loss" in next(entry for entry in trainer.state.log_history if "loss" in entry)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_implicit_accuracy" in metrics
    with pytest.raises(ValueError, match="pass processing_class"):
        HafTrainer(model=trainer.model, args=args, train_dataset=pairs_rows(2))


# ---------------------------------------------------------------------------------------- trainer details


@pytest.mark.parametrize(
    "ratio, pairs, expected", [(0.03, 400, 3), (0.03, 2000, 15), (1.0, 40, 10), (0.0, 40, 0), (0.5, 3, 1)]
)
def test_warmup_is_a_step_count_from_the_ratio(ratio, pairs, expected):
    """ceil(ratio x optimiser steps), whatever the ratio: 1.0 warms up over the whole run, not for one step."""
    from hafrm.training.pipeline import optimizer_steps, training_arguments

    config = TrainConfig(warmup_ratio=ratio, batch_size=4, micro_batch_size=2, output_dir="unused")
    steps = optimizer_steps(config, pairs)
    assert steps == math.ceil(pairs / 4)
    arguments = training_arguments(config, has_eval=False, train_pairs=pairs)
    assert arguments.warmup_steps == expected == math.ceil(ratio * steps)
    assert arguments.get_warmup_steps(steps) == expected
    assert optimizer_steps(dataclasses.replace(config, max_steps=7), pairs) == 7


def test_the_optimizer_is_transformers_default_unless_training_args_name_one():
    """transformers' default is fused AdamW on torch >= 2.8 (what TRL's trainers get); the single-tensor AdamW that
    "adamw_torch" means on a CPU took 0.63-0.69 s per update of a 135M model, fused 0.09-0.13 s (docs/benchmark.md)."""
    from transformers import TrainingArguments

    from hafrm.training.pipeline import training_arguments

    config = TrainConfig(output_dir="unused")
    default = TrainingArguments("unused").optim
    assert training_arguments(config, has_eval=False, train_pairs=8).optim == default
    chosen = dataclasses.replace(config, training_args={"optim": "sgd"})
    assert training_arguments(chosen, has_eval=False, train_pairs=8).optim == "sgd"


def test_logged_statistics_are_averaged_over_processes(tiny_model_dir, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from hafrm import HafTrainer

    args = TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = HafTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, processing_class=tokenizer
    )
    trainer._train_stats["reward_loss"] += [1.0, 3.0]
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["reward_loss"] == pytest.approx(2.0)  # one process: its own mean
    reduced = []

    def reduce(tensor, reduction="sum"):  # stands in for the other process: its mean is 6
        reduced.append(reduction)
        return (tensor + 6.0) / 2

    trainer.accelerator.reduce = reduce
    trainer._train_stats["reward_loss"] += [1.0, 3.0]
    trainer.log({"loss": 1.0})
    assert reduced == ["mean"] and trainer.state.log_history[-1]["reward_loss"] == pytest.approx(4.0)


def test_private_trainer_methods_we_override_still_have_their_signatures():
    """HafTrainer overrides four private transformers.Trainer methods and calls one (there is no public hook): fail
    loudly if transformers renames them or changes their arguments."""
    from transformers import Trainer

    expected = {
        "_save": ["self", "output_dir", "state_dict"],
        "_save_checkpoint": ["self", "model", "trial"],
        "_get_output_dir": ["self", "trial"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "_load_best_model": ["self"],
    }
    for name, parameters in expected.items():
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name

"""One namespace (issue 46, item 1): every TrainingArguments field as a YAML key, in training_args and as a flag, with
transformers' meaning; overlapping names map onto our options and two values for one are refused; the fields hafrm
sets itself and TRL's ScriptArguments / ModelConfig / RewardConfig fields each have a rule; an unknown name gets
"did you mean"; a TRL reward YAML as TRL's reward script takes it trains a tiny model with only its paths changed."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from helpers import train_command

from hafrm.cli.main import foreign_flags, main
from hafrm.training.config import ALIASES, TrainConfig
from hafrm.training.namespace import FOREIGN_FIELDS, PASS, TRL_SPLITS, foreign_rule
from hafrm.training.pipeline import training_arguments


def test_a_trl_reward_yaml_trains_with_only_its_paths_changed(tiny_model_dir, harmless_pairs, write_jsonl, tmp_path):
    """The options of TRL's reward script (`trl reward` / scripts/reward.py: ScriptArguments, RewardConfig,
    ModelConfig) as a YAML file, model and data paths replaced."""
    data = write_jsonl(tmp_path / "pairs.jsonl", harmless_pairs[:8])
    trl_yaml = {
        "model_name_or_path": str(tiny_model_dir),
        "dataset_name": str(data),
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "num_train_epochs": 1,
        "max_steps": 1,
        "gradient_checkpointing": True,
        "learning_rate": 1.0e-4,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "eval_strategy": "steps",
        "eval_steps": 50,
        "save_strategy": "steps",
        "save_steps": 50,
        "logging_steps": 1,
        "max_length": 128,
        "bf16": False,
        "report_to": "none",
        "seed": 0,
        "center_rewards_coefficient": 0.01,
        "disable_dropout": True,
        "dataset_num_proc": 4,
        "use_peft": True,
        "lora_task_type": "SEQ_CLS",
        "lora_r": 8,
        "lora_alpha": 16,
        "load_in_4bit": False,
        "use_dora": False,
    }
    config_file = tmp_path / "reward.yaml"
    config_file.write_text(yaml.safe_dump(trl_yaml))
    assert main(["train", "--config", str(config_file), "--method", "baseline"]) == 0
    record = json.loads((tmp_path / "out" / "hafrm.json").read_text())["config"]
    assert (record["lora"], record["lora_r"], record["micro_batch_size"], record["batch_size"]) == (True, 8, 2, 4)
    assert (record["learning_rate"], record["center_rewards_coef"], record["max_length"]) == (1e-4, 0.01, 128)
    assert record["training_args"] == {  # warmup_steps 0, transformers' default written out, is no warmup given
        "eval_strategy": "steps",
        "save_strategy": "steps",
        "bf16": False,
    }
    assert (tmp_path / "out" / "reward_adapter" / "adapter_config.json").is_file()


def test_training_arguments_fields_pass_through_with_transformers_meaning(tmp_path):
    config = TrainConfig.from_dict(
        {"optim": "adafactor", "adam_beta2": 0.99, "warmup_steps": 3, "output_dir": str(tmp_path)}
    )
    assert config.warmup_ratio == 0.0  # the count is the warmup, and the record says so
    arguments = training_arguments(config, has_eval=False, train_pairs=100)
    assert (arguments.optim, arguments.adam_beta2, arguments.warmup_steps) == ("adafactor", 0.99, 3)


def test_a_training_args_entry_is_the_same_namespace(tmp_path):
    config = TrainConfig.from_dict(
        {"training_args": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 3, "optim": "sgd"}}
    )
    assert (config.micro_batch_size, config.batch_size, config.training_args) == (2, 6, {"optim": "sgd"})
    # the same value given both ways is one value; two values are refused, naming both
    assert (
        TrainConfig.from_dict({"learning_rate": 2e-5, "training_args": {"learning_rate": 2e-5}}).learning_rate == 2e-5
    )
    with pytest.raises(ValueError, match=r"learning_rate is given twice: 2e-05 and training_args learning_rate=0.5"):
        TrainConfig.from_dict({"learning_rate": 2e-5, "training_args": {"learning_rate": 0.5}})


@pytest.mark.parametrize(
    "values,message",
    [
        ({"per_device_train_batch_size": 4, "micro_batch_size": 8}, "as per_device_train_batch_size=4 and as micro"),
        ({"warmup_steps": 2, "warmup_ratio": 0.1}, "warmup_steps (transformers) and warmup_ratio both set"),
        ({"dtype": "fp16", "bf16": True}, "dtype fp16 conflicts with bf16=True"),
        ({"dtype": "fp16", "fp16": False}, "dtype fp16 conflicts with fp16=False"),
        ({"eval_at_steps": [2], "eval_strategy": "steps"}, "does not combine with eval_strategy"),
        ({"use_cpu": True}, "hide the GPUs (CUDA_VISIBLE_DEVICES=)"),
        ({"model_revision": "v2"}, "hf download NAME --revision REV"),
        ({"group_by_length": True, "train_sampling_strategy": "random"}, "conflicts with train_sampling_strategy"),
        ({"training_args": [{"a": 1}]}, "training_args must be a mapping"),
        (
            {"micro_batch_size": 8, "training_args": {"per_device_train_batch_size": 4}},
            "as micro_batch_size=8 and as training_args per_device_train_batch_size=4",
        ),
        ({"metric_for_best_model": "eval_loss"}, "never on the pairs whose accuracy is reported"),
        ({"load_in_4bit": True}, "load_in_4bit (TRL ModelConfig) is refused"),
        ({"use_dora": True}, "DoRA is not implemented"),
        ({"pad_token": "<pad>"}, "hafrm chooses a pad token"),
        ({"dataset_train_split": "validation"}, "reads the 'train' split"),
        ({"dataset_config": "cfg"}, "needs dataset_name beside it"),
        ({"test_split_size": 100}, "not a count"),
        ({"learning_rat": 1e-5}, "unknown option learning_rat (did you mean learning_rate?)"),
        ({"eval_strategi": "steps"}, "(did you mean eval_strategy"),
        ({"training_args": {"no_such": 1}}, "unknown option training_args no_such"),
    ],
)
def test_refusals_and_conflicts_name_both_sides_or_the_reason(values, message):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict(values)
    assert message in str(error.value)


def test_a_refused_feature_left_off_and_an_ignored_field_are_accepted(caplog):
    caplog.set_level("INFO")
    config = TrainConfig.from_dict(
        {"load_in_4bit": False, "use_dora": False, "do_train": True, "dataset_num_proc": 8, "remove_unused_columns": 1}
    )
    assert config.training_args == {}
    assert "remove_unused_columns (transformers TrainingArguments) ignored" in caplog.text
    assert "do_train (transformers TrainingArguments) ignored: hafrm train always trains" in caplog.text
    assert "dataset_num_proc (TRL RewardConfig) ignored" in caplog.text


def test_trl_data_set_fields_map_onto_train_and_eval_data():
    config = TrainConfig.from_dict(
        {"dataset_name": "owner/set", "dataset_config": "default", "dataset_test_split": "test", "test_split_size": 0.2}
    )
    assert (config.train_data, config.eval_data, config.eval_fraction) == (
        "owner/set:default",
        "owner/set:default",
        0.2,
    )


def test_every_trl_and_transformers_field_has_a_rule():
    """A field TRL or transformers adds fails here until it is given a rule (and a line in docs/options.md)."""
    from transformers import TrainingArguments
    from trl import ModelConfig, RewardConfig, ScriptArguments
    from trl.scripts.utils import DatasetMixtureConfig

    ours = {*TrainConfig.field_names(), *ALIASES, *TRL_SPLITS, "dataset_config"}
    for cls in (TrainingArguments, RewardConfig, ScriptArguments, ModelConfig, DatasetMixtureConfig):
        for field in dataclasses.fields(cls):
            assert field.name in ours or foreign_rule(field.name) is not None, f"{cls.__name__}.{field.name}"
    extra = {f.name for f in dataclasses.fields(RewardConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    trl_only = [n for cls in (ScriptArguments, ModelConfig, DatasetMixtureConfig) for n in cls.__dataclass_fields__]
    documented = (Path(__file__).parents[1] / "docs" / "options.md").read_text()
    for name in [*FOREIGN_FIELDS, *sorted(extra), *trl_only]:
        if name not in TrainConfig.field_names():
            assert f"`{name}`" in documented, name
    assert all(rule.action != PASS for rule in FOREIGN_FIELDS.values())


def test_foreign_flags_read_as_transformers_scripts_write_them():
    assert foreign_flags(["--optim", "adafactor", "--bf16", "--eval_strategy=steps", "--adam-beta2", "0.99"]) == {
        "optim": "adafactor",
        "bf16": True,
        "eval_strategy": "steps",
        "adam_beta2": 0.99,
    }
    assert foreign_flags(["--fp16", "false", "--lr_scheduler_kwargs", '{"num_cycles": 2}']) == {
        "fp16": False,
        "lr_scheduler_kwargs": {"num_cycles": 2},
    }
    # each value as its field's type: "no" is a strategy, "0123" a token, not false and 83
    assert foreign_flags(["--save_strategy", "no", "--hub_token", "0123", "--no_remove_unused_columns"]) == {
        "save_strategy": "no",
        "hub_token": "0123",
        "remove_unused_columns": False,
    }
    with pytest.raises(ValueError, match="unexpected argument 'x' after --bf16"):
        foreign_flags(["--bf16", "true", "x"])


@pytest.mark.parametrize(
    "flags,value",
    [
        (["--gradient_checkpointing", "True"], True),
        (["--gradient_checkpointing=false"], False),
        (["--gradient-checkpointing"], True),
        (["--no-gradient-checkpointing"], False),
        (["--no_gradient_checkpointing"], False),
    ],
)
def test_boolean_options_take_every_spelling_transformers_scripts_use(flags, value):
    from hafrm.cli.main import build_parser, given_options

    args, extras = build_parser().parse_known_args(["train", *flags])
    assert not extras and given_options(args)["gradient_checkpointing"] is value


def test_an_unknown_flag_gets_did_you_mean_before_anything_loads(tiny_model_dir, tmp_path, capsys):
    assert main(train_command(tiny_model_dir, tmp_path / "out", "--eval_strategi", "steps")) == 2
    err = capsys.readouterr().err
    assert "hafrm train: error: unknown option eval_strategi (did you mean eval_strategy" in err
    assert len(err.strip().splitlines()) == 1


def test_other_commands_refuse_unknown_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "model", "--input", "x.jsonl", "--optim", "sgd"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --optim sgd" in capsys.readouterr().err


def test_no_rule_refuses_its_tools_own_default_or_hafrms_own_value():
    """TRL's and transformers' defaults (what their YAMLs and recipes write out) and the values hafrm itself uses
    are accepted: `model_revision: main`, `remove_unused_columns: false`, `use_cpu: false`, `warmup_steps: 0`, ..."""
    from transformers import TrainingArguments
    from trl import ModelConfig, RewardConfig, ScriptArguments

    for cls in (TrainingArguments, RewardConfig, ModelConfig, ScriptArguments):
        for field in dataclasses.fields(cls):
            rule = FOREIGN_FIELDS.get(field.name)
            if rule is not None and field.default is not dataclasses.MISSING:
                assert not rule.refuses(field.default), f"{cls.__name__}.{field.name}={field.default!r}"
    written_out = {"model_revision": "main", "remove_unused_columns": False, "use_cpu": False, "warmup_steps": 0}
    config = TrainConfig.from_dict({**written_out, "warmup_ratio": 0.1, "greater_is_better": True})
    assert config.warmup_ratio == 0.1 and config.training_args == {}


def test_train_sampling_strategy_is_group_by_length_where_they_overlap():
    assert TrainConfig.from_dict({"train_sampling_strategy": "random"}).group_by_length is False
    sequential = TrainConfig.from_dict({"train_sampling_strategy": "sequential"})
    assert not sequential.group_by_length and sequential.training_args == {"train_sampling_strategy": "sequential"}


def test_the_command_line_replaces_what_the_file_says_another_way(tmp_path):
    from hafrm.training.config import merge_config_values

    merged = merge_config_values(
        ("file.yaml", {"dataset": "dpo_en_demo", "template": "llama3", "bf16": True, "warmup_steps": 5}),
        (
            None,
            {"train_data": "pairs.jsonl", "prompt_template": "Q: {prompt}\nA:", "dtype": "fp16", "warmup_ratio": 0.1},
        ),
    )
    assert "dataset" not in merged and "template" not in merged and merged["training_args"] == {}
    assert (merged["train_data"], merged["dtype"], merged["warmup_ratio"]) == ("pairs.jsonl", "fp16", 0.1)
    # and the other way: a warmup count on the command line replaces the file's fraction
    config = TrainConfig(**merge_config_values(("file.yaml", {"warmup_ratio": 0.1}), (None, {"warmup_steps": 5})))
    assert (config.warmup_ratio, config.training_args) == (0.0, {"warmup_steps": 5})


def test_a_warmup_count_in_training_args_conflicts_with_a_fraction_set_apart_from_its_default(tmp_path):
    with pytest.raises(ValueError, match="warmup_steps and warmup_ratio 0.1 both set the warmup"):
        TrainConfig(warmup_ratio=0.1, training_args={"warmup_steps": 3})
    assert TrainConfig(training_args={"warmup_steps": 3}).warmup_ratio == 0.0


def test_one_half_precision_asked_for_turns_off_the_one_hafrm_or_the_launcher_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = TrainConfig.from_dict({"output_dir": str(tmp_path), "fp16": True})
    arguments = training_arguments(config, has_eval=False)  # not transformers' "at most one of fp16 and bf16"
    assert arguments.fp16 and not arguments.bf16

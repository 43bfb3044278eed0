"""LLaMA-Factory's reward stage (issue 46, item 2): its example reward YAML trains a tiny model with only the model
path and dataset_dir replaced; sets named in a dataset_info.json registry are read as its docs (data/README.md) and
its converter define alpaca and sharegpt preference rows; what hafrm does not read is one line."""

import json

import pytest
import yaml

from hafrm.cli.main import main
from hafrm.data import DataError, load_pairs
from hafrm.data.llamafactory import selection
from hafrm.training.config import TrainConfig

# LLaMA-Factory's examples/train_lora/llama3_lora_reward.yaml, as it ships
LLAMAFACTORY_REWARD_YAML = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: rm
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: dpo_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/reward
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
"""

SHAREGPT_ENTRY = {
    "file_name": "dpo_en_demo.json",
    "ranking": True,
    "formatting": "sharegpt",
    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
}
ALPACA_ENTRY = {
    "file_name": "alpaca_pref.json",
    "ranking": True,
    "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
}


def sharegpt_row(pair) -> dict:
    """A canonical pair written as LLaMA-Factory's sharegpt preference row (human/gpt turns, from/value)."""
    names = {"user": "human", "assistant": "gpt"}
    return {
        "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in pair["prompt"]],
        "chosen": {"from": "gpt", "value": pair["chosen"]},
        "rejected": {"from": "gpt", "value": pair["rejected"]},
    }


@pytest.fixture
def dataset_dir(tmp_path, harmless_pairs):
    folder = tmp_path / "data"
    folder.mkdir()
    pairs = [p for p in harmless_pairs if all(m["role"] in ("user", "assistant") for m in p["prompt"])][:12]
    (folder / "dpo_en_demo.json").write_text(json.dumps([sharegpt_row(p) for p in pairs]))
    alpaca = [
        {"instruction": "Name a fruit.", "input": "", "chosen": "An apple.", "rejected": "A chair."},
        {"instruction": "Translate to French:", "input": "cat", "chosen": "chat", "rejected": "chien"},
    ]
    (folder / "alpaca_pref.json").write_text(json.dumps(alpaca))
    registry = {"dpo_en_demo": SHAREGPT_ENTRY, "alpaca_pref": ALPACA_ENTRY, "sft_only": {"file_name": "x.json"}}
    (folder / "dataset_info.json").write_text(json.dumps(registry))
    return folder, pairs


def test_the_example_reward_yaml_trains_with_the_model_path_and_dataset_dir_replaced(
    tiny_model_dir, dataset_dir, tmp_path, monkeypatch
):
    folder, pairs = dataset_dir
    monkeypatch.chdir(tmp_path)
    text = LLAMAFACTORY_REWARD_YAML.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(tiny_model_dir))
    text = text.replace("dataset: dpo_en_demo\n", f"dataset: dpo_en_demo\ndataset_dir: {folder}\n")
    (tmp_path / "reward.yaml").write_text(text)
    assert main(["train", "--config", "reward.yaml", "--max-steps", "1"]) == 0
    record = json.loads((tmp_path / "saves/llama3-8b/lora/reward/hafrm.json").read_text())
    config = record["config"]
    assert (config["lora"], config["lora_r"], config["lora_target_modules"]) == (True, 8, "all-linear")
    assert (config["micro_batch_size"], config["batch_size"], config["max_length"]) == (1, 8, 2048)
    assert config["max_train_pairs"] == 1000 and config["training_args"] == {"bf16": True, "ddp_timeout": 180000000}
    assert record["pairs"]["train"] + record["pairs"]["eval"]["eval"] == len(pairs)  # eval_fraction 0.1 held out


def test_registry_rows_read_as_llamafactory_converts_them(dataset_dir):
    folder, pairs = dataset_dir
    read, report = load_pairs(selection(str(folder), "dpo_en_demo, alpaca_pref"))
    assert read[: len(pairs)] == [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    assert read[len(pairs)] == {
        "prompt": [{"role": "user", "content": "Name a fruit."}],  # an empty input is left out
        "chosen": "An apple.",
        "rejected": "A chair.",
    }
    assert read[-1]["prompt"] == [{"role": "user", "content": "Translate to French:\ncat"}]  # instruction\ninput
    assert report.rows_read == len(pairs) + 2


def test_alpaca_history_and_system_and_sharegpt_tags(tmp_path):
    rows = [{"q": "Now?", "sys": "Be brief.", "hist": [["Hi", "Hello"]], "good": "Yes.", "bad": "No."}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    openai_style = [
        {
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            "chosen": {"role": "assistant", "content": "A"},
            "rejected": {"role": "assistant", "content": "B"},
        }
    ]
    (tmp_path / "o.json").write_text(json.dumps(openai_style))
    registry = {
        "a": {
            "file_name": "a.jsonl",
            "ranking": True,
            "columns": {"prompt": "q", "system": "sys", "history": "hist", "chosen": "good", "rejected": "bad"},
        },
        "o": {
            "file_name": "o.json",
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        },
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry))
    (alpaca, openai), _ = load_pairs(selection(str(tmp_path), ["a", "o"]))
    assert alpaca["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Now?"},
    ]
    assert openai == {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "chosen": "A",
        "rejected": "B",
    }


@pytest.mark.parametrize(
    "names,message",
    [
        ("nowhere", "not in the registry (it has alpaca_pref, dpo_en_demo, sft_only)"),
        ("sft_only", "not a preference set (ranking is not true)"),
    ],
)
def test_registry_errors_are_one_line(dataset_dir, names, message):
    folder, _ = dataset_dir
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pairs(selection(str(folder), names))


def test_a_sharegpt_row_that_does_not_end_with_a_user_turn_names_its_file_and_row(tmp_path):
    row = {
        "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
        "chosen": {"from": "gpt", "value": "x"},
        "rejected": {"from": "gpt", "value": "y"},
    }
    (tmp_path / "s.jsonl").write_text(json.dumps(row))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"s": {**SHAREGPT_ENTRY, "file_name": "s.jsonl"}}))
    with pytest.raises(DataError, match=r"s.jsonl:1: a preference row's messages must end with a user turn"):
        load_pairs(selection(str(tmp_path), "s"))


@pytest.mark.parametrize(
    "values,message",
    [
        ({"stage": "dpo"}, "stage (LLaMA-Factory) is refused: hafrm train trains reward models"),
        ({"val_size": 50}, "val_size 50: hafrm holds out a fraction"),
        ({"dataset": "x", "train_data": "y.jsonl"}, "dataset (LLaMA-Factory's registry) and train_data both"),
    ],
)
def test_llamafactory_options_refused_in_one_line(values, message):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict(values)
    assert message in str(error.value)


def test_llamafactory_names_map_onto_ours():
    config = TrainConfig.from_dict(
        {"stage": "rm", "val_size": 0.05, "max_samples": 100, "lora_target": "q_proj,v_proj", "cutoff_len": 256}
    )
    assert (config.eval_fraction, config.max_train_pairs, config.max_length) == (0.05, 100, 256)
    assert config.lora_target_modules == ["q_proj", "v_proj"]


def test_a_template_name_needs_the_tokenizers_own_template(tiny_model_dir, tmp_path, capsys, default_model_dir):
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(base)
    for name in ("config.json", "model.safetensors"):
        (base / name).write_bytes((tiny_model_dir / name).read_bytes())
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": str(base), "template": "llama3", "output_dir": str(tmp_path / "o")}))
    assert main(["train", "--config", str(config)]) == 2
    assert "template 'llama3' (LLaMA-Factory) names a format hafrm does not have" in capsys.readouterr().err


def test_registry_entries_as_llamafactory_chooses_their_source(tmp_path):
    from hafrm.data.llamafactory import registered_set

    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    hub = {"hf_hub_url": "o/n", "ms_hub_url": "m/n", "subset": "en", "folder": "d", "revision": "r1", "ranking": True}
    entry = registered_set(str(tmp_path), "x", {"x": {**hub, "formatting": "sharegpt", "columns": columns}})
    assert (entry.source, entry.hub_kwargs) == ("o/n:en", {"data_dir": "d", "revision": "r1"})
    for bad, message in [
        ({"ms_hub_url": "m/n", "ranking": True}, "not a ModelScope hub or a script"),
        ({"file_name": "f.json", "ranking": True, "formatting": "sharegpt", "columns": {"messages": "m"}}, "no chosen"),
        ({"file_name": "f.json", "ranking": True, "columns": {**columns, "images": "images"}}, "a images column"),
        ({"file_name": "f.json", "ranking": True, "num_samples": 10}, "use max_samples"),
    ]:
        with pytest.raises(DataError, match=message):
            registered_set(str(tmp_path), "x", {"x": bad})

"""Every name `hafrm train` reads beyond its own options and their aliases (`config.ALIASES`), and the rule for each.

A YAML file, `--training-args` and the command line share one namespace: our options, the ecosystem's names for
them, every field of transformers' `TrainingArguments` (passed to it with transformers' meaning) and the fields of
TRL's `ScriptArguments`, `ModelConfig`, `RewardConfig` and `DatasetMixtureConfig` and of LLaMA-Factory's YAMLs that
are neither. Each name not ours is passed through,
ignored with a log line, or refused with the reason (`FOREIGN_FIELDS`); a name nobody has gets "did you mean".
docs/options.md holds the table.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from dataclasses import dataclass

PASS, IGNORE, REFUSE = "passed to TrainingArguments", "ignored (logged)", "refused"


@dataclass(frozen=True)
class ForeignField:
    """What hafrm does with another tool's field: `action` is PASS, IGNORE or REFUSE, for `why`. A refused field
    given a value that asks for nothing (false, null, 0, empty: what TRL's YAMLs write for features left off) is
    ignored instead. With `ignored_values` (a tool's default, or the value hafrm uses itself) those are ignored and
    any other value is refused."""

    name: str
    origin: str
    action: str
    why: str
    ignored_values: tuple | None = None

    def refuses(self, value) -> bool:
        if self.ignored_values is not None:
            return value not in self.ignored_values
        return self.action == REFUSE and bool(value)


_TA, _TRL_SCRIPT, _TRL_MODEL, _TRL_REWARD = (
    "transformers TrainingArguments",
    "TRL ScriptArguments",
    "TRL ModelConfig",
    "TRL RewardConfig",
)
_CHOSEN_BY_US = (
    "hafrm chooses the exported checkpoint itself (load_best_model_at_end, early_stopping_patience) by accuracy on "
    "validation pairs carved from the training data, never on the pairs whose accuracy is reported"
)
_NO_QUANTIZED = "hafrm trains full-precision weights (quantized LoRA training is not implemented): drop it"

FOREIGN_FIELDS: dict[str, ForeignField] = {
    rule.name: rule
    for rule in (
        # transformers TrainingArguments fields hafrm sets itself
        ForeignField(
            "remove_unused_columns", _TA, IGNORE, "hafrm's collator reads the columns it builds: it is always false"
        ),
        ForeignField(
            "use_cpu",
            _TA,
            REFUSE,
            "hafrm trains on the GPU torch sees, else on the CPU; to train on the CPU, hide the GPUs "
            "(CUDA_VISIBLE_DEVICES=)",
            ignored_values=(False,),
        ),
        ForeignField(
            "length_column_name",
            _TA,
            REFUSE,
            "hafrm writes its own length column; group_by_length batches by it",
            ignored_values=("length",),
        ),
        ForeignField("label_names", _TA, REFUSE, "hafrm's batches carry no labels: a pair's order is its label"),
        ForeignField(
            "label_smoothing_factor",
            _TA,
            REFUSE,
            "it smooths cross-entropy labels, which no hafrm loss has; the policy loss's is label_smoothing",
        ),
        ForeignField("metric_for_best_model", _TA, REFUSE, _CHOSEN_BY_US),
        ForeignField("greater_is_better", _TA, REFUSE, _CHOSEN_BY_US, ignored_values=(None, True)),
        ForeignField("local_rank", _TA, IGNORE, "the launcher (torchrun, accelerate) sets the process's rank"),
        ForeignField("do_train", _TA, IGNORE, "hafrm train always trains"),
        ForeignField("do_eval", _TA, IGNORE, "hafrm train evaluates whenever it has evaluation pairs"),
        ForeignField("do_predict", _TA, IGNORE, "hafrm train does not predict; hafrm score does"),
        # LLaMA-Factory (its model, data and finetuning arguments; the rest of its YAML is our options or aliases)
        ForeignField(
            "stage",
            "LLaMA-Factory",
            IGNORE,
            "hafrm train trains reward models (LLaMA-Factory's stage rm; its rm is hafrm's method baseline, hafrm's "
            "default method is haf); other stages are refused",
            ignored_values=("rm",),
        ),
        ForeignField("plot_loss", "LLaMA-Factory", IGNORE, "loss curves: report_to tensorboard (or wandb, ...)"),
        ForeignField("overwrite_cache", "LLaMA-Factory", IGNORE, "hafrm's caches are keyed by model and data"),
        ForeignField("preprocessing_num_workers", "LLaMA-Factory", IGNORE, "hafrm tokenizes in one process"),
        # TRL ScriptArguments
        ForeignField(
            "dataset_streaming", _TRL_SCRIPT, REFUSE, "hafrm reads the whole set: it counts, splits and sorts pairs"
        ),
        ForeignField("ignore_bias_buffers", _TRL_SCRIPT, IGNORE, "a DDP fix for GPT-2's bool buffers; not needed"),
        # TRL DatasetMixtureConfig (its scripts' `datasets` list)
        ForeignField(
            "datasets",
            "TRL DatasetMixtureConfig",
            REFUSE,
            "give the pairs as train_data (a file, a folder or a hub name owner/name[:config]) and eval_data",
        ),
        ForeignField(
            "streaming",
            "TRL DatasetMixtureConfig",
            REFUSE,
            "hafrm reads the whole set: it counts, splits and sorts pairs",
        ),
        # TRL ModelConfig
        ForeignField(
            "model_revision",
            _TRL_MODEL,
            REFUSE,
            "download that revision (hf download NAME --revision REV --local-dir DIR) and give the folder as model",
            ignored_values=(None, "main"),
        ),
        ForeignField(
            "lora_target_parameters", _TRL_MODEL, REFUSE, "LoRA on parameters (MoE experts) is not implemented"
        ),
        ForeignField(
            "lora_modules_to_save",
            _TRL_MODEL,
            REFUSE,
            "hafrm saves the reward head (and a grown embedding) with the adapter itself",
        ),
        ForeignField(
            "lora_task_type",
            _TRL_MODEL,
            IGNORE,
            "hafrm's LoRA adapter serves both heads; the export holds a SEQ_CLS adapter (reward_adapter/) and a "
            "CAUSAL_LM one (adapter/); SEQ_CLS and CAUSAL_LM are accepted",
            ignored_values=("SEQ_CLS", "CAUSAL_LM"),
        ),
        ForeignField("use_rslora", _TRL_MODEL, REFUSE, "rank-stabilised LoRA is not implemented"),
        ForeignField("use_dora", _TRL_MODEL, REFUSE, "DoRA is not implemented"),
        ForeignField("load_in_8bit", _TRL_MODEL, REFUSE, _NO_QUANTIZED),
        ForeignField("load_in_4bit", _TRL_MODEL, REFUSE, _NO_QUANTIZED),
        ForeignField("bnb_4bit_quant_type", _TRL_MODEL, IGNORE, "used only with load_in_4bit, which is refused"),
        ForeignField("use_bnb_nested_quant", _TRL_MODEL, REFUSE, _NO_QUANTIZED),
        ForeignField("bnb_4bit_quant_storage", _TRL_MODEL, IGNORE, "used only with load_in_4bit, which is refused"),
        # TRL RewardConfig
        ForeignField("activation_offloading", _TRL_REWARD, REFUSE, "not implemented; use gradient_checkpointing"),
        ForeignField(
            "chat_template_path",
            _TRL_REWARD,
            REFUSE,
            "give the format as prompt_template, or use a model folder whose tokenizer has the template",
        ),
        ForeignField("dataset_num_proc", _TRL_REWARD, IGNORE, "hafrm tokenizes in one process"),
        ForeignField(
            "pad_token", _TRL_REWARD, REFUSE, "hafrm chooses a pad token no conversation contains (docs/data.md)"
        ),
        ForeignField("eos_token", _TRL_REWARD, REFUSE, "the tokenizer's EOS ends each answer, as training formats it"),
        ForeignField("model_init_kwargs", _TRL_REWARD, REFUSE, "use dtype, attn_implementation and trust_remote_code"),
        ForeignField("pad_to_multiple_of", _TRL_REWARD, IGNORE, "hafrm pads each batch to its longest row"),
    )
}

# TRL ScriptArguments' split names, and the split hafrm reads: the train split of train_data, the test split of
# eval_data (config._trl_dataset maps dataset_name, dataset_config and these onto train_data and eval_data).
TRL_SPLITS = {"dataset_train_split": "train", "dataset_test_split": "test"}


@functools.cache
def training_arguments_fields() -> frozenset[str]:
    """The installed transformers' TrainingArguments fields (imported only when a name is not one of ours)."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def foreign_rule(name: str) -> ForeignField | None:
    """The rule for a name that is not one of our options or aliases; None: nobody's name."""
    if name in FOREIGN_FIELDS:
        return FOREIGN_FIELDS[name]
    if name in training_arguments_fields():
        return ForeignField(name, _TA, PASS, "transformers' meaning")
    return None


def did_you_mean(name: str, known: list[str]) -> str:
    """' (did you mean a or b?)' for the accepted names closest to `name`, else ''."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


@functools.cache
def _foreign_dataclasses() -> list:
    from transformers import TrainingArguments

    classes = [TrainingArguments]
    try:  # TRL's scripts' dataclasses, where TRL is installed
        from trl import ModelConfig, RewardConfig, ScriptArguments

        classes += [RewardConfig, ModelConfig, ScriptArguments]
    except ImportError:
        pass
    return classes


def field_kind(name: str) -> type | None:
    """bool, int, float or str: the type a TrainingArguments or TRL field's flag value is read as (None: no such
    field). Read from its annotation where that is a plain type, else from its default or the annotation's text."""
    for cls in _foreign_dataclasses():
        found = cls.__dataclass_fields__.get(name)
        if found is None:
            continue
        if found.type in (bool, int, float, str):
            return found.type
        default = found.default
        if isinstance(default, (bool, int, float)):
            return type(default)
        annotation = str(found.type)
        for kind in (bool, int, float):
            if kind.__name__ in annotation.replace("|", " ").split() and "str" not in annotation:
                return kind
        return str
    return None


def text_to_bool(text: str) -> bool:
    """transformers' HfArgumentParser spelling of booleans: true/yes/1 and false/no/0, any case."""
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def read_flag_value(name: str, text: str | None):
    """A flag's text as its field's type, as transformers' HfArgumentParser reads it: `no` stays the string "no" for
    eval_strategy, `0123` stays text for hub_token; booleans take true/false/yes/no/1/0 (a bare flag is true); JSON
    for mapping and list values."""
    kind = field_kind(name)
    if kind is bool:
        try:
            return True if text is None else text_to_bool(text)
        except ValueError as error:
            raise ValueError(f"--{name}: {error}") from None
    if text is None:
        raise ValueError(f"--{name} needs a value")
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--{name}: not valid JSON ({error.msg})") from None
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"--{name}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is None and text.lower() in ("true", "false"):  # a name nobody has: the namespace refuses it by name
        return text.lower() == "true"
    return text

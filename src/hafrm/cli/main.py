"""`hafrm` command line: train, eval, score (and the protocol commands built on them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import types
import typing
from pathlib import Path

from hafrm import __version__
from hafrm.data.encoding import MIN_MAX_LENGTH
from hafrm.data.errors import DataError
from hafrm.experiments.curves import PROTOCOLS as CURVE_PROTOCOLS
from hafrm.io.atomic import write_atomically
from hafrm.io.filechecks import check_writable_dir, check_writable_file
from hafrm.rlhf.config import RlhfConfig
from hafrm.serve.limits import ServeLimits
from hafrm.training.config import TrainConfig, merge_config_values, read_yaml
from hafrm.training.namespace import text_to_bool

logger = logging.getLogger("hafrm")


def _parse_value(kind):
    """An argparse type for a config field's annotation (optional, list and dict fields included)."""
    options = (
        [k for k in typing.get_args(kind) if k is not type(None)]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
        else [kind]
    )
    base = typing.get_origin(options[0]) or options[0]
    if base is dict:
        return json.loads
    lists = [o for o in options if typing.get_origin(o) is list]
    if lists:
        item = typing.get_args(lists[0])[0]
        if len(options) == 1:  # only a list: "16,32,64" or "16"
            return lambda text: [item(part) for part in text.split(",")]
        return lambda text: [item(part) for part in text.split(",")] if "," in text else text
    return base


def _add_option(group, name: str, **options) -> None:
    """--name-with-dashes, shown in --help; and --name_with_underscores (as TRL's and transformers' scripts write
    options), accepted but not listed."""
    group.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, **options)
    if "_" in name:
        group.add_argument("--" + name, dest=name, default=argparse.SUPPRESS, **{**options, "help": argparse.SUPPRESS})


class _BoolFlag(argparse.Action):
    """A boolean option as transformers' HfArgumentParser and argparse both write it: `--name`, `--name true|false`,
    `--name=false` and `--no-name` (`--no_name`)."""

    def __init__(self, option_strings, dest, **kwargs):
        negatives = ["--no-" + o[2:] if "-" in o[2:] or "_" not in o[2:] else "--no_" + o[2:] for o in option_strings]
        super().__init__([*option_strings, *negatives], dest, nargs="?", metavar="BOOL", **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        negative = option_string.startswith(("--no-", "--no_"))
        try:
            given = True if value is None else _text_to_bool(value)
        except argparse.ArgumentTypeError as error:
            parser.error(f"{option_string}: {error}")
        setattr(namespace, self.dest, given != negative)


def _text_to_bool(text: str) -> bool:
    """`namespace.text_to_bool` as an argparse type: `--use_peft`, `--use_peft true`, `--use_peft false`."""
    try:
        return text_to_bool(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _shown_default(value) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def add_dataclass_flags(group, cls) -> None:
    """One --flag per field of a config dataclass, documented from the field's metadata with its default and, where
    cls.choices names them, its choices."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = field.name
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = f"{field.metadata['help']} (default: {_shown_default(default)})".replace("%", "%%")
        choices = cls.choices(name)
        metavar = "{" + ",".join(choices) + "}" if choices else name.upper()
        if hints[name] is bool:
            _add_option(group, name, action=_BoolFlag, help=text)
        else:
            _add_option(group, name, type=_parse_value(hints[name]), metavar=metavar, help=text)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, documented from the field's metadata, with its default and choices; and
    one per alias (TRL, transformers and LLaMA-Factory names). Only flags given on the command line override the
    YAML file. Choices are shown, not enforced by argparse: TrainConfig checks them, so that a bad value is one
    error line naming the field, as in a YAML file."""
    from hafrm.training.config import ALIASES, alias_help

    hints = typing.get_type_hints(TrainConfig)
    add_dataclass_flags(
        parser.add_argument_group(
            "training options (override --config; each is also a YAML key, and takes --its_underscore_spelling)"
        ),
        TrainConfig,
    )
    aliases = parser.add_argument_group(
        "the ecosystem's names for the same options (YAML keys too); README: 'Other tools' names'"
    )
    for alias in ALIASES.values():
        kind = hints.get(alias.target)
        if alias.name in ("use_peft", "precompute_ref_log_probs"):
            # TRL's booleans, spelled as HfArgumentParser reads them
            options = dict(type=_text_to_bool, nargs="?", const=True, metavar="BOOL")
        elif alias.name == "gradient_accumulation_steps":
            options = dict(type=int, metavar="STEPS")
        elif alias.name in ("center_rewards_coefficient", "val_size", "test_split_size"):
            options = dict(type=float, metavar="NUMBER")
        elif alias.convert is not None:
            options = dict(metavar=alias.name.upper())
        else:
            options = dict(type=_parse_value(kind), metavar=alias.name.upper())
        _add_option(aliases, alias.name, help=alias_help(alias).replace("%", "%%"), **options)


def given_options(args: argparse.Namespace) -> dict:
    """The training options given on the command line, in our names or the ecosystem's (foreign flags included)."""
    from hafrm.training.config import ALIASES

    ours = {name: getattr(args, name) for name in [*TrainConfig.field_names(), *ALIASES] if hasattr(args, name)}
    return {**ours, **getattr(args, "foreign", {})}


def foreign_flags(extras: list[str]) -> dict:
    """Flags argparse does not know (TrainingArguments and TRL fields, for the config's namespace to rule on):
    `--name VALUE`, `--name=VALUE`, a bare `--name` (true) or `--no_name` (false) for a boolean field; dashes in names
    read as underscores; each value read as its field's type (`namespace.read_flag_value`)."""
    from hafrm.training.namespace import field_kind, read_flag_value

    flags: dict = {}
    index, previous = 0, None
    while index < len(extras):
        token = extras[index]
        if not token.startswith("--") or len(token) == 2:
            after = f" after {previous}" if previous else ""
            raise ValueError(f"unexpected argument {token!r}{after}")
        name, has_value, value = token[2:].replace("-", "_").partition("=")
        if not has_value and name.startswith("no_") and field_kind(name[3:]) is bool:
            flags[name[3:]], previous, index = False, token, index + 1
            continue
        if not has_value:
            following = extras[index + 1] if index + 1 < len(extras) else None
            has_value = following is not None and not following.startswith("--")
            value = following if has_value else None
            index += has_value
        flags[name] = read_flag_value(name, value)
        previous, index = token, index + 1
    return flags


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = given_options(args)
    return TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides)


# Options that change where and how a run is recorded, not what is trained: given alone, the demo keeps its shape.
RECORDING_OPTIONS = {
    "output_dir",
    "report_to",
    "logging_steps",
    "run_name",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "save_steps",
    "save_total_limit",
    "keep_eval_scores",
    "trust_remote_code",
    # transformers' recording-only TrainingArguments
    "logging_dir",
    "logging_first_step",
    "disable_tqdm",
    "log_level",
    "project",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "hub_strategy",
    "hub_token",
}


def command_train(args: argparse.Namespace) -> int:
    from hafrm.io.defaults import DEMO_TRAINING
    from hafrm.training.pipeline import train

    given = given_options(args)
    defaults = args.defaults or ("demo" if not args.config and set(given) <= RECORDING_OPTIONS else "paper")
    demo_text = ", ".join(f"{k}={v}" for k, v in DEMO_TRAINING.items())
    if defaults == "demo":
        logger.info(
            "Defaults: the first-run demo, sized for a CPU (%s); --defaults paper, or any training option, runs the "
            "paper's defaults",
            demo_text,
        )
    else:
        logger.info(
            "Defaults: the paper's (TrainConfig: full fine-tuning, max length 512, lr 1e-5, batch 16); "
            "--defaults demo runs the first-run demo's (%s) under the options given",
            demo_text,
        )
    config = config_from_args(args)  # the file and the command line, checked field by field
    if defaults == "demo":  # the same, over the demo's values instead of TrainConfig's
        sources = [(None, DEMO_TRAINING), *([(args.config, read_yaml(args.config))] if args.config else [])]
        config = TrainConfig(**merge_config_values(*sources, (None, given)))
    result = train(config)
    print(
        json.dumps({"output_dir": str(result.output_dir), "eval": result.metrics, "data": result.data_report}, indent=2)
    )
    comparison = result.metrics.get("compared_to_untrained", {}).get("reward")
    if comparison:
        print(comparison_summary(comparison))
    return 0


def comparison_summary(comparison: dict) -> str:
    """The reward head before and after training, in words a first-time user reads."""

    def percent(values) -> str:
        value, low, high = (100 * v for v in values)
        return f"{value:.1f}% [{low:.1f}, {high:.1f}]"

    difference, low, high = (100 * v for v in comparison["difference"])
    verdict = (
        "the gain is clear of zero"
        if low > 0
        else "the interval includes zero: no gain shown"
        if high >= 0
        else "training made it worse"
    )
    return (
        f"Reward-head accuracy on {comparison['pairs']} held-out pairs (95% intervals):\n"
        f"  untrained:  {percent(comparison['before'])}\n"
        f"  trained:    {percent(comparison['after'])}\n"
        f"  difference: {difference:+.1f} points [{low:+.1f}, {high:+.1f}] on the same pairs; {verdict}"
    )


def command_export(args: argparse.Namespace) -> int:
    from hafrm.training.pipeline import export_checkpoint

    print(json.dumps({"output_dir": str(export_checkpoint(args.checkpoint, args.output_dir))}))
    return 0


def command_eval(args: argparse.Namespace) -> int:
    from hafrm.data import load_pairs
    from hafrm.eval.evaluation import score_pairs
    from hafrm.eval.rewardbench import rewardbench_metrics
    from hafrm.training.loading import load_trained

    if args.output:
        check_writable_file(args.output)
    loaded = load_trained(args.model_dir, reference=args.reference)
    results = {}
    for spec in args.data:
        name, _, source = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        pairs, report = load_pairs(
            source, data_format=args.data_format, split=args.split, limit=args.max_pairs, on_error=args.on_bad_row
        )
        scores, encode_report = score_pairs(loaded, pairs, args.max_length, args.batch_size)
        report.truncated += encode_report.truncated
        results[name] = {
            **scores.metrics(),
            "pairs": len(pairs),
            **rewardbench_metrics(scores),
            "data": report.as_dict(),
        }
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).write_text(text)
    print(text)
    return 0


def command_score(args: argparse.Namespace) -> int:
    from hafrm.eval.scoring import RewardScorer, read_scoring_rows, score_rows

    if args.output:
        check_writable_file(args.output)
    rows = read_scoring_rows(args.input, args.prompt_column, args.response_column)
    scorer = RewardScorer(args.model_dir, max_length=args.max_length, label_index=args.label_index)
    rows = score_rows(scorer, rows, args.batch_size)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.output:
        Path(args.output).write_text(lines)
    else:
        sys.stdout.write(lines)
    return 0


def command_report(args: argparse.Namespace) -> int:
    import shlex

    command = "hafrm " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "hafrm report"
    check_writable_dir(args.output, "report folder")
    overrides = config_from_args(args).to_dict()
    validation_pairs = overrides.pop("validation_pairs") or 0  # the reports evaluate it at every step instead
    datasets, methods, seeds = (
        args.datasets.split(","),
        args.methods.split(","),
        [int(s) for s in args.seeds.split(",")],
    )
    if args.protocol in CURVE_PROTOCOLS:
        from hafrm.experiments.curves import CurveSettings, claim_report

        settings = CurveSettings(
            data_root=args.data_root or "",
            steps=tuple(args.steps),
            test_pairs=args.test_pairs or 1000,
            overrides=overrides,
            ood=args.ood,
            validation_pairs=validation_pairs,
        )
        print(
            claim_report(
                args.protocol, datasets, methods, seeds, settings, args.output, command, args.alphas, args.merge
            )
        )
    else:
        from hafrm.experiments.protocols import ProtocolSettings, paper_report

        settings = ProtocolSettings(
            data_root=args.data_root,
            train_pairs=args.train_pairs,
            test_pairs=args.test_pairs,
            overrides=overrides,
            skip_unavailable=args.skip_unavailable,
        )
        print(paper_report(args.protocol, datasets, methods, seeds, settings, args.output, command, args.merge))
    return 0


SAMPLING_DEFAULTS = {"policy": None, "n": 4, "num_prompts": 50, "max_new_tokens": 64, "temperature": 1.0, "seed": 0}


def command_best_of_n(args: argparse.Namespace) -> int:
    from hafrm.data import load_pairs
    from hafrm.experiments.bestofn import (
        best_of_n_results,
        distinct_prompts,
        read_candidates,
        sample_candidates,
        samples_record,
        score_candidates,
    )

    if args.output:
        check_writable_file(args.output)
    elif args.judge is None:
        raise ValueError("without --judge nothing is compared: give --output to keep the candidates and their scores")
    given = [name for name in SAMPLING_DEFAULTS if getattr(args, name) is not None]
    if args.candidates:
        if given:  # the candidates were sampled already: a sampling option would be silently ignored
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{options}: the candidates come from {args.candidates}; sampling options do not apply")
        prompts, candidates, saved, sampling = read_candidates(args.candidates)
    else:
        options = {**SAMPLING_DEFAULTS, **{name: getattr(args, name) for name in given}}
        pairs, _ = load_pairs(args.prompts, data_format=args.data_format, split=args.split, on_error=args.on_bad_row)
        prompts = distinct_prompts(pairs, options["num_prompts"])
        candidates, sampling = sample_candidates(
            prompts, options["policy"], options["n"], options["max_new_tokens"], options["temperature"], options["seed"]
        )
        saved = {}
    models = [*([args.judge] if args.judge else []), *args.selector]
    scores = score_candidates(prompts, candidates, models, saved, args.max_length, args.batch_size)
    results = best_of_n_results(sampling, len(prompts), args.selector, args.judge, scores)
    if args.output:
        record = {**results, "samples": samples_record(prompts, candidates, scores)}
        text = json.dumps(record, indent=2, ensure_ascii=False)
        write_atomically(args.output, lambda path: path.write_text(text))  # it may be the candidates file itself
    print(json.dumps(results, indent=2))
    return 0


def number_in_range(kind, low, high=None):
    """An argparse type: a finite number of `kind` from low to high, so a bad value is one usage error, not a
    traceback."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range ({low} to {high})" if high is not None else f"{text} is below {low}"
            )
        return value

    return parse


def add_label_index(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-index",
        type=number_in_range(int, 0),
        help="the logit read as the reward, for a classifier of several labels (refused without it)",
    )


def add_scored_length(parser: argparse.ArgumentParser) -> None:
    """--max-length of the commands that score single responses (score, serve, best-of-n)."""
    parser.add_argument(
        "--max-length",
        type=number_in_range(int, MIN_MAX_LENGTH),
        default=512,
        help="tokens per scored sequence (default: 512)",
    )


def command_serve(args: argparse.Namespace) -> int:
    import os

    from hafrm.serve.server import resolve_api_key, serve

    api_key = resolve_api_key(
        args.api_key if args.api_key is not None else os.environ.get("HAFRM_API_KEY"), args.no_auth, args.host
    )
    limits = ServeLimits(
        max_items=args.max_items,
        max_chars=args.max_chars,
        max_request_chars=args.max_request_chars,
        max_body_bytes=args.max_body_bytes,
        max_concurrent=args.max_concurrent,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        body_timeout=args.body_timeout,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    serve(
        args.model_dir, args.host, args.port, api_key, limits, args.max_length, args.label_index, args.normalize_reward
    )
    return 0


def command_rlhf(args: argparse.Namespace) -> int:
    from hafrm.rlhf.pipeline import train_policy

    given = {name: getattr(args, name) for name in RlhfConfig.field_names() if hasattr(args, name)}
    config = RlhfConfig.from_yaml(args.config, **given) if args.config else RlhfConfig(**given)
    print(json.dumps({"output_dir": str(train_policy(config))}))
    return 0


def command_policy_eval(args: argparse.Namespace) -> int:
    from hafrm.io.pretrained import load_tokenizer, resolve_policy_path
    from hafrm.rlhf.evaluation import add_scores, evaluate_policy, read_rows, summary, write_rows
    from hafrm.rlhf.pipeline import capped_prompts
    from hafrm.serve.rlhf import spec_model_head

    check_writable_file(args.output)
    for spec in args.reward_model:
        spec_model_head(spec)  # every name checked before anything is sampled
    if args.completions:
        if args.policy:
            raise ValueError(f"--policy: the completions come from {args.completions}; nothing is sampled again")
        prompts, rows = read_rows(args.completions)
    else:
        if not args.policy:
            raise ValueError("--prompts needs at least one --policy LABEL=PATH to sample from")
        start = resolve_policy_path(args.start_policy)
        prompts, _ = capped_prompts(
            args.prompts, load_tokenizer(start), args.max_prompt_length, args.data_format, args.split, args.max_prompts
        )
        rows = []
        for spec in args.policy:
            label, _, path = spec.partition("=") if "=" in spec else (spec, "", spec)
            rows += evaluate_policy(
                label, path, start, prompts, args.samples, args.max_new_tokens, args.seed, args.batch_size
            )
    add_scores(rows, prompts, args.reward_model, args.batch_size)
    write_rows(args.output, prompts, rows)
    print(json.dumps(summary(rows), indent=2))
    return 0


DATA_FORMATS = TrainConfig.choices("data_format")
DATA_FORMAT_HELP = "auto: told from the columns; or name one of the formats (default: auto)"
BAD_ROW_HELP = "a malformed row stops the command (error) or is counted and left out (skip)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hafrm", description="Train and use reward models with the Hybrid Alignment Framework (HAF-RM)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a haf, baseline (BT-only) or dpo model",
        # an unknown flag is a TrainingArguments or TRL field (foreign_flags), never one of ours by its prefix
        allow_abbrev=False,
        epilog="Any other transformers TrainingArguments field is accepted too, as --its_name VALUE (or --its-name; "
        "a bare flag is true) and as a YAML key, with transformers' meaning; the TRL and transformers fields hafrm "
        "sets itself or does not implement are refused with the reason: docs/options.md, 'One namespace'.",
    )
    train.add_argument("--config", help="YAML file of training options")
    train.add_argument(
        "--defaults",
        choices=("demo", "paper"),
        help="the defaults the options given change: demo (the first run, sized for a CPU: hafrm.io.defaults."
        "DEMO_TRAINING) or paper (TrainConfig's, the paper's Table 5). Unset: demo when no option is given but "
        "ones that only say where and how the run is recorded (--output-dir, --report-to, --logging-steps, "
        "--run-name, ...), else paper",
    )
    add_config_flags(train)
    train.set_defaults(handler=command_train)

    export = commands.add_parser(
        "export",
        help="write the folders a finished run writes (reward_model/, policy/, ...) from one of its checkpoints",
        description="A run cut off at step 900 of 1,000 still has a model: its checkpoint's run record (config, base "
        "model) and tokenizer rebuild the model, its trainable state is loaded, and the export names the step.",
    )
    export.add_argument("checkpoint", help="a checkpoint-N folder of a hafrm train run")
    export.add_argument("output_dir", help="a new folder for the export")
    add_trust_flag(export)
    export.set_defaults(handler=command_export)

    evaluate = commands.add_parser("eval", help="pairwise accuracy: reward head, implicit DPO reward, combined")
    evaluate.add_argument("model_dir", help="a hafrm output folder (the reward head, and the policy head if trained)")
    evaluate.add_argument(
        "--data", nargs="+", required=True, metavar="[NAME=]SOURCE", help="files, folders or hub names"
    )
    evaluate.add_argument("--data-format", default="auto", choices=DATA_FORMATS, help=DATA_FORMAT_HELP)
    evaluate.add_argument("--split", default="test", help="split of a hub data set or folder (default: test)")
    evaluate.add_argument(
        "--max-pairs", type=number_in_range(int, 1), help="the first N pairs of each set (default: all)"
    )
    evaluate.add_argument(
        "--max-length",
        type=number_in_range(int, MIN_MAX_LENGTH),
        help="tokens per pair row; longer pairs lose prompt tokens from the left, then the start of the responses "
        "(default: the max_length the model was trained with)",
    )
    evaluate.add_argument(
        "--batch-size", type=number_in_range(int, 1), default=8, help="pairs per forward pass (default: 8)"
    )
    evaluate.add_argument("--reference", help="reference policy (default: the base model recorded at training)")
    evaluate.add_argument("--on-bad-row", choices=("error", "skip"), default="error", help=BAD_ROW_HELP)
    evaluate.add_argument("--output", help="write the JSON results here too")
    add_trust_flag(evaluate)
    evaluate.set_defaults(handler=command_eval)

    score = commands.add_parser("score", help="score prompt/response rows of a JSONL/CSV/Parquet file")
    score.add_argument("model_dir", help="a hafrm output folder or any sequence-classification reward model")
    score.add_argument("--input", required=True, help="JSONL, CSV or Parquet file with a prompt and a response column")
    score.add_argument("--output", help="JSONL output (default: stdout)")
    score.add_argument(
        "--prompt-column", default="prompt", help="column of the prompt text or messages (default: prompt)"
    )
    score.add_argument(
        "--response-column", default="response", help="column of the response to score (default: response)"
    )
    add_scored_length(score)
    score.add_argument(
        "--batch-size", type=number_in_range(int, 1), default=8, help="rows per forward pass (default: 8)"
    )
    add_label_index(score)
    add_trust_flag(score)
    score.set_defaults(handler=command_score)

    serve = commands.add_parser(
        "serve",
        help="HTTP reward service (also OpenRLHF's remote reward model API)",
        description="Authentication: with an API key (--api-key or HAFRM_API_KEY) every path but /health needs "
        "'Authorization: Bearer KEY'. An empty key is refused. "
        "Without a key the service starts only on a loopback host "
        "(127.0.0.1, ::1, localhost); any other host needs a key or an explicit --no-auth.",
    )
    positive = number_in_range(int, 1)
    serve.add_argument("model_dir", help="a hafrm output folder or any sequence-classification reward model")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=number_in_range(int, 1, 65535), default=8000, help="port to listen on (default: 8000)"
    )
    serve.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: $HAFRM_API_KEY); an empty key is an error"
    )
    serve.add_argument("--no-auth", action="store_true", help="serve a non-loopback host with no authentication")
    add_scored_length(serve)
    defaults = ServeLimits()
    serve.add_argument("--max-items", type=positive, default=defaults.max_items, help="sequences per request (256)")
    serve.add_argument(
        "--max-chars", type=positive, default=defaults.max_chars, help="characters per text, else 413 (100000)"
    )
    serve.add_argument(
        "--max-request-chars",
        type=positive,
        default=defaults.max_request_chars,
        help="characters of all of a request's texts, chat messages joined, else 413 (1000000)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=positive,
        default=defaults.max_body_bytes,
        help="bytes per request body, else 413 (4 MiB)",
    )
    serve.add_argument(
        "--max-concurrent",
        type=positive,
        default=defaults.max_concurrent,
        help="requests admitted at once, in flight and queued; more get 503 with Retry-After before their body is "
        "read (8)",
    )
    serve.add_argument("--max-batch-size", type=positive, default=16, help="sequences per forward pass")
    serve.add_argument(
        "--max-wait-ms", type=number_in_range(float, 0), default=10.0, help="how long a batch waits for more requests"
    )
    serve.add_argument(
        "--body-timeout",
        type=number_in_range(float, 0.001),
        default=10.0,
        help="seconds to receive a request body, else 408 and the connection is closed",
    )
    serve.add_argument(
        "--timeout-keep-alive",
        type=number_in_range(float, 0.001),
        default=5.0,
        help="seconds a connection (new or kept alive) may wait without sending a complete request head",
    )
    add_label_index(serve)
    serve.add_argument(
        "--normalize-reward",
        action="store_true",
        help="return (r - mean) / std with the statistics the model carries (config.mean, config.std, as OpenRLHF's "
        "serve_rm --normalize_reward); refused for a model without them",
    )
    add_trust_flag(serve)
    serve.set_defaults(handler=command_serve)

    best = commands.add_parser(
        "best-of-n", help="sample N responses per prompt, pick by reward models, score the picks against a judge"
    )
    source = best.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="pairs file, folder or hub name whose prompts are sampled from")
    source.add_argument(
        "--candidates",
        metavar="FILE",
        help="an earlier run's --output: its prompts and candidates are used as they are (no sampling), and the "
        "models it has scored are not loaded again, so selectors trained on different days (not all on disk at "
        "once) can be compared on the same candidates; a MODEL[@HEAD] counts as scored when written the same way",
    )
    best.add_argument(
        "--selector",
        nargs="+",
        default=[],
        metavar="MODEL[@HEAD]",
        help="hafrm output folder (HEAD: reward, implicit or combined) or any sequence-classification reward model; "
        "the first is the reference every other selector is compared with on the same prompts",
    )
    best.add_argument(
        "--judge",
        metavar="MODEL[@HEAD]",
        help="the ranking the picks are checked against; without it the candidates are only sampled and scored by "
        "the selectors, into --output, for a later run with --candidates to compare",
    )
    best.add_argument("--policy", help="causal LM or hafrm output folder to sample from (default: the embedded model)")
    best.add_argument(
        "--n", type=number_in_range(int, 1), help=f"responses sampled per prompt (default: {SAMPLING_DEFAULTS['n']})"
    )
    best.add_argument(
        "--num-prompts",
        type=number_in_range(int, 1),
        help=f"distinct prompts used (default: {SAMPLING_DEFAULTS['num_prompts']})",
    )
    best.add_argument(
        "--max-new-tokens",
        type=number_in_range(int, 1),
        help=f"tokens per sampled response (default: {SAMPLING_DEFAULTS['max_new_tokens']})",
    )
    best.add_argument(
        "--temperature", type=float, help=f"sampling temperature, above 0 (default: {SAMPLING_DEFAULTS['temperature']})"
    )
    best.add_argument("--seed", type=int, help=f"sampling seed (default: {SAMPLING_DEFAULTS['seed']})")
    best.add_argument("--data-format", default="auto", choices=DATA_FORMATS, help=DATA_FORMAT_HELP)
    best.add_argument("--split", default="test", help="split of a hub data set or folder (default: test)")
    best.add_argument("--on-bad-row", choices=("error", "skip"), default="skip", help=BAD_ROW_HELP)
    add_scored_length(best)
    best.add_argument("--batch-size", type=number_in_range(int, 1), default=8, help="sequences per pass (default: 8)")
    best.add_argument(
        "--output",
        help="also write the results with every candidate and each model's scores as JSON (see --candidates)",
    )
    add_trust_flag(best)
    best.set_defaults(handler=command_best_of_n)

    rlhf = commands.add_parser(
        "rlhf",
        help="train a policy against a reward model (TRL's GRPO, with a KL penalty to the start policy)",
        description="Policy optimisation against a hafrm reward model or any one-label sequence classifier, on TRL's "
        "GRPOTrainer (TRL 1.16 has no PPO; docs/rlhf.md says how GRPO differs from the paper's PPO). Writes "
        "checkpoint-N/ (loadable policies), policy/ (the last step), rollouts.jsonl (every completion and its reward) "
        "and rlhf.json (the run record, written last).",
    )
    rlhf.add_argument("--config", help="YAML file of these options (the command line wins)")
    add_dataclass_flags(
        rlhf.add_argument_group("rlhf options (TRL's names where TRL has one; each is also a YAML key)"), RlhfConfig
    )
    rlhf.set_defaults(handler=command_rlhf)

    policy_eval = commands.add_parser(
        "policy-eval",
        help="sample saved policies on held-out prompts, score the completions with reward models, estimate the KL",
        description="Decoding is fixed: --samples completions per prompt sampled at temperature 1 (no top-k or top-p "
        "cut), seeded. KL to the start policy: the k1 estimator, the mean over completions of "
        "log pi(y|x) - log pi_start(y|x), each from a forward pass. Writes one JSON line per completion; given back as "
        "--completions, the file is scored by new reward models only.",
    )
    source = policy_eval.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="prompt-only rows or preference pairs (their distinct prompts)")
    source.add_argument("--completions", metavar="FILE", help="an earlier --output: add reward-model scores to it")
    policy_eval.add_argument(
        "--policy",
        nargs="+",
        default=[],
        metavar="[LABEL=]PATH",
        help="causal LM folders, rlhf checkpoints or hafrm output folders (their policy/) to sample from",
    )
    policy_eval.add_argument(
        "--start-policy", help="the policy the KL is measured to (default: the embedded SmolLM2-135M-Instruct)"
    )
    policy_eval.add_argument(
        "--reward-model",
        nargs="*",
        default=[],
        metavar="MODEL[@HEAD]",
        help="reward models that score every completion",
    )
    policy_eval.add_argument("--samples", type=number_in_range(int, 1), default=2, help="completions per prompt (2)")
    policy_eval.add_argument(
        "--max-new-tokens", type=number_in_range(int, 1), default=64, help="tokens per completion (64)"
    )
    policy_eval.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every policy (0)")
    policy_eval.add_argument("--max-prompts", type=number_in_range(int, 1), help="the first N distinct prompts")
    policy_eval.add_argument(
        "--max-prompt-length",
        type=number_in_range(int, 1),
        default=256,
        help="prompts longer than this many tokens are left out (256)",
    )
    policy_eval.add_argument("--data-format", default="auto", choices=DATA_FORMATS, help=DATA_FORMAT_HELP)
    policy_eval.add_argument("--split", default="test", help="split of a hub data set or folder (default: test)")
    policy_eval.add_argument(
        "--batch-size", type=number_in_range(int, 1), default=8, help="prompts or sequences per pass (8)"
    )
    policy_eval.add_argument("--output", required=True, help="JSON lines: the prompts, then one line per completion")
    add_trust_flag(policy_eval)
    policy_eval.set_defaults(handler=command_policy_eval)

    report = commands.add_parser(
        "report", help="run a paper protocol for several methods and seeds; write a Markdown report with plots"
    )
    report.add_argument(
        "--protocol",
        choices=("in-distribution", "mixed", "ood-internal", "ood-external", *CURVE_PROTOCOLS),
        default="in-distribution",
        help="the paper's tables, or the claim's learning curves and alpha sweep "
        "(prompt-disjoint splits of beaver-safe, hh-harmless, hh-helpful; needs --data-root)",
    )
    report.add_argument(
        "--steps",
        type=lambda text: [int(s) for s in text.split(",")],
        default=[16, 32, 64, 128, 256],
        help="learning-curve / alpha-sweep: optimiser steps at which every run is evaluated "
        "(the last is the run's length)",
    )
    report.add_argument(
        "--alphas",
        type=lambda text: [float(s) for s in text.split(",")],
        help="alpha-sweep: the policy ratios (default 0,0.05,0.1,0.2,0.5,1,2)",
    )
    report.add_argument(
        "--datasets",
        default="hh-harmless",
        help="comma-separated: beaver-safe, hh-harmless, alpaca-human-pref, chatbot-arena, hh-helpful",
    )
    report.add_argument(
        "--ood",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learning-curve / alpha-sweep: also test every run on the other claim sets and the local RewardBench "
        "rows (--no-ood: only on its own test part)",
    )
    report.add_argument("--methods", default="baseline,dpo,haf", help="comma-separated (default: baseline,dpo,haf)")
    report.add_argument("--seeds", default="0,1", help="comma-separated (default: 0,1)")
    report.add_argument("--data-root", help="local copies in the layout of ../shared/data (default: the hub)")
    report.add_argument(
        "--train-pairs", type=number_in_range(int, 1), help="paper tables: training pairs per data set (default: all)"
    )
    report.add_argument(
        "--test-pairs",
        type=number_in_range(int, 1),
        help="test pairs per set (default: all for the paper tables; 1000 or more for the learning curves)",
    )
    report.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="leave out test sets that cannot be loaded (e.g. hub-only ones while offline) "
        "instead of stopping before training",
    )
    report.add_argument("--output", default="outputs/report", help="report folder (default: outputs/report)")
    report.add_argument("--config", help="YAML of training options shared by every run")
    report.add_argument(
        "--merge",
        nargs="+",
        metavar="REPORT_DIR",
        help="train nothing: one report from the runs of earlier reports (e.g. seeds run apart)",
    )
    add_config_flags(report)
    report.set_defaults(handler=command_report)
    return parser


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let model folders run their own Python code (an auto_map); only for folders you trust (default: off, "
        "and such a folder is refused in one line)",
    )


def quiet_deepspeed_on_cpu() -> None:
    """DeepSpeed, where it is installed, is imported by accelerate on every model save, and on a machine without a GPU
    it then warns that it fell back to the CPU, in runs that do not use it at all. Naming the CPU as its accelerator
    (DS_ACCELERATOR, unless the user set it) is the same choice without the warning."""
    import os

    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    from hafrm.io.remote_code import trust_remote_code

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    quiet_deepspeed_on_cpu()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trust_remote_code(bool(getattr(args, "trust_remote_code", False)))  # train and rlhf set it from their config
    try:
        args.foreign = foreign_flags(extras)
        return args.handler(args)
    except (DataError, OSError, ValueError, FloatingPointError) as error:
        # User errors (bad data, config, paths, a diverging run): one line, no traceback.
        # OSError covers missing files and transformers' "not a model folder or hub name".
        print(f"hafrm {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2

"""The paper's data sets by name: where each lives on the Hugging Face hub and, optionally, locally.

`load_named("hh-harmless", "test", data_root=...)` reads local files under data_root when they are
there (the layout of ../shared/data), else the hub. A data set without a test split gets the
paper's seeded 10% test split. Groups follow the paper: Safety (Beaver Safe, Harmless) and Chat
(Alpaca Human Pref, Chatbot Arena, Helpful).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from hafrm.data.errors import DataError, SkipReport
from hafrm.data.loading import load_pairs, train_test_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    hub: str
    data_format: str
    group: str | None
    hub_splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split; missing test -> 10% split
    hub_kwargs: dict = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)  # our split -> path under data_root
    note: str = ""  # how the local copy differs from the hub's, logged when it is read


CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="hh-harmless",
            title="HH-Harmless",
            hub="Anthropic/hh-rlhf",
            data_format="hh-rlhf",
            group="safety",
            hub_splits={"train": "train", "test": "test"},
            hub_kwargs={"data_dir": "harmless-base"},
            local={
                "train": "hh-rlhf-harmless-base/harmless_train_sample.jsonl",
                "test": "hh-rlhf-harmless-base/test.jsonl.gz",
            },
        ),
        DatasetSpec(
            name="hh-helpful",
            title="HH-Helpful",
            hub="Anthropic/hh-rlhf",
            data_format="hh-rlhf",
            group="chat",
            hub_splits={"train": "train", "test": "test"},
            hub_kwargs={"data_dir": "helpful-base"},
            local={
                "train": "hh-rlhf-helpful-base/helpful_train_sample.jsonl",
                "test": "hh-rlhf-helpful-base/test.jsonl.gz",
            },
        ),
        DatasetSpec(
            name="beaver-safe",
            title="Beaver Safe",
            hub="PKU-Alignment/PKU-SafeRLHF",
            data_format="pku-saferlhf",
            group="safety",
            hub_splits={"train": "train", "test": "test"},
            local={
                "train": "pku-saferlhf/PKU-Alignment_PKU-SafeRLHF_sample.jsonl",
                "test": "pku-saferlhf/pku_seferlhf_realign_dpo_5k.json.gz",
            },
            note="locally: the test split is 5,135 PKU-SafeRLHF pairs where exactly one response is safe "
            "(chosen = the safe one)",
        ),
        DatasetSpec(
            name="alpaca-human-pref",
            title="Alpaca Human Pref",
            hub="tatsu-lab/alpaca_farm:alpaca_human_preference",
            data_format="alpaca-farm",
            group="chat",
            hub_splits={"train": "preference"},
        ),
        DatasetSpec(
            name="chatbot-arena",
            title="Chatbot Arena",
            hub="lmsys/chatbot_arena_conversations",
            data_format="chatbot-arena",
            group="chat",
            hub_splits={"train": "train"},
            local={"train": "arena-human-preference-55k/lmsys_lmsys-arena-human-preference-55k_sample.jsonl"},
            note="locally: the arena-human-preference-55k sample stands in for the 33k conversations",
        ),
        DatasetSpec(
            name="reward-bench",
            title="RewardBench",
            hub="allenai/reward-bench",
            data_format="reward-bench",
            group=None,
            hub_splits={"test": "filtered"},
            local={"test": "reward-bench/reward_bench_format_sample.jsonl"},
        ),
    ]
}

PAPER_DATASETS = ["beaver-safe", "hh-harmless", "alpaca-human-pref", "chatbot-arena", "hh-helpful"]


def group_members(name: str) -> list[str]:
    """The other data sets of the same paper group (the internal out-of-distribution tests)."""
    group = CATALOG[name].group
    return [other for other in PAPER_DATASETS if other != name and CATALOG[other].group == group]


def load_named(
    name: str, split: str, data_root: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> tuple[list[dict], SkipReport]:
    """Pairs of a catalogued data set's split: local files when data_root has them, else the hub.

    Where the source has no test split, train and test are the seeded 90% / 10% split of its train split.
    """
    if name not in CATALOG:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(CATALOG)}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    spec = CATALOG[name]
    local_files = {
        s: Path(data_root) / p for s, p in spec.local.items() if data_root and (Path(data_root) / p).exists()
    }

    def read(source_split: str) -> tuple[list[dict], SkipReport]:
        if local_files:
            if source_split not in local_files:
                raise DataError(f"{name}: no {source_split} file under {data_root}")
            if spec.note:
                logger.info("%s %s: %s", name, source_split, spec.note)  # where a local copy differs from the hub's
            return load_pairs(str(local_files[source_split]))  # local copies may use another schema (detected)
        if source_split not in spec.hub_splits:
            raise DataError(f"{name}: no {source_split} split on the hub ({spec.hub})")
        return load_pairs(spec.hub, spec.data_format, split=spec.hub_splits[source_split], hub_kwargs=spec.hub_kwargs)

    available = local_files if local_files else spec.hub_splits
    if "test" not in available and "train" in available:
        everything, report = read("train")
        train, test = train_test_split(everything, 0.1, seed)
        pairs = train if split == "train" else test
    else:
        pairs, report = read(split)
    return (pairs[:limit] if limit is not None else pairs), report


def mixed(
    names: list[str], split: str, per_dataset: int, data_root: str | Path | None = None, seed: int = 0
) -> list[dict]:
    """An evenly mixed data set: the same number of pairs from each, shuffled with the seed."""
    pairs: list[dict] = []
    for name in names:
        part, _ = load_named(name, split, data_root, seed=seed)
        if len(part) < per_dataset:
            raise DataError(f"{name}: only {len(part)} {split} pairs, {per_dataset} asked for an even mix")
        pairs += [{**p, "source": name} for p in random.Random(seed).sample(part, per_dataset)]
    random.Random(seed).shuffle(pairs)
    return pairs

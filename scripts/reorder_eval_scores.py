"""Put the per-pair eval scores of claim runs kept before hafrm's order fix back in their test sets' order.

Why: with group_by_length (the default), transformers' Trainer evaluates through a LengthGroupedSampler seeded by the
run's seed, and hafrm used to keep the predictions in the order that sampler took the pairs. Each run's accuracies
were right, and so were comparisons between runs of one seed (they share the order), but pairing runs of different
seeds, or scores with the test pairs (the length split), matched unrelated pairs. The sampler's order is a pure
function of the pairs' token lengths, the eval batch size and the seed, so it can be rebuilt here without a model and
undone. A run is rewritten in place, then marked in its done.json (`hafrm.experiments.runs.SCORES_IN_ORDER`) so
that reports read it and a second pass leaves it alone.

    python scripts/reorder_eval_scores.py --data-root ../shared/data docs/report/claim-*/runs/*

The check that it worked: runs of different seeds agree on their scores once reordered (chosen-reward correlation
near 1 instead of near 0), and a kept model scored pair by pair in the test set's order gives the reordered scores.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from hafrm.data import PairEncoder, load_pairs
from hafrm.data.catalog import load_named
from hafrm.data.encoding import encode_pairs
from hafrm.eval.evaluation import PairScores
from hafrm.experiments.curves import CLAIM_SETS, claim_split
from hafrm.experiments.runs import DONE_FILE, SCORES_IN_ORDER
from hafrm.io.pretrained import load_tokenizer, resolve_model_path


@functools.cache
def test_set(name: str, data_root: str) -> list[dict]:
    """A claim run's test set, as `hafrm.experiments.curves.evaluation_sets` built it."""
    if name in CLAIM_SETS:
        return claim_split(name, data_root)[1]
    return load_named(name, "test", data_root)[0]


@functools.cache
def token_lengths(name: str, data_root: str, model: str | None, max_length: int) -> tuple[int, ...]:
    """Each test pair's "length" column, the one the Trainer's sampler grouped by."""
    encoder = PairEncoder(load_tokenizer(resolve_model_path(model)), max_length)
    pairs, report = load_pairs(test_set(name, data_root), split="test", name=name)
    return tuple(encode_pairs(pairs, encoder, report)["length"])


def sampler_order(lengths: tuple[int, ...], eval_batch_size: int, seed: int) -> np.ndarray:
    """The positions in the test set of the pairs in the order the Trainer evaluated them (its _get_eval_sampler)."""
    generator = torch.Generator().manual_seed(seed)
    return np.asarray(get_length_grouped_indices(list(lengths), eval_batch_size, generator=generator))


def back_in_order(evaluated: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Values in evaluation order moved to their pairs' places: the i-th one evaluated belongs to pair order[i]."""
    placed = np.empty_like(evaluated)
    placed[order] = evaluated
    return placed


def reorder_run(folder: Path, data_root: str) -> str:
    """Rewrite one run's kept scores in test-set order and mark its done.json; says what it did."""
    record = json.loads((folder / DONE_FILE).read_text())
    config = record["config"]
    if SCORES_IN_ORDER.items() <= record.items():
        return "already in test-set order"
    if not config.get("group_by_length", True):
        record.update(SCORES_IN_ORDER)  # a sequential sampler: the order was right all along
        (folder / DONE_FILE).write_text(json.dumps(record, indent=2))
        return "evaluated in order (group_by_length off); marked"
    orders = {}
    for name, count in record["test_pairs"].items():
        lengths = token_lengths(name, data_root, config["model"], config["max_length"])
        if len(lengths) != count:
            raise ValueError(f"{folder}: {name} has {len(lengths)} pairs here, the run had {count}")
        orders[name] = sampler_order(lengths, config["micro_batch_size"], config["seed"])
    files = sorted((folder / "model" / "eval-scores").glob("step-*.npz"))
    for path in files:
        name = path.stem.removeprefix("step-").partition("-")[2]
        order, kept = orders[name], PairScores.load(path)
        if len(kept.chosen_rewards) != len(order):
            raise ValueError(f"{path}: {len(kept.chosen_rewards)} scores for {len(order)} test pairs")
        in_order = {array: back_in_order(getattr(kept, array), order) for array in PairScores.ARRAYS}
        subsets = list(back_in_order(np.asarray(kept.subsets, dtype=object), order)) if kept.subsets else []
        PairScores(**in_order, subsets=subsets).save(path)
    record.update(SCORES_IN_ORDER)
    (folder / DONE_FILE).write_text(json.dumps(record, indent=2))
    return f"put {len(files)} score file(s) in test-set order"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="the folder the runs' data came from (../shared/data)")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>, each with a done.json)")
    args = parser.parse_args()
    for folder in args.runs:
        print(f"{folder}: {reorder_run(folder, args.data_root)}", flush=True)


if __name__ == "__main__":
    main()

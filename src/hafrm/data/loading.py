"""Load preference pairs from any supported source into canonical pairs, with a skip report."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import random
from collections.abc import Iterator

from hafrm.data.errors import DataError, SkipReport
from hafrm.data.formats import ADAPTERS, PREFERENCE_COLUMNS, SkipRow, as_messages, detect_format, rename_columns
from hafrm.data.llamafactory import RegistrySelection, registry_streams
from hafrm.data.reading import read_sources

logger = logging.getLogger(__name__)


def load_pairs(
    source,
    data_format: str = "auto",
    column_map: dict[str, str] | None = None,
    split: str = "train",
    on_error: str = "error",
    limit: int | None = None,
    hub_kwargs: dict | None = None,
    name: str = "rows",
) -> tuple[list[dict], SkipReport]:
    """Read `source` and convert each row; unusable rows are skipped and counted, broken rows raise DataError.

    source: a file, folder or hub name, LLaMA-Factory registered sets (`llamafactory.RegistrySelection`), or rows in
    memory (a datasets.Dataset or a list of dicts, in any schema a file may have; errors name them `name row N`).
    on_error="skip" counts schema errors (malformed JSON, missing columns, wrong types) instead of raising.
    """
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    if data_format != "auto" and data_format not in ADAPTERS:
        raise DataError(f"unknown data format {data_format!r}; known: auto, {', '.join(sorted(ADAPTERS))}")
    report = SkipReport()
    pairs: list[dict] = []
    chosen_adapter = None if data_format == "auto" else ADAPTERS[data_format]
    if isinstance(source, RegistrySelection):  # each registered set is read by its entry's rules
        streams = registry_streams(source, functools.partial(read_sources, on_error=on_error, report=report))
    elif isinstance(source, (str, os.PathLike)):
        files = read_sources(str(source), split=split, on_error=on_error, report=report, hub_kwargs=hub_kwargs)
        streams = ((rows, chosen_adapter) for rows in files)
    else:
        streams = [(((f"{name} row {index}", dict(row)) for index, row in enumerate(source, start=1)), chosen_adapter)]
        source = name
    for rows, adapter in streams:
        remaining = None if limit is None else limit - len(pairs)
        if remaining == 0:
            break
        pairs += itertools.islice(_pairs_of_rows(rows, adapter, column_map, report, on_error), remaining)
    report.rows_used = len(pairs)
    if report.rows_skipped:
        logger.warning("%s: %s", source, report.summary())
    if not pairs:
        raise DataError(f"{source}: no usable preference pairs ({report.summary()})")
    return pairs, report


def load_prompts(
    source, data_format: str = "auto", split: str = "train", on_error: str = "error", limit: int | None = None
) -> tuple[list[list[dict]], SkipReport]:
    """The distinct prompts of `source`, as chat messages in first-seen order (at most `limit`): of prompt-only rows
    (a `prompt` column of text or messages and no response, as TRL's prompt-only data sets), or of preference pairs
    in any format `load_pairs` reads."""
    report = SkipReport()
    prompts: dict[str, list[dict]] = {}
    for rows in read_sources(str(source), split=split, on_error=on_error, report=report):
        rows = list(rows)
        if data_format == "auto" and rows and is_prompt_only(rows[0][1]):
            found = [as_messages(row["prompt"], where) for where, row in rows]
            report.rows_read += len(rows)
        else:
            adapter = None if data_format == "auto" else ADAPTERS[data_format]
            found = [pair["prompt"] for pair in _pairs_of_rows(iter(rows), adapter, None, report, on_error)]
        for messages in found:
            prompts.setdefault(json.dumps(messages, sort_keys=True), messages)
    chosen = list(prompts.values())[:limit]
    report.rows_used = len(chosen)
    if not chosen:
        raise DataError(f"{source}: no prompts ({report.summary()})")
    return chosen, report


def is_prompt_only(row: dict) -> bool:
    """A row with a prompt and none of the other columns of a preference schema."""
    return "prompt" in row and not any(column in row for column in PREFERENCE_COLUMNS)


def _pairs_of_rows(
    rows, adapter, column_map: dict[str, str] | None, report: SkipReport, on_error: str
) -> Iterator[dict]:
    """The pairs of one file's rows, each read row counted as used or skipped in the report.

    With no adapter the format is detected from the file's first row, per file: a folder may mix schemas.
    """
    for where, row in rows:
        report.rows_read += 1
        row = rename_columns(row, column_map)
        try:
            adapter = adapter or ADAPTERS[detect_format(row, where)]
            pair = adapter(row, where)
        except SkipRow as reason:
            report.skip(str(reason), where)
            continue
        except DataError as error:
            if on_error == "error":
                raise
            report.skip(str(error).removeprefix(f"{where}: ").split(" (")[0], where)
            continue
        yield pair


def train_test_split(pairs: list[dict], test_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded split for data sets that ship without a test split (the paper does this for AHP and CA)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(pairs) * test_fraction))
    test_index = set(order[:n_test])
    return [p for i, p in enumerate(pairs) if i not in test_index], [pairs[i] for i in sorted(test_index)]

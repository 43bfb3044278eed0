"""Load preference pairs from any supported source into canonical pairs, with a skip report."""

from __future__ import annotations

import logging
import random

from hafrm.data.errors import DataError, SkipReport
from hafrm.data.formats import ADAPTERS, SkipRow, detect_format, rename_columns
from hafrm.data.reading import read_rows

logger = logging.getLogger(__name__)


def load_pairs(
    source: str,
    data_format: str = "auto",
    column_map: dict[str, str] | None = None,
    split: str = "train",
    on_error: str = "error",
    limit: int | None = None,
    hub_kwargs: dict | None = None,
) -> tuple[list[dict], SkipReport]:
    """Read `source` and convert each row; unusable rows are skipped and counted, broken rows raise DataError.

    on_error="skip" counts schema errors (malformed JSON, missing columns, wrong types) instead of raising.
    """
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    if data_format != "auto" and data_format not in ADAPTERS:
        raise DataError(f"unknown data format {data_format!r}; known: auto, {', '.join(sorted(ADAPTERS))}")
    report = SkipReport()
    pairs: list[dict] = []
    adapter = None if data_format == "auto" else ADAPTERS[data_format]
    for where, row in read_rows(source, split=split, on_error=on_error, report=report, hub_kwargs=hub_kwargs):
        if limit is not None and len(pairs) >= limit:
            break
        report.rows_read += 1
        row = rename_columns(row, column_map)
        try:
            adapter = adapter or ADAPTERS[detect_format(row, where)]
            pairs.append(adapter(row, where))
        except SkipRow as reason:
            report.skip(str(reason), where)
        except DataError as error:
            if on_error == "error":
                raise
            report.skip(str(error).removeprefix(f"{where}: ").split(" (")[0], where)
    report.rows_used = len(pairs)
    if report.rows_skipped:
        logger.warning("%s: %s", source, report.summary())
    if not pairs:
        raise DataError(f"{source}: no usable preference pairs ({report.summary()})")
    return pairs, report


def train_test_split(pairs: list[dict], test_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded split for data sets that ship without a test split (the paper does this for AHP and CA)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(pairs) * test_fraction))
    test_index = set(order[:n_test])
    return [p for i, p in enumerate(pairs) if i not in test_index], [pairs[i] for i in sorted(test_index)]

"""Read raw rows from local files (JSONL/JSON/Parquet/CSV, optionally gzipped) or the Hugging Face hub.

Each row comes with a location string ("file:line") so that every later error can name it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from hafrm.data.errors import DataError, SkipReport

Row = tuple[str, dict]


def read_rows(
    source: str,
    split: str = "train",
    on_error: str = "error",
    report: SkipReport | None = None,
    hub_kwargs: dict | None = None,
) -> Iterator[Row]:
    """Yield (location, row) from a local file or folder, or from a hub dataset name `owner/name[:config]`.

    hub_kwargs go to `datasets.load_dataset` (e.g. data_dir="harmless-base" for Anthropic/hh-rlhf).
    """
    for rows in read_sources(source, split, on_error, report, hub_kwargs):
        yield from rows


def read_sources(
    source: str,
    split: str = "train",
    on_error: str = "error",
    report: SkipReport | None = None,
    hub_kwargs: dict | None = None,
) -> Iterator[Iterator[Row]]:
    """The rows of each file of `source` (one file, a folder's files, or a hub split) as a separate stream,
    so that callers can tell each file's schema apart: one folder may mix formats."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_data_file(p))
        if not files:
            raise DataError(f"{source}: no .jsonl/.json/.parquet/.csv files in this folder")
        for file in files:
            yield _read_file(file, on_error, report)
    elif path.exists():
        yield _read_file(path, on_error, report)
    elif _looks_local(source):
        raise DataError(f"{source}: no such file")
    else:
        yield _read_hub(source, split, hub_kwargs or {})


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or any(source.endswith(s) for s in _SUFFIXES)


_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gz")


def _is_data_file(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in _SUFFIXES)


def _read_file(path: Path, on_error: str, report: SkipReport | None) -> Iterator[Row]:
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        yield from _read_jsonl(path, on_error, report)
    elif name.endswith(".json"):
        yield from _read_json_array(path)
    elif name.endswith((".parquet", ".csv")):
        yield from _read_tabular(path, "parquet" if name.endswith(".parquet") else "csv")
    else:
        raise DataError(f"{path}: unknown file type (expected .jsonl, .json, .parquet or .csv, optionally .gz)")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _bad_row(message: str, where: str, on_error: str, report: SkipReport | None) -> None:
    """Raise a DataError, or count the row as skipped when the user asked to skip bad rows."""
    if on_error != "skip" or report is None:
        raise DataError(f"{where}: {message}")
    report.rows_read += 1
    report.skip(message.split(":")[0], where)


@contextlib.contextmanager
def _file_errors(path: Path):
    """An error of the file itself (a truncated or corrupt gzip stream, an unreadable file) is one DataError naming
    the file, whatever on_error says: skipping rows cannot make a cut-off file whole."""
    try:
        yield
    except EOFError as error:
        raise DataError(f"{path}: the file is truncated (its compressed stream ends early: {error})") from None
    except (OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read: {' '.join(str(error).split())}") from None


def _read_jsonl(path: Path, on_error: str, report: SkipReport | None) -> Iterator[Row]:
    with _file_errors(path), _open_bytes(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                _bad_row("not valid UTF-8", where, on_error, report)
                continue
            except json.JSONDecodeError as error:
                _bad_row(f"malformed JSON: {error.msg} at column {error.colno}", where, on_error, report)
                continue
            if not isinstance(row, dict):
                _bad_row(f"not a JSON object: expected {{...}}, got {type(row).__name__}", where, on_error, report)
                continue
            yield where, row


def _read_json_array(path: Path) -> Iterator[Row]:
    with _file_errors(path), _open_bytes(path) as handle:
        try:
            data = json.loads(handle.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a valid UTF-8 JSON document ({error})") from error
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects")
    for index, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {index}: expected an object, got {type(row).__name__}")
        yield f"{path}:item {index}", row


def _read_tabular(path: Path, kind: str) -> Iterator[Row]:
    import datasets

    try:
        with _quiet_datasets():
            table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as error:  # DatasetGenerationError wrapping a decoding, quoting or Arrow error
        raise DataError(f"{path}: cannot read this {kind.upper()} file: {_tabular_cause(error)}") from error
    offset = 2 if kind == "csv" else 1  # CSV line 1 is the header
    for index, row in enumerate(table):
        yield f"{path}:{'line' if kind == 'csv' else 'row'} {index + offset}", row


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bar for one local file, and no log of a read error that is re-raised as one DataError line."""
    import datasets

    bars_were_off, verbosity = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _tabular_cause(error: BaseException) -> str:
    """One line for why pandas/Arrow could not read a file: the error that `datasets` wrapped."""
    chain = [error]
    while (chain[-1].__cause__ is not None or chain[-1].__context__ is not None) and len(chain) < 8:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    decoding = next((e for e in chain if isinstance(e, UnicodeDecodeError)), None)
    if decoding is not None:
        return f"not valid UTF-8 ({decoding.reason}); save it as UTF-8"
    cause = chain[1] if len(chain) > 1 else chain[0]
    return " ".join(str(cause).split()) or type(cause).__name__


def _read_hub(source: str, split: str, hub_kwargs: dict) -> Iterator[Row]:
    """Load `owner/name` or `owner/name:config` with `datasets` (needs network access or a local HF cache)."""
    import datasets

    name, _, config = source.partition(":")
    try:
        table = datasets.load_dataset(name, config or None, split=split, **hub_kwargs)
    except Exception as error:  # datasets raises many types for an unreachable or unknown dataset
        raise DataError(
            f"{source}: not a local file, and loading it from the Hugging Face hub failed: {error}"
        ) from error
    for index, row in enumerate(table):
        yield f"{source}[{split}]:row {index + 1}", row

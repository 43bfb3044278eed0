"""LLaMA-Factory's dataset registry: the preference sets named in a `dataset_info.json`, read as hafrm's pairs.

LLaMA-Factory users name their data as `dataset: a,b` and `dataset_dir: DIR`; DIR/dataset_info.json describes each
set: where it is (`file_name` in DIR, or `hf_hub_url` with `subset` and `split`), its `formatting` (alpaca or
sharegpt), `ranking: true` for preference pairs, a `columns` map and, for sharegpt, the message `tags`. The rules
follow LLaMA-Factory's data/parser.py (given `columns` or `tags`, a column or tag it leaves out is unset, not its
default) and data/converter.py (alpaca: history turns, then `instruction\\ninput` as the user turn, chosen and
rejected strings; sharegpt: user and assistant turns alternating, the prompt ending with a user turn, chosen and
rejected one message each). Where LLaMA-Factory skips a malformed row with a warning, hafrm follows `on_bad_row`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hafrm.data.errors import DataError
from hafrm.data.formats import Messages, pair, require

REGISTRY_FILE = "dataset_info.json"

# LLaMA-Factory's defaults (DatasetAttr), used where an entry has no `columns` / `tags` mapping at all.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_COLUMNS = {"messages": "conversations"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass(frozen=True)
class RegisteredSet:
    """One `dataset_info.json` entry: where its rows are and how a row becomes a pair."""

    name: str
    source: str  # a file or folder path, or a hub name `owner/name[:subset]`
    split: str
    formatting: str
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    hub_kwargs: dict = field(default_factory=dict)  # LLaMA-Factory's folder and revision, for a hub set

    def adapter(self) -> Callable[[dict, str], dict]:
        if self.formatting == "alpaca":
            return functools.partial(alpaca_pair, columns=self.columns)
        return functools.partial(sharegpt_pair, columns=self.columns, tags=self.tags)


@dataclass(frozen=True)
class RegistrySelection:
    """`dataset` names in `dataset_dir`'s registry: a source `load_pairs` reads, each set with its own adapter."""

    dataset_dir: str
    names: tuple[str, ...]

    def __str__(self) -> str:
        return f"{', '.join(self.names)} ({Path(self.dataset_dir) / REGISTRY_FILE})"

    def sets(self) -> list[RegisteredSet]:
        registry = read_registry(self.dataset_dir)
        return [registered_set(self.dataset_dir, name, registry) for name in self.names]


def selection(dataset_dir: str, names: str | list[str]) -> RegistrySelection:
    """LLaMA-Factory's `dataset` value (comma-separated names or a list) in `dataset_dir`."""
    listed = names.split(",") if isinstance(names, str) else names
    return RegistrySelection(dataset_dir, tuple(name.strip() for name in listed if name.strip()))


def read_registry(dataset_dir: str) -> dict:
    path = Path(dataset_dir) / REGISTRY_FILE
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (dataset_dir holds LLaMA-Factory's {REGISTRY_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON registry ({error})") from None
    if not isinstance(registry, dict):
        raise DataError(f"{path}: expected a mapping of data set names to descriptions")
    return registry


def registered_set(dataset_dir: str, name: str, registry: dict) -> RegisteredSet:
    """The entry `name`, checked: a preference set (`ranking: true`), alpaca or sharegpt, in a file or on the hub."""
    where = f"{Path(dataset_dir) / REGISTRY_FILE}: {name}"
    if name not in registry:
        raise DataError(f"{where}: not in the registry (it has {', '.join(sorted(registry)) or 'no sets'})")
    entry = registry[name]
    if not entry.get("ranking", False):
        raise DataError(f"{where}: not a preference set (ranking is not true); hafrm trains on chosen/rejected pairs")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(
            f"{where}: formatting {formatting!r}; hafrm reads alpaca and sharegpt (the OpenAI message style is "
            "sharegpt with role/content tags)"
        )
    if "num_samples" in entry:
        raise DataError(f"{where}: num_samples draws an unseeded sample in LLaMA-Factory; use max_samples")
    hub_kwargs = {k: v for k, v in (("data_dir", entry.get("folder")), ("revision", entry.get("revision"))) if v}
    if "hf_hub_url" in entry:  # LLaMA-Factory's first choice, unless ModelScope is switched on
        subset = entry.get("subset")
        source = entry["hf_hub_url"] + (f":{subset}" if subset else "")
    elif "file_name" in entry and not ({"ms_hub_url", "script_url"} & set(entry)):
        source = str(Path(dataset_dir) / entry["file_name"])
    else:
        raise DataError(f"{where}: hafrm reads a file_name or an hf_hub_url (not a ModelScope hub or a script)")
    defaults = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    columns = entry["columns"] if "columns" in entry else dict(defaults)
    for unread in ("images", "videos", "audios", "tools"):
        if columns.get(unread):
            raise DataError(f"{where}: a {unread} column; hafrm trains text-only reward models without tool use")
    if not (columns.get("chosen") and columns.get("rejected")):
        raise DataError(f"{where}: its columns name no chosen and rejected column")
    tags = entry["tags"] if "tags" in entry else dict(SHAREGPT_TAGS)
    return RegisteredSet(name, source, entry.get("split", "train"), formatting, columns, tags, hub_kwargs)


def _text(row: dict, column: str | None, where: str) -> str:
    value = row.get(column) if column else None
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    return value or ""


def alpaca_pair(row: dict, where: str, columns: dict) -> dict:
    """history turns, then the user turn `prompt\\nquery` (empty parts left out); chosen and rejected strings."""
    chosen_column, rejected_column = columns["chosen"], columns["rejected"]
    require(row, (chosen_column, rejected_column), where)
    prompt: Messages = []
    system = _text(row, columns.get("system"), where)
    if system:
        prompt.append({"role": "system", "content": system})
    history = row.get(columns["history"]) if columns.get("history") else None
    for turn in history or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise DataError(f"{where}: each history item must be a [prompt, response] pair of strings")
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    query = [text for text in (_text(row, columns.get(c), where) for c in ("prompt", "query")) if text]
    prompt.append({"role": "user", "content": "\n".join(query)})
    return pair(prompt, _text(row, chosen_column, where), _text(row, rejected_column, where))


def sharegpt_pair(row: dict, where: str, columns: dict, tags: dict) -> dict:
    """messages alternating user and assistant (a first system message, or the system column, before them), ending
    with a user turn; chosen and rejected each one assistant message."""
    role_tag, content_tag = tags.get("role_tag"), tags.get("content_tag")
    roles = {tags.get("user_tag"): "user", tags.get("assistant_tag"): "assistant"}
    messages_column = columns.get("messages")
    require(row, tuple(c for c in (messages_column, columns.get("chosen"), columns.get("rejected")) if c), where)
    messages = row[messages_column]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{where}: column {messages_column!r} must be a list of messages")

    def turn(message: dict, expected: str, what: str) -> dict:
        role = roles.get(message.get(role_tag))
        if role != expected:
            tools = {tags.get("observation_tag"), tags.get("function_tag")} - {None}
            kind = "tool turns are not read by hafrm" if message.get(role_tag) in tools else f"expected {expected}"
            raise DataError(f"{where}: {what} has role {message.get(role_tag)!r} ({kind})")
        content = message.get(content_tag)
        if not isinstance(content, str):
            raise DataError(f"{where}: {what} has no text under {content_tag!r}")
        return {"role": role, "content": content}

    prompt: Messages = []
    if messages and tags.get("system_tag") and messages[0].get(role_tag) == tags["system_tag"]:
        if messages[0].get(content_tag):  # an empty one is no system prompt, as in LLaMA-Factory
            prompt.append({"role": "system", "content": str(messages[0][content_tag])})
        messages = messages[1:]
    elif _text(row, columns.get("system"), where):
        prompt.append({"role": "system", "content": _text(row, columns.get("system"), where)})
    if len(messages) % 2 == 0:
        raise DataError(f"{where}: a preference row's messages must end with a user turn (found {len(messages)})")
    prompt += [turn(m, ("user", "assistant")[i % 2], f"message {i + 1}") for i, m in enumerate(messages)]
    responses = []
    for side in ("chosen", "rejected"):
        message = row[columns[side]]
        if not isinstance(message, dict):
            raise DataError(f"{where}: column {columns[side]!r} must be one message")
        responses.append(turn(message, "assistant", side)["content"])
    return pair(prompt, *responses)


def registry_streams(selection: RegistrySelection, read_sources) -> Iterator[tuple[Iterator, Callable]]:
    """(rows, adapter) for each file of each selected set; `read_sources` is data.reading's, with its options."""
    for registered in selection.sets():
        for rows in read_sources(registered.source, split=registered.split, hub_kwargs=registered.hub_kwargs):
            yield rows, registered.adapter()

"""Adapters from public preference-data schemas to one canonical pair.

Canonical pair: {"prompt": [chat messages], "chosen": str, "rejected": str} plus optional "margin"
(float, for a margin-aware Bradley-Terry loss) and "subset" (RewardBench section bookkeeping).
An adapter raises `SkipRow(reason)` for rows that are valid data but not a usable pair (ties,
identical or empty responses) and `DataError` for rows that do not fit the schema at all.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from hafrm.data.errors import DataError

Messages = list[dict[str, str]]


class SkipRow(Exception):
    """A row that is read correctly but cannot be a training pair; the message is the reason."""


# ---------------------------------------------------------------- helpers shared by the adapters

_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_dialogue(text: str) -> Messages:
    """Split an Anthropic HH dialogue ("\\n\\nHuman: ..\\n\\nAssistant: ..") into chat messages."""
    pieces = _TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise SkipRow("not an HH dialogue (no Human/Assistant turns)")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": content.strip()} for speaker, content in zip(pieces[1::2], pieces[2::2])
    ]


def split_last_assistant_turn(chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """Two full conversations that share all turns before the last assistant turn -> (prompt, chosen, rejected)."""
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise SkipRow("conversation does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise SkipRow("chosen and rejected differ before the last assistant turn")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def as_messages(prompt: object, where: str) -> Messages:
    """A prompt given as a string or as chat messages, as chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise DataError(
        f"{where}: 'prompt' must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}"
    )


def as_response(value: object, column: str, where: str) -> str:
    """A response given as a string or as a one-message assistant list, as a string."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content")
    if value is None:
        raise SkipRow("empty response")
    if not isinstance(value, str):
        raise DataError(
            f"{where}: column '{column}' must be a string or one assistant message, got {type(value).__name__}"
        )
    return value


def require(row: dict, columns: tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        found = ", ".join(sorted(map(str, row))) or "none"
        raise DataError(f"{where}: missing column(s) {', '.join(repr(c) for c in missing)} (found: {found})")


def pair(prompt: Messages, chosen: str, rejected: str, **extra) -> dict:
    """Build the canonical pair, refusing empty and identical responses."""
    if not chosen.strip() or not rejected.strip():
        raise SkipRow("empty response")
    if chosen == rejected:
        raise SkipRow("chosen identical to rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


# ---------------------------------------------------------------- one adapter per schema


def canonical(row: dict, where: str) -> dict:
    """prompt/chosen/rejected (strings or TRL conversational messages); optional margin and subset."""
    require(row, ("prompt", "chosen", "rejected"), where)
    extra = {}
    if row.get("margin") is not None:
        try:
            extra["margin"] = float(row["margin"])
        except (TypeError, ValueError) as error:
            raise DataError(f"{where}: 'margin' must be a number, got {row['margin']!r}") from error
        if not math.isfinite(extra["margin"]):
            raise DataError(f"{where}: 'margin' must be a finite number, got {row['margin']!r}")
    if row.get("subset") is not None:
        extra["subset"] = str(row["subset"])
    prompt = as_messages(row["prompt"], where)
    return pair(
        prompt, as_response(row["chosen"], "chosen", where), as_response(row["rejected"], "rejected", where), **extra
    )


def implicit_prompt(row: dict, where: str) -> dict:
    """chosen/rejected full conversations (Anthropic HH text, or message lists) sharing the prompt."""
    require(row, ("chosen", "rejected"), where)
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        chosen, rejected = parse_hh_dialogue(chosen), parse_hh_dialogue(rejected)
    elif not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be dialogue strings or message lists")
    chosen, rejected = as_messages(chosen, where), as_messages(rejected, where)
    return pair(*split_last_assistant_turn(chosen, rejected))


def pku_saferlhf(row: dict, where: str, preference: str = "safer_response_id") -> dict:
    """PKU-SafeRLHF / BeaverTails: chosen is response_{safer_response_id} ("Beaver Safe")."""
    require(row, ("prompt", "response_0", "response_1", preference), where)
    winner = row[preference]
    if winner not in (0, 1):
        raise DataError(f"{where}: '{preference}' must be 0 or 1, got {winner!r}")
    responses = [
        as_response(row["response_0"], "response_0", where),
        as_response(row["response_1"], "response_1", where),
    ]
    return pair(as_messages(row["prompt"], where), responses[winner], responses[1 - winner])


def pku_pair_list(row: dict, where: str) -> dict:
    """The derived PKU-SafeRLHF form {"prompt", "response": [safer, less safe]}."""
    require(row, ("prompt", "response"), where)
    responses = row["response"]
    if not isinstance(responses, list) or len(responses) != 2:
        raise DataError(f"{where}: 'response' must be a list [chosen, rejected]")
    return pair(
        as_messages(row["prompt"], where),
        as_response(responses[0], "response[0]", where),
        as_response(responses[1], "response[1]", where),
    )


def alpaca_farm(row: dict, where: str) -> dict:
    """AlpacaFarm human preference: instruction (+ input), output_1/output_2, preference 1 or 2."""
    require(row, ("instruction", "output_1", "output_2", "preference"), where)
    instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    outputs = [as_response(row["output_1"], "output_1", where), as_response(row["output_2"], "output_2", where)]
    if row["preference"] not in (1, 2):
        raise DataError(f"{where}: 'preference' must be 1 or 2, got {row['preference']!r}")
    winner = row["preference"] - 1
    return pair(as_messages(instruction, where), outputs[winner], outputs[1 - winner])


def chatbot_arena(row: dict, where: str) -> dict:
    """lmsys/chatbot_arena_conversations: conversation_a/b and winner; ties and multi-turn rows skipped."""
    require(row, ("conversation_a", "conversation_b", "winner"), where)
    if row["winner"] not in ("model_a", "model_b"):
        raise SkipRow("tie")
    a, b = as_messages(row["conversation_a"], where), as_messages(row["conversation_b"], where)
    if len(a) != 2 or len(b) != 2:
        raise SkipRow("multi-turn arena conversation (earlier assistant turns differ)")
    prompt, response_a, response_b = split_last_assistant_turn(a, b)
    chosen, rejected = (response_a, response_b) if row["winner"] == "model_a" else (response_b, response_a)
    return pair(prompt, chosen, rejected)


def arena_55k(row: dict, where: str) -> dict:
    """lmsys arena-human-preference-55k: JSON-encoded turn lists, winner_model_a/b; ties dropped."""
    require(row, ("prompt", "response_a", "response_b", "winner_model_a", "winner_model_b"), where)
    if row.get("winner_tie") or row["winner_model_a"] == row["winner_model_b"]:
        raise SkipRow("tie")
    try:
        prompts, responses_a, responses_b = (json.loads(row[c]) for c in ("prompt", "response_a", "response_b"))
    except (TypeError, json.JSONDecodeError) as error:
        raise DataError(f"{where}: prompt/response_a/response_b must be JSON-encoded lists of strings") from error
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise DataError(f"{where}: prompt and response turn counts differ")
    if len(prompts) != 1:
        raise SkipRow("multi-turn arena conversation (earlier assistant turns differ)")
    response_a = as_response(responses_a[0], "response_a", where)
    response_b = as_response(responses_b[0], "response_b", where)
    chosen, rejected = (response_a, response_b) if row["winner_model_a"] else (response_b, response_a)
    return pair(as_messages(prompts[0] or "", where), chosen, rejected)


ADAPTERS: dict[str, Callable[[dict, str], dict]] = {
    "canonical": canonical,
    "hh-rlhf": implicit_prompt,
    "implicit-prompt": implicit_prompt,
    "pku-saferlhf": pku_saferlhf,
    "pku-saferlhf-better": lambda row, where: pku_saferlhf(row, where, preference="better_response_id"),
    "pku-pair-list": pku_pair_list,
    "alpaca-farm": alpaca_farm,
    "chatbot-arena": chatbot_arena,
    "arena-55k": arena_55k,
    "reward-bench": canonical,
}

# Schema detection: the first adapter whose columns are all present wins (most specific first).
_SIGNATURES: list[tuple[tuple[str, ...], str]] = [
    (("response_0", "response_1", "safer_response_id"), "pku-saferlhf"),
    (("prompt", "response"), "pku-pair-list"),
    (("output_1", "output_2", "preference"), "alpaca-farm"),
    (("conversation_a", "conversation_b", "winner"), "chatbot-arena"),
    (("response_a", "response_b", "winner_model_a"), "arena-55k"),
    (("prompt", "chosen", "rejected"), "canonical"),
    (("chosen", "rejected"), "implicit-prompt"),
]

# Every column of a preference schema besides the prompt: a row with a prompt and none of these is a prompt-only row.
PREFERENCE_COLUMNS = frozenset(c for columns, _ in _SIGNATURES for c in columns if c != "prompt")


def detect_format(row: dict, where: str) -> str:
    """The first schema whose columns are all present; else the closest one (so its adapter names what is missing)."""
    for columns, name in _SIGNATURES:
        if all(c in row for c in columns):
            return name
    overlap, name = max((sum(c in row for c in columns), name) for columns, name in _SIGNATURES)
    if overlap >= 2:
        return name
    raise DataError(
        f"{where}: cannot tell the data format from the columns ({', '.join(sorted(map(str, row)))}); "
        f"expected prompt/chosen/rejected or one of the formats {', '.join(sorted(ADAPTERS))} (--data-format), "
        "or map your columns with --column-map"
    )


def rename_columns(row: dict, column_map: dict[str, str] | None) -> dict:
    """Apply a user column map {our_name: their_name}, e.g. {"prompt": "question"}."""
    if not column_map:
        return row
    renamed = dict(row)
    for ours, theirs in column_map.items():
        if theirs in renamed:
            renamed[ours] = renamed.pop(theirs)
    return renamed

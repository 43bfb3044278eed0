"""Train/test splits that share no prompt, so a test pair's question was never trained on.

Preference data sets hold several pairs per prompt (PKU-SafeRLHF: 5,135 pairs over 930 prompts); a split by
pair puts the same question on both sides. Pairs are grouped by their first user turn and whole groups go to
one side, chosen by a seeded shuffle.
"""

from __future__ import annotations

import random


def prompt_key(pair: dict) -> str:
    """The first user turn, whitespace- and case-normalised: the question a pair answers."""
    first = next((m["content"] for m in pair["prompt"] if m["role"] == "user"), "")
    return " ".join(first.split()).lower()


def split_by_prompt(pairs: list[dict], test_pairs: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test): whole prompt groups go to test, in seeded order, until it holds at least test_pairs pairs."""
    groups: dict[str, list[dict]] = {}
    for pair in pairs:
        groups.setdefault(prompt_key(pair), []).append(pair)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    train, test = [], []
    for key in keys:
        (test if len(test) < test_pairs else train).extend(groups[key])
    return train, test


def without_prompts_of(pairs: list[dict], held_out: list[dict]) -> list[dict]:
    """The pairs whose question does not occur among the held-out pairs."""
    seen = {prompt_key(p) for p in held_out}
    return [p for p in pairs if prompt_key(p) not in seen]

"""Data errors that name the file and row, and the report of rows that were skipped and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A row or file that cannot be used; the message names the file and the row (1-based line)."""


@dataclass
class SkipReport:
    """Every row read is either used or counted here with the reason it was skipped."""

    rows_read: int = 0
    rows_used: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    truncated: int = 0

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: SkipReport) -> None:
        self.rows_read += other.rows_read
        self.rows_used += other.rows_used
        self.skipped.update(other.skipped)
        self.truncated += other.truncated
        for reason, places in other.examples.items():
            self.examples.setdefault(reason, []).extend(places[: 3 - len(self.examples[reason])])

    def summary(self) -> str:
        parts = [f"{self.rows_used} of {self.rows_read} rows used"]
        parts += [
            f"{n} skipped: {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.skipped.items()
        ]
        if self.truncated:
            parts.append(
                f"{self.truncated} pairs truncated to max_length (prompt cut from the left, response end kept)"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "skipped": dict(self.skipped),
            "truncated": self.truncated,
        }

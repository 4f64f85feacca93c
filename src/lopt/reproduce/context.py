"""What every experiment of a reproduction gets, and what it returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from lopt.reproduce.budget import Budget


@dataclasses.dataclass
class Context:
    """Output folder, budget, and how to talk to the user.

    ``should_stop`` is polled between jitted calls of evaluations (Ctrl-C); meta-training runs
    stop through their own checkpointing interrupt handling.
    """

    out: Path
    budget: Budget
    progress: bool = True
    announce: Callable[[str], None] = print
    should_stop: Callable[[], bool] | None = None

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclasses.dataclass
class Outcome:
    """One experiment's result.

    Attributes:
        results: JSON-ready numbers (written to ``eN/result.json`` and ``results.json``).
        setup: one paragraph on what was run, with its budget.
        table: a markdown table of the main numbers.
        figures: figure paths relative to the output folder.
        claim: one sentence, generated from the numbers, on whether the paper's claim held
            here (including when it did not).
        held: True, False, or None when the claim could not be decided.
    """

    results: dict
    setup: str
    table: str
    figures: list[str]
    claim: str
    held: bool | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def markdown_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)

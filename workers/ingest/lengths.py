"""Length bucketing: segments from many files cut into batches under a padded-seconds budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    id: str
    seconds: float


def by_length(items: list[Item], budget_seconds: float, max_items: int = 512,
              flush: bool = False) -> tuple[list[list[Item]], list[Item]]:
    """Sort by length and cut greedily so that len(batch) * longest <= budget.

    Returns (batches, leftover). Without `flush`, the last, unfilled batch is left over to wait
    for more segments; with it, everything is cut into batches.
    """
    ordered = sorted(items, key=lambda it: it.seconds, reverse=True)
    batches: list[list[Item]] = []
    current: list[Item] = []
    for item in ordered:
        longest = current[0].seconds if current else item.seconds
        if current and ((len(current) + 1) * longest > budget_seconds or len(current) >= max_items):
            batches.append(current)
            current = []
        current.append(item)
    if not current:
        return batches, []
    if flush:
        return batches + [current], []
    return batches, current

"""Which items a run judges, written once: the seeded order, the `--calib-limit` sample and the sequential looks.

Every item of a task has a place in the run's seeded order, sha256(f"{seed}\\0{id}") ascending. The
`--calib-limit` sample is the first `limit` items in that order, and the gate's sequential look of `n` items is the
first `n` of the sample, so a smaller sample or an earlier look is always a subset of a larger one, in any
process and from any source: it depends only on the ids, the seed and the number. Samples keep the items' own
(data set) order.

The gate (`collect.decide_items`) is the only caller that decides a comparison's items; sources, the score
command line and `plan` take their samples from here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from calib_checks.tasks import Item

__all__ = ["FIRST_LOOK", "look_sizes", "sample_ids", "sample_items"]

#: Items per task at the gate's first sequential look (`--calib-first-look`); each later look doubles it.
FIRST_LOOK = 100

_T = TypeVar("_T")


def _sample_key(seed: int, item_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{item_id}".encode()).digest()


def sample_ids(ids: Sequence[str], limit: int | None, seed: int = 0) -> list[str]:
    """The `limit` ids whose sha256(f"{seed}\\0{id}") is smallest, in their given order (every id when `limit` is
    None or >= len(ids)). A smaller limit's sample is a subset of a larger one's."""
    if limit is None or limit >= len(ids):
        return list(ids)
    chosen = sorted(range(len(ids)), key=lambda i: _sample_key(seed, ids[i]))[:limit]
    return [ids[i] for i in sorted(chosen)]


def sample_items(items: Sequence[Item], limit: int | None, seed: int = 0) -> tuple[Item, ...]:
    """The items `sample_ids` chooses among `items`' ids, in their original order.

    MMLU groups are sampled across the pooled items, not stratified by subject (a small sample may miss a
    subject; the pooled metric is what is gated). `limit` None or >= len(items) keeps every item.
    """
    if limit is None or limit >= len(items):
        return tuple(items)
    by_id = {item.id: item for item in items}
    return tuple(by_id[i] for i in sample_ids([item.id for item in items], limit, seed))


def look_sizes(first_look: int, budget: int) -> list[int]:
    """Items per task at each look of a sequential judgement: `first_look`, doubling while below `budget`, then
    `budget` (every item). One look when `budget <= first_look`."""
    sizes, n = [], first_look
    while n < budget:
        sizes.append(n)
        n *= 2
    return [*sizes, budget]

"""Score sources: where one side of a comparison gets its scores, behind one interface.

A side of a gate pair is a text such as ``meta-llama/Meta-Llama-3-8B``, ``scores:runs/llama/base`` or
``lm-eval:out/base``. `sources.registry.open_source` finds the source class by the text's prefix and opens it;
the gate then asks every source the same questions (`Source`) and never branches on what kind it is.

This package's ``__init__`` is the interface only (`Source`, `SourceContext`, `SourceError`, labels) and imports
none of its submodules: every source module imports it (a submodule runs its package's ``__init__`` first), so
an import the other way would be a cycle. The registry of prefixes and `open_source`, which load the sources,
are in `sources.registry`. Adding a source is one file (a `Source` subclass) plus one registry line:
docs/ARCHITECTURE.md, "Adding a score source", walks through examples/csv_source.py, which tests/test_sources.py
runs through the whole gate.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from calib_checks.errors import CalibChecksError

if TYPE_CHECKING:
    from calib_checks.cache import ScoreCache
    from calib_checks.data import TaskData
    from calib_checks.progress import Progress
    from calib_checks.records import TaskScores
    from calib_checks.tasks import TaskSpec

__all__ = ["Source", "SourceContext", "SourceError", "distinct_labels", "safe_label"]

class SourceError(CalibChecksError):
    """A side that cannot be opened or scored as written (one line: what is wrong and what to do)."""


@dataclass(frozen=True)
class SourceContext:
    """What every source of one run shares: the run's options that concern scoring, and its task registry.

    No field says which items to score: the gate decides them and passes them to `Source.scores`. ``tasks`` is the run's task registry (built-in tasks and
    the run's task files); ``cache`` is the score cache that `open_source` gives cacheable sources (None: off);
    ``scorers`` is the run's `engine.ScorerPool`, through which checkpoints that differ only in temperature share
    one loaded model and one forward pass (None: each checkpoint scores alone).
    """

    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    self_check: bool = True  # engine.Scorer's: check each model load's scoring path first
    batch_size: int | Literal["auto"] = "auto"
    trust_remote_code: bool = False
    progress: Progress | bool = False
    data_source: str = "auto"
    tasks: Mapping[str, TaskSpec] = field(default_factory=dict)
    cache: ScoreCache | None = None
    scorers: Any = None  # engine.ScorerPool

    def task(self, name: str) -> TaskSpec:
        """The registered task `name` (SourceError naming the known tasks otherwise)."""
        from calib_checks.tasks import TASKS

        tasks = self.tasks or TASKS
        if name not in tasks:
            raise SourceError(f"unknown task {name!r}; known: {', '.join(tasks)}")
        return tasks[name]


class Source(ABC):
    """One side's scores. Subclasses set `prefix` and implement `label`, `identity` and `scores`.

    The gate's questions, in the order it asks them:

    - `label`: a short, filesystem-safe name (records go under ``records/<label>/``); `label_context` lists the
      enclosing names that `distinct_labels` prepends when two sides would share a label;
    - `identity()`: JSON-able, what the numbers are (weights hash, hub commit, file hashes); two sides with
      equal identities are one model, which the gate refuses to compare with itself. May be slow (hashing): the
      gate asks once, on the controller only;
    - `describe(identity)`: one phrase naming it for messages and the report;
    - `item_ids(task)`: the ids of the items this source holds records of (a source reading files: a scores
      folder, an lm-eval run), in its own order, or None for a source that scores whatever items it is given (a
      checkpoint). The default is the ids of `items(task)`;
    - `items(task)`: the items' texts, when the source holds them (an lm-eval run: the documents it scored),
      else None;
    - `scores(task, data, ids)`: the `records.TaskScores` of `task`. The gate decides every item itself
      (`collect.decide_items`): `ids` are exactly the items it judges, and `data` their texts when the run has
      them (always for a source that `needs_items`; its items are then exactly `ids`). The source must return
      a record for EVERY id in `ids`; it may return others, which the gate drops. A source that lacks an asked
      item fails the side's cases with one error naming how many items are missing. It must not sample: the
      `--calib-limit` sample and the looks are the gate's (calib_checks/sampling.py). `ids` None (a library
      caller, never the gate) asks for `data`'s items, or with no `data` for every item the source holds;
    - `close()`: free what the source holds (a model's weights).

    `cacheable` sources compute deterministic scores worth keeping (`open_source` wraps them in
    `sources.cached.CachedSource`); their `cache_inputs()` is everything the numbers depend on besides the items
    (identity, software stack, versions).
    """

    prefix: ClassVar[str] = ""
    needs_items: ClassVar[bool] = False
    cacheable: ClassVar[bool] = False

    def __init__(self, text: str, context: SourceContext) -> None:
        self.text = text
        self.context = context

    @property
    def location(self) -> str:
        """The text after the prefix."""
        return self.text[len(self.prefix):]

    @property
    @abstractmethod
    def label(self) -> str: ...

    @property
    def label_context(self) -> tuple[str, ...]:
        """Names to disambiguate the label with, nearest first (default: the location's parent folders)."""
        parts = Path(self.location.partition("?")[0]).parts[:-1]
        return tuple(safe_label(p) for p in reversed(parts) if p not in ("/", ".", ".."))

    @abstractmethod
    def identity(self) -> dict[str, Any]: ...

    def describe(self, identity: Mapping[str, Any]) -> str:
        return f"{self.text} ({identity.get('name', self.location)})"

    def item_ids(self, task: str) -> Sequence[str] | None:
        data = self.items(task)
        return None if data is None else data.item_ids

    def items(self, task: str) -> TaskData | None:
        return None

    @abstractmethod
    def scores(self, task: str, data: TaskData | None, ids: Sequence[str] | None = None) -> TaskScores: ...

    def cache_inputs(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        return None


def safe_label(text: str) -> str:
    """`text` as a filesystem-safe label: letters, digits and ``._@+-``, at most 100 characters."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", text).lstrip("._")[:100] or "model"


def distinct_labels(sources: Iterable[Source]) -> dict[str, str]:
    """Text -> label for each source, made distinct: where labels collide, the colliding sources' labels get their
    enclosing names (`Source.label_context`) prepended, as few as tell them apart (``runs/llama/base`` and
    ``runs/mistral/base`` become ``llama_base`` and ``mistral_base``); sources that nothing tells apart keep their
    label with ``-2``, ``-3``, ... in order. Records are filed under these labels, so they never overwrite each
    other."""
    sources = list(sources)
    labels = {s.text: s.label for s in sources}
    groups: dict[str, list[Source]] = {}
    for source in sources:
        groups.setdefault(source.label, []).append(source)
    for group in (g for g in groups.values() if len(g) > 1):
        for depth in range(1, max(len(s.label_context) for s in group) + 1):
            longer = {s.text: safe_label("_".join([*reversed(s.label_context[:depth]), s.label])) for s in group}
            if len(set(longer.values())) == len(group):
                labels.update(longer)
                break
    used: set[str] = set()
    for source in sources:
        label = candidate = labels[source.text]
        number = 1
        while candidate in used:
            number += 1
            candidate = f"{label}-{number}"
        used.add(candidate)
        labels[source.text] = candidate
    return labels

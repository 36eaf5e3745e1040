"""Every side's scores on every task a run needs: the items decided once per comparison family, scored once per
process, failures remembered, records written.

Items (`decide_items`): the gate alone decides which items each look judges, the same for every side of a
comparison family (a pair, or a chain's checkpoints). Per (family, task) they come from the first side, in family
order, that holds its own records of the task (`Source.item_ids`: a scores folder, an lm-eval run, a third-party
file source), else from the task's data set; then the run's `--calib-limit` sample is drawn among them and each
look takes the first items of it (calib_checks/sampling.py). The items' texts come from that side when it has
them (an lm-eval run's documents), else from the data set when a side must score them (a checkpoint). Every
side's records are restricted to the look's ids; a side lacking one of them fails its cases with one error
naming how many are missing. So an lm-eval run decides the items of its own comparisons only, never another
pair's, and a read-in side is judged on exactly the items of each look.

Workers: under pytest-xdist every worker needs every score (the family correction spans tasks), so `collect_all`
takes this worker's share of the (side, task) jobs first, in rotated order, and then the others, which the score
cache's lock makes it wait for and read: each job is computed once over all workers. The gate closes a source (a
model's weights dropped) once every family it belongs to is judged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from calib_checks.errors import CalibChecksError
from calib_checks.sampling import sample_ids

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.progress import Progress
    from calib_checks.records import TaskScores
    from calib_checks.results import RunWriter
    from calib_checks.selection import Comparison, Selection
    from calib_checks.sources import Source
    from calib_checks.sources.sides import Sides


class GateError(CalibChecksError):
    """A case cannot be judged because a side's scores or a task's items could not be obtained (one line)."""


@dataclass(frozen=True)
class ItemSet:
    """The items one comparison family is judged on for one task: their ids (the `--calib-limit` sample, in the
    deciding side's or the data set's order), their texts where the run has them, and who decided them."""

    task: str
    ids: tuple[str, ...]
    data: TaskData | None
    decided_by: str
    n_available: int
    seed: int

    def look(self, n: int | None) -> ItemSet:
        """The items of a sequential look of `n` items per task (all when `n` is None or covers them)."""
        if n is None or n >= len(self.ids):
            return self
        ids = tuple(sample_ids(self.ids, n, self.seed))
        data = None
        if self.data is not None:
            by_id = {item.id: item for item in self.data.items}
            data = self.data.restricted([by_id[i] for i in ids])
        return replace(self, ids=ids, data=data)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.ids).encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "decided_by": self.decided_by, "n_available": self.n_available,
                "seed": self.seed, "ids": list(self.ids)}


def decide_items(task: str, sides: Sequence[tuple[str, Source]], load: Callable[[], TaskData],
                 limit: int | None, seed: int) -> ItemSet:
    """The items a family's `sides` ((label, source) in family order) are judged on for `task` (module
    docstring); `load()` gives the task's data set, every item. Raises GateError when they cannot be had."""
    holder = None
    for label, source in sides:
        held = source.item_ids(task)
        if held is not None:
            holder = (label, source, list(held))
            break
    needs_texts = any(source.needs_items for _, source in sides)
    if holder is None:
        data = load()
        ids, decided_by, available = sample_ids(data.item_ids, limit, seed), f"the data set ({data.source})", len(data.items)
    else:
        label, source, held = holder
        ids, decided_by, available = sample_ids(held, limit, seed), f"side {label}", len(held)
        data = source.items(task)
        if data is None and needs_texts:
            data = load()
    if not ids:
        raise GateError(f"task {task} has no items ({decided_by}): an empty data set cannot be gated")
    if data is not None:
        by_id = {item.id: item for item in data.items}
        absent = [i for i in ids if i not in by_id]
        if absent:
            raise GateError(f"{len(absent)} of the {len(ids)} items of {task} that {decided_by} holds are not in "
                            f"{data.source} (first {absent[0]!r}), so the other side cannot be scored on them: "
                            "score both sides on the same data (the same --calib-data-source and task version)")
        data = data.restricted([by_id[i] for i in ids])
    return ItemSet(task, tuple(ids), data, decided_by, available, seed)


@dataclass(frozen=True)
class Job:
    """One side's scores on one task, for one comparison family (whose items they are), at one look (the first
    `look` items of the family's sample; None: all)."""

    side: str
    task: str
    family: str
    look: int | None = None


class ScoreCollection:
    """The scores of one process (see the module docstring)."""

    def __init__(self, selection: Selection, sides: Sides, writer: RunWriter, *, worker: int = 0,
                 n_workers: int = 1, progress: Progress | None = None) -> None:
        self.selection = selection
        self.sides = sides
        self.writer = writer
        self.worker, self.n_workers = worker, max(1, n_workers)
        self.progress = progress
        self._items: dict[tuple[str, str], ItemSet] = {}
        self._scores: dict[tuple[str, str, str], TaskScores] = {}  # (side, task, fingerprint of the ids)
        self._failures: dict[tuple[str, str], str] = {}  # (side text or "", task or family:task or "") -> message
        self.events: list[dict[str, Any]] = []  # one per job scored in this process, for results.json

    def _family_sides(self, family: str) -> list[str]:
        texts = [t for c in self.selection.comparisons if c.family == family for t in (c.base, c.aligned)]
        return list(dict.fromkeys(texts))

    def items(self, family: str, task: str) -> ItemSet:
        """The items the family's sides are judged on (`decide_items`), recorded in the run directory;
        GateError when they cannot be had."""
        key = (family, task)
        failure = ("", f"{family}:{task}")
        if failure in self._failures:
            raise GateError(self._failures[failure])
        if key not in self._items:
            from calib_checks.data import load_task

            o = self.selection.options
            sides = [(self.sides[t].label, self.sides[t].source) for t in self._family_sides(family)
                     if self.sides[t].source is not None]
            try:
                chosen = decide_items(task, sides, lambda: load_task(self.selection.tasks[task],
                                                                     source=o.data_source), o.limit, o.seed)
            except CalibChecksError as exc:
                message = str(exc) if isinstance(exc, GateError) else f"items of task {task}: {exc}"
                self._failures[failure] = message
                raise GateError(message) from None
            if chosen.data is not None:
                self.writer.write_items(chosen.data)
            self.writer.write_item_set(family, chosen.to_json())
            self._items[key] = chosen
        return self._items[key]

    def budget(self, family: str, task: str) -> int:
        """How many items the family can be judged on for `task` (0 when they cannot be had: its cases error)."""
        try:
            return len(self.items(family, task).ids)
        except GateError:
            return 0

    def scores(self, side: str, task: str, family: str, look: int | None = None) -> TaskScores:
        """A side's records of exactly the family's items at `look` (None: all of them), in their order:
        computed, from the cache or from its files, once per process. GateError when the side cannot give them."""
        for key in ((side, ""), (side, task)):
            if key in self._failures:
                raise GateError(self._failures[key])
        entry = self.sides[side]
        if entry.source is None:
            self._failures[(side, "")] = f"model {entry.label} cannot be used: {entry.error}"
            raise GateError(self._failures[(side, "")])
        items = self.items(family, task).look(look)
        memo = (side, task, items.fingerprint)  # families and looks on the same items share it
        if memo in self._scores:
            return self._scores[memo]
        start = time.perf_counter()
        try:
            scores = entry.source.scores(task, items.data, items.ids)
        except CalibChecksError as exc:
            from calib_checks.models import ModelLoadError

            # A load failure concerns every task of the side; anything else only this task.
            key = (side, "") if isinstance(exc, ModelLoadError) else (side, task)
            self._failures[key] = f"model {entry.label} on {task}: {exc}"
            raise GateError(self._failures[key]) from None
        by_id = {r.id: r for r in scores.records}
        missing = [i for i in items.ids if i not in by_id]
        if missing:
            # Not remembered: a later look may ask for other items, and this side lacks some of those too.
            raise GateError(f"side {entry.label} lacks {len(missing)} of the {len(items.ids)} items of {task} the "
                            f"comparison judges (first {missing[0]!r}; the items were decided by "
                            f"{items.decided_by}): a side must hold a record of every item its comparisons judge")
        scores = replace(scores, model_label=entry.label, records=[by_id[i] for i in items.ids])
        self.writer.write_records(scores)
        if items.data is None:  # sides that read their own records: the run still records which items it gated
            self.writer.write_record_items(scores)
        if self.progress is not None and scores.stats.read_only:  # no scoring happened: say so, in one line
            self.progress.cached(f"{entry.label} on {task}", len(scores.records), scores.stats.source)
        self.events.append({"model": entry.label, "task": task, "cache": scores.stats.cache,
                            "worker": f"gw{self.worker}" if self.n_workers > 1 else "main",
                            "seconds": round(time.perf_counter() - start, 3), "n_items": len(scores.records),
                            "computed": scores.stats.computed})
        self._scores[memo] = scores
        return scores

    def pair_scores(self, comparison: Comparison, task: str, look: int | None = None
                    ) -> tuple[TaskScores, TaskScores]:
        """Both sides' scores on `task` (GateError for either); `look` as in `scores`."""
        return (self.scores(comparison.base, task, comparison.family, look),
                self.scores(comparison.aligned, task, comparison.family, look))

    def scored_identity(self, side: str) -> dict[str, Any] | None:
        """The identity a side's scores carry (what was actually compared), None before it scored anything."""
        scored = next((s for key, s in self._scores.items() if key[0] == side), None)
        return scored.model_identity if scored is not None else None

    def scored_stack(self, side: str) -> dict[str, Any] | None:
        """The software stack a side's scores were computed with, where known."""
        return next((s.stats.stack for key, s in self._scores.items() if key[0] == side and s.stats.stack), None)

    def scored_self_checks(self, side: str) -> list[dict[str, Any]]:
        """The scoring engine's self-checks behind a side's scores, one per model load (records.SelfCheck)."""
        from calib_checks.records import distinct_self_checks

        engines = [s.stats.engine for key, s in self._scores.items() if key[0] == side and s.stats.engine]
        return [check.to_json() for check in distinct_self_checks(c for e in engines for c in e.self_checks)]

    def collect_all(self, jobs: Iterable[Job]) -> None:
        """Score every job, this worker's share first (module docstring); failures are remembered, not raised."""
        jobs = list(dict.fromkeys(jobs))
        mine = [job for i, job in enumerate(jobs) if i % self.n_workers == self.worker]
        for job in mine + [job for job in jobs if job not in mine]:
            try:
                self.scores(job.side, job.task, job.family, job.look)
            except GateError:
                pass  # remembered in self._failures, or raised again when the case asks

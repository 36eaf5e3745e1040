"""Every side's scores on every task a run needs: gathered once per process, failures remembered, records written.

Items: the sides of one comparison family are judged on the same items. Per (family, task) they come from the
first side whose source decides them (`Source.fixes_items`: an lm-eval run's documents), else from the task's data
set when a side needs items to score (a checkpoint), else from nowhere (sides that read their own records, such as
score folders, are then aligned by item id when judged). So an lm-eval run decides the items of its own
comparisons only, never another pair's.

Workers: under pytest-xdist every worker needs every score (the family correction spans tasks), so `collect_all`
takes this worker's share of the (side, task) jobs first, in rotated order, and then the others, which the score
cache's lock makes it wait for and read: each job is computed once over all workers. The gate closes a source (a
model's weights dropped) once every family it belongs to is judged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from calib_checks.errors import CalibChecksError

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.progress import Progress
    from calib_checks.records import TaskScores
    from calib_checks.results import RunWriter
    from calib_checks.selection import Comparison, Selection
    from calib_checks.sources.sides import Sides


class GateError(CalibChecksError):
    """A case cannot be judged because a side's scores or a task's items could not be obtained (one line)."""


@dataclass(frozen=True)
class Job:
    """One side's scores on one task, for one comparison family (whose items they are), at one look (the first
    `look` items; None: all)."""

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
        self._items: dict[tuple[str, str], TaskData | None] = {}
        self._scores: dict[tuple[str, str, str | None], TaskScores] = {}  # (side, task, items' fingerprint)
        self._failures: dict[tuple[str, str], str] = {}  # (side text or "", task or family:task or "") -> message
        self.events: list[dict[str, Any]] = []  # one per job scored in this process, for results.json

    def _family_sides(self, family: str) -> list[str]:
        texts = [t for c in self.selection.comparisons if c.family == family for t in (c.base, c.aligned)]
        return list(dict.fromkeys(texts))

    def items(self, family: str, task: str) -> TaskData | None:
        """The items the family's sides are scored on (module docstring); GateError when they cannot be had."""
        key = (family, task)
        if ("", f"{family}:{task}") in self._failures:
            raise GateError(self._failures[("", f"{family}:{task}")])
        if key not in self._items:
            sources = [self.sides[t].source for t in self._family_sides(family)]
            usable = [s for s in sources if s is not None]
            fixing = next((s for s in usable if s.fixes_items), None)
            data = None
            try:
                if fixing is not None:
                    data = fixing.items(task)
                elif any(s.needs_items for s in usable):
                    from calib_checks.data import load_task

                    o = self.selection.options
                    data = load_task(self.selection.tasks[task], source=o.data_source, limit=o.limit, seed=o.seed)
            except CalibChecksError as exc:
                self._failures[("", f"{family}:{task}")] = f"data of task {task} cannot be loaded: {exc}"
                raise GateError(self._failures[("", f"{family}:{task}")]) from None
            if data is not None and not data.items:
                self._failures[("", f"{family}:{task}")] = f"task {task} has no items: an empty data set cannot be gated"
                raise GateError(self._failures[("", f"{family}:{task}")])
            if data is not None:
                self.writer.write_items(data)
            self._items[key] = data
        return self._items[key]

    def budget(self, family: str, task: str) -> int:
        """How many items the family can be judged on for `task` (0 when they cannot be had: its cases error)."""
        try:
            data = self.items(family, task)
            if data is not None:
                return len(data.items)
            side = next(t for t in self._family_sides(family) if self.sides[t].source is not None)
            return len(self.scores(side, task, family).records)
        except (GateError, StopIteration):
            return 0

    def scores(self, side: str, task: str, family: str, look: int | None = None) -> TaskScores:
        """A side's scores on a task for a family's items: computed, from the cache or from its files, once.

        `look`: only the first `look` items in the run's seeded order (`data.sample_ids`: the gate's sequential
        looks; every later look holds the earlier ones, and the score cache computes only the new items); None:
        every item.
        """
        for key in ((side, ""), (side, task)):
            if key in self._failures:
                raise GateError(self._failures[key])
        entry = self.sides[side]
        if entry.source is None:
            self._failures[(side, "")] = f"model {entry.label} cannot be used: {entry.error}"
            raise GateError(self._failures[(side, "")])
        data = self.items(family, task)
        if look is not None and data is None:  # sides that read their own records: a sample of them
            from calib_checks.data import sample_ids

            full = self.scores(side, task, family)
            return full.select(sample_ids(full.ids, look, self.selection.options.seed))
        if look is not None and data is not None and look < len(data.items):
            from calib_checks.data import sample_items

            data = data.restricted(sample_items(data.items, look, self.selection.options.seed))
        memo = (side, task, None if data is None else data.fingerprint)  # families on the same items share it
        if memo in self._scores:
            return self._scores[memo]
        start = time.perf_counter()
        try:
            scores = entry.source.scores(task, data)
        except CalibChecksError as exc:
            from calib_checks.models import ModelLoadError

            # A load failure concerns every task of the side; anything else only this task.
            key = (side, "") if isinstance(exc, ModelLoadError) else (side, task)
            self._failures[key] = f"model {entry.label} on {task}: {exc}"
            raise GateError(self._failures[key]) from None
        scores = replace(scores, model_label=entry.label)
        self.writer.write_records(scores)
        if data is None:  # sides that read their own records: the run still records which items it gated
            self.writer.write_record_items(scores)
        if self.progress is not None and scores.stats.read_only:  # no scoring happened: say so, in one line
            self.progress.cached(f"{entry.label} on {task}", len(scores.records), scores.stats.source)
        self.events.append({"model": entry.label, "task": task, "cache": scores.stats.cache,
                            "worker": f"gw{self.worker}" if self.n_workers > 1 else "main",
                            "seconds": round(time.perf_counter() - start, 3), "n_items": len(scores.records)})
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

    def collect_all(self, jobs: Iterable[Job]) -> None:
        """Score every job, this worker's share first (module docstring); failures are remembered, not raised."""
        jobs = list(dict.fromkeys(jobs))
        mine = [job for i, job in enumerate(jobs) if i % self.n_workers == self.worker]
        for job in mine + [job for job in jobs if job not in mine]:
            try:
                self.scores(job.side, job.task, job.family, job.look)
            except GateError:
                pass  # remembered in self._failures; the case says it

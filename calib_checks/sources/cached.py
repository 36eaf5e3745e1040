"""The score cache in front of any deterministic score source (calib_checks/cache.py has the storage).

`CachedSource` asks the cache for the records of the requested items under the key of the source's
`cache_inputs()` and the task, has the source compute only the items the cache lacks, stores those as a new
chunk, and returns every record in the requested order. The per-key lock makes concurrent processes (the gate's
pytest-xdist workers) compute each item once: the others wait and read. A hit computes nothing and, for a
checkpoint, loads no weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from calib_checks.records import EngineStats, ItemRecord, ScoreStats, TaskScores
from calib_checks.sources import Source, SourceError

if TYPE_CHECKING:
    from calib_checks.cache import ScoreCache
    from calib_checks.data import TaskData


class CachedSource(Source):
    """`inner` with the score cache: same label, identity and items; `scores` served from the cache when it can."""

    def __init__(self, inner: Source, cache: ScoreCache) -> None:
        super().__init__(inner.text, inner.context)
        self.inner = inner
        self.cache = cache
        self.prefix = inner.prefix
        self.needs_items = inner.needs_items
        self.cacheable = inner.cacheable

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def label_context(self) -> tuple[str, ...]:
        return self.inner.label_context

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def describe(self, identity: dict[str, Any]) -> str:  # type: ignore[override]
        return self.inner.describe(identity)

    def item_ids(self, task: str) -> Sequence[str] | None:
        return self.inner.item_ids(task)

    def items(self, task: str) -> TaskData | None:
        return self.inner.items(task)

    def cache_inputs(self) -> dict[str, Any] | None:
        return self.inner.cache_inputs()

    def close(self) -> None:
        self.inner.close()

    def scores(self, task: str, data: TaskData | None, ids: Sequence[str] | None = None) -> TaskScores:
        from calib_checks.data import item_digest

        if data is None:
            raise SourceError(f"{self.text}: the score cache needs the items to score (data is None)")
        inputs = self.inner.cache_inputs()
        assert inputs is not None
        wanted = [(item.id, item_digest(item)) for item in data.items]
        key = self.cache.key(inputs, task)
        with self.cache.lock(key):
            stored, chunk_stats = self.cache.get(key, wanted)
            missing = [item for item in data.items if item.id not in stored]
            computed: TaskScores | None = None
            if missing:
                computed = self.inner.scores(task, data.restricted(missing))
                new = {r.id: r for r in computed.records}
                lacking = [item.id for item in missing if item.id not in new]
                if lacking:
                    raise SourceError(f"{self.text} did not score item {lacking[0]!r} of {task} "
                                      f"({len(lacking)} of {len(missing)} asked for)")
                engine = computed.stats.engine
                self.cache.put(key, [(item.id, item_digest(item)) for item in missing],
                               [new[item.id].to_json() for item in missing],
                               {} if engine is None else engine.to_json())
                stored.update({i: r.to_json() for i, r in new.items()})
        records = [ItemRecord.from_json(stored[item.id]) for item in data.items]
        engine = None
        for stats in chunk_stats + ([] if computed is None or computed.stats.engine is None
                                    else [computed.stats.engine.to_json()]):
            part = EngineStats.from_json(stats)
            engine = part if engine is None else engine.combine(part)
        cache = "hit" if not missing else "miss" if len(missing) == len(data.items) else "partial"
        base = computed.stats if computed is not None else ScoreStats(source="the score cache",
                                                                       stack=inputs.get("stack"))
        stats = replace(base, cache=cache, computed=len(missing), engine=engine)
        return TaskScores(model_label=self.label, model_identity=self.identity(), task=task,
                          data_fingerprint=data.fingerprint, records=records, stats=stats)

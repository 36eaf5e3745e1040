"""thresholds.toml: the gate's rules, validated up front, resolved most-specific-wins per case.

A case is one (task, extractor, metric) of a model pair. Its rule says how much worse the aligned model may
be than its base on that metric (the MARGIN) and how the evidence is weighed. The file (docs/GATE.md has the
full reference and the measured rationale)::

    [gate]                         # optional; the family-wise policy (GatePolicy)
    family = "pair"                # Holm's correction over all gated cases of a pair ("case": none)
    alpha = 0.05                   # family-wise false-alarm rate
    on_inconclusive = "pass"       # does an inconclusive case block the release? "pass" | "fail"

    [default]                      # required; every field below may appear in any rule table
    max_increase = 0.01            # the margin: largest allowed worsening, in the metric's units
    scale = "none"                 # "2/K": margin = max_increase * 2/K, K = the task's option count
    interval = "normal"            # "normal" | "basic" | "percentile" (paired bootstrap)
    confidence = 0.95              # two-sided level of the interval whose upper end must be <= margin to pass
    n_resamples = 2000             # bootstrap replicates (>= 1000)
    min_items = 200                # fewer items: the case errors unless it already fails
    gate = true                    # false: report only
    # max_relative_increase = 0.5  # optional: margin = max(margin, this x |base value|)
    # n_bins = 15                  # bins of the binned metrics (ECE, SCE, ...)

    [metric.sce]                   # one match key: a metric, a task or an extractor
    scale = "2/K"
    [task.medmcqa.extractor.choice]            # two or three keys, in any order
    min_items = 500
    [task.medmcqa.extractor.choice.metric.ece]
    max_increase = 0.02

Worsening: ``change = metric(aligned) - metric(base)`` for metrics where higher is worse (ECE, SCE, Brier,
NLL), ``-change`` for accuracy (``metrics.METRICS[m].higher_is_worse``), ``|aligned| - |base|`` for the signed
over-confidence (``METRICS[m].signed``; verdicts.py's sign-aware test). A case FAILS
when the one-sided p-value of "worsening <= margin", adjusted over its family, is <= alpha; PASSES when the
upper end of the worsening's interval is <= margin; is INCONCLUSIVE otherwise (verdicts.py).

Precedence, field by field: a field takes its value from the matching table with the most match keys that
sets it ([default] has none, [task.t] one, [task.t.metric.m] two, ...); fields no table sets take the built-in
values of ``BUILTIN``. Two matching tables with the same number of keys that set one field to different
values are a conflict, reported when the file is loaded (for every task x extractor x metric, not only the
ones a run selects): write the more specific table that decides it.

Everything is checked when the file is loaded, before any model is touched: unknown keys, tables, tasks,
extractors or metrics (with a close-match suggestion), wrong types, out-of-range values, conflicts, and gated
rules that can never fail (the margin at K = 2 at or above the largest worsening the metric can show; a
larger K is checked again when the case is judged, verdicts.py). Each problem raises ``ThresholdsError``
naming the file and the key.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import TOMLDecodeError, parse_toml
from calib_checks.metrics import INTERVAL_METHODS, METRICS


__all__ = ["BUILTIN", "BUILTIN_POLICY", "DIMENSIONS", "FAMILIES", "INTERVALS", "ON_INCONCLUSIVE", "POLICY_FIELDS",
           "RULE_FIELDS", "SCALES", "GatePolicy", "Rule", "Thresholds", "ThresholdsError", "load_thresholds",
           "max_change", "parse_thresholds"]

DIMENSIONS = ("task", "extractor", "metric")
RULE_FIELDS = ("max_increase", "max_relative_increase", "scale", "interval", "confidence", "n_resamples",
               "min_items", "n_bins", "gate")
INTERVALS = INTERVAL_METHODS  # one list: the bootstrap's interval methods
SCALES = ("none", "2/K")
FAMILIES = ("pair", "case")
ON_INCONCLUSIVE = ("pass", "fail")
POLICY_FIELDS = ("family", "alpha", "on_inconclusive", "pooled_weight", "pooled_metrics", "metric_weights")
MAX_RELATIVE_INCREASE = 10.0  # 1000 % of the base value: beyond it the relative tolerance swamps everything
MAX_MIN_ITEMS = 10**7  # the largest task has ~10^4 items; 10^7 catches typos like 1e9
# Fields that existed once and were replaced: a clear message instead of "unknown key".
_REMOVED = {
    "estimate": "estimate was removed: a case now fails on its family-adjusted one-sided p-value and passes when "
                "the upper end of its interval is within the margin (docs/GATE.md, 'The decision rule'); delete "
                "the line",
}

# The largest worsening each metric can show (the width of its range), for the "can never fail" check.
class ThresholdsError(CalibChecksError, ValueError):
    """thresholds.toml cannot be used as written; the message names the file, the key and the fix."""


def max_change(metric: str, n_options: int = 2) -> float:
    """The largest worsening `metric` can show on items with `n_options` options (math.inf when not known).

    Only SCE's bound depends on K (2/K); K = 2 gives the largest bound of every metric.
    """
    if metric not in METRICS:
        return math.inf
    m = METRICS[metric]
    return m.max_change * 2.0 / max(int(n_options), 2) if m.per_k else m.max_change


@dataclass(frozen=True)
class GatePolicy:
    """The [gate] table: how the cases of a run are combined (verdicts.apply_family).

    `family`: "pair" (default) corrects the one-sided p-values of all gated cases of a pair (or of a chain:
    its steps and the whole chain) together, by the weighted graphical procedure of calib_checks/graphical.py
    (Holm's step-down when every case weighs the same), with O'Brien-Fleming spending over the sequential looks,
    so an equally calibrated pair fails ANY case with probability <= alpha; "case": no correction (each case at
    level alpha, spent over its looks). `alpha`: the family-wise false-alarm rate, in (0, 0.5].
    `pooled_weight`: the share of alpha the pooled cases (one per extractor x metric of `pooled_metrics`, over all
    tasks) start with, in [0, 1); 0 turns them off. `metric_weights`: relative weights of the gated metrics within the pooled and
    within the per-task cases (a metric not named weighs 1). `on_inconclusive`: "pass" (default): an
    inconclusive case does not block the release; "fail": it does. `source` names the table it came from
    ("[gate]" or "built-in"). The defaults are chosen by measurement: docs/GATE.md.
    """

    family: str = "pair"
    alpha: float = 0.05
    on_inconclusive: str = "pass"
    pooled_weight: float = 0.3
    pooled_metrics: tuple[str, ...] = ("ece", "overconfidence")
    metric_weights: Mapping[str, float] = field(default_factory=dict)
    source: str = field(default="built-in", compare=False)

    def __post_init__(self) -> None:
        # A mapping that cannot change (the policy is hashable and shared); JSON gives a plain dict.
        object.__setattr__(self, "metric_weights", MappingProxyType(dict(sorted(dict(self.metric_weights).items()))))
        object.__setattr__(self, "pooled_metrics", tuple(self.pooled_metrics))

    def __hash__(self) -> int:
        return hash((self.family, self.alpha, self.on_inconclusive, self.pooled_weight, self.pooled_metrics,
                     tuple(self.metric_weights.items())))

    def to_json(self) -> dict[str, Any]:
        value = {"metric_weights": dict(self.metric_weights), "pooled_metrics": list(self.pooled_metrics)}
        return {name: value.get(name, getattr(self, name)) for name in POLICY_FIELDS}

    def blocks(self, verdict: str) -> bool:
        """True when a case with this verdict blocks the release (fail and error always; inconclusive per policy)."""
        return verdict in ("fail", "error") or (verdict == "inconclusive" and self.on_inconclusive == "fail")


#: Rule fields that must agree across the tasks of a pooled case (it has one bootstrap and one interval).
POOLED_SHARED_FIELDS = ("interval", "confidence", "n_resamples", "n_bins", "gate")


def pooled_rule(rules: Sequence[Rule]) -> Rule:
    """The rule a pooled case (calib_checks/pooled.py) reports: its tasks' shared fields (`POOLED_SHARED_FIELDS`;
    ThresholdsError when they differ), the largest ``min_items`` (held against ALL its items); its margin is
    `pooled.pooled_margin`'s, the item-weighted mean of its tasks' margins, not this rule's."""
    for name in POOLED_SHARED_FIELDS:
        values = {getattr(r, name) for r in rules}
        if len(values) > 1:
            raise ThresholdsError(f"a pooled case needs one {name} for all its tasks, got "
                                  f"{sorted(map(str, values))}; set it in [default] or [metric.M] rather than per "
                                  "task, or set pooled_weight = 0 in [gate]")
    return replace(rules[0], min_items=max(r.min_items for r in rules), source="pooled over its tasks' rules")


#: The policy when the file has no [gate] table.
BUILTIN_POLICY = GatePolicy()


@dataclass(frozen=True)
class Rule:
    """The resolved rule of one case (field meanings: module docstring and docs/GATE.md).

    `source` names the tables that set its fields, most specific first, e.g. `[metric.sce] > [default]`
    (`built-in` for fields no table set); `origins` maps each field to the table it came from.
    """

    max_increase: float
    max_relative_increase: float | None = None
    scale: str = "none"
    interval: str = "normal"
    confidence: float = 0.95
    n_resamples: int = 2000
    min_items: int = 200
    n_bins: int = 15
    gate: bool = True
    source: str = "built-in"
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The rule's fields (RULE_FIELDS order), JSON-able; `source` travels separately (CaseResult.rule_source)."""
        return {name: getattr(self, name) for name in RULE_FIELDS}

    def margin(self, n_options: int, base_value: float | None = None) -> float:
        """The effective margin of a case with `n_options` options (K, the probability table's columns).

        ``max_increase`` (times 2/K when ``scale = "2/K"``), raised to ``max_relative_increase * |base_value|``
        when that is set, larger, and the base value is known and not 0.
        """
        margin = self.max_increase * (2.0 / n_options if self.scale == "2/K" else 1.0)
        if self.max_relative_increase is not None and base_value:
            margin = max(margin, self.max_relative_increase * abs(base_value))
        return margin

    def describe(self, metric: str) -> str:
        """One phrase: the case's hypothesis and both criteria, e.g. `worse when the ECE increase > 0.01: fail
        when its adjusted one-sided p-value <= alpha, pass when the upper end of its 95% normal interval <= 0.01`."""
        spec = METRICS.get(metric)
        name = spec.display_name if spec else metric
        if spec is not None and spec.signed:
            name = f"|{name}|"
        direction = "increase" if (spec is None or spec.higher_is_worse) else "decrease"
        margin = f"{self.max_increase:g}" + (" x 2/K" if self.scale == "2/K" else "")
        if self.max_relative_increase is not None:
            margin = f"max({margin}, {self.max_relative_increase:g} x |base|)"
        return (f"margin {margin} on the {name} {direction}: fail when its adjusted one-sided p-value <= alpha, pass "
                f"when the upper end of its {self.confidence:.0%} {self.interval} interval <= the margin")


#: Values of the fields no table sets (the Rule's defaults). `max_increase` has none: [default] must set it.
BUILTIN: dict[str, Any] = {f.name: f.default for f in fields(Rule) if f.name in RULE_FIELDS[1:]}


def _where(path: str, table: str, key: str | None = None) -> str:
    return f"{path}: [{table}]" + (f" {key}" if key else "")


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_number(path: str, table: str, key: str, value: Any, lo: float, lo_open: bool,
                  hi: float = math.inf, hi_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ThresholdsError(f"{_where(path, table, key)}: expected a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if not math.isfinite(value) or bad_lo or bad_hi:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        hint = " (a fraction: write 0.95, not 95)" if key == "confidence" and value > 1 else ""
        raise ThresholdsError(f"{_where(path, table, key)} = {value!r} is out of range {rng}{hint}")
    return value


def _check_int(path: str, table: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ThresholdsError(
            f"{_where(path, table, key)}: expected an integer, got {value!r} ({type(value).__name__})"
        )
    if not lo <= value <= hi:
        raise ThresholdsError(f"{_where(path, table, key)} = {value} is out of range [{lo}, {hi}]")
    return value


def _check_choice(path: str, table: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        raise ThresholdsError(
            f"{_where(path, table, key)} = {value!r} is not one of {', '.join(map(repr, choices))}{hint}"
        )
    return value


def _check_field(path: str, table: str, key: str, value: Any) -> Any:
    if key == "max_increase":
        return _check_number(path, table, key, value, 0.0, False)
    if key == "max_relative_increase":
        return _check_number(path, table, key, value, 0.0, False, MAX_RELATIVE_INCREASE, False)
    if key == "scale":
        return _check_choice(path, table, key, value, SCALES)
    if key == "interval":
        return _check_choice(path, table, key, value, INTERVALS)
    if key == "confidence":
        return _check_number(path, table, key, value, 0.5, False, 1.0, True)
    if key == "n_resamples":
        return _check_int(path, table, key, value, 1000, 1_000_000)
    if key == "min_items":
        return _check_int(path, table, key, value, 1, MAX_MIN_ITEMS)
    if key == "n_bins":
        return _check_int(path, table, key, value, 1, 10_000)
    if key == "gate":
        if not isinstance(value, bool):
            raise ThresholdsError(f"{_where(path, table, key)}: expected true or false, got {value!r}")
        return value
    raise AssertionError(key)  # callers only pass RULE_FIELDS


def _known_names(tasks: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
    from calib_checks.records import EXTRACTORS
    from calib_checks.tasks import TASKS

    return {"task": tuple(TASKS if tasks is None else tasks), "extractor": EXTRACTORS, "metric": tuple(METRICS)}


@dataclass(frozen=True)
class _Table:
    match: tuple[tuple[str, str], ...]  # ((dimension, name), ...) in DIMENSIONS order
    values: Mapping[str, Any]

    @property
    def name(self) -> str:
        return "default" if not self.match else ".".join(f"{d}.{n}" for d, n in self.match)

    def applies(self, case: Mapping[str, str]) -> bool:
        return all(case[d] == n for d, n in self.match)


class Thresholds:
    """A validated thresholds file; `rule_for(task, extractor, metric)` resolves one case's `Rule`."""

    def __init__(self, tables: list[_Table], path: str, known: dict[str, tuple[str, ...]],
                 policy: GatePolicy = BUILTIN_POLICY) -> None:
        self.path = path
        self.policy = policy
        self._tables = tables
        self._known = known
        self._rules: dict[tuple[str, str, str], Rule] = {}
        # Resolve every combination now: conflicts and never-failing rules surface at load time.
        for task in known["task"]:
            for extractor in known["extractor"]:
                for metric in known["metric"]:
                    self._rules[(task, extractor, metric)] = self._resolve(task, extractor, metric)

    def rule_for(self, task: str, extractor: str, metric: str) -> Rule:
        """The rule of one case; raises ThresholdsError for a name the registries do not know."""
        for dim, name in zip(DIMENSIONS, (task, extractor, metric)):
            if name not in self._known[dim]:
                raise ThresholdsError(f"unknown {dim} {name!r}{_suggest(name, self._known[dim])}; known: "
                                      f"{', '.join(self._known[dim])}")
        return self._rules[(task, extractor, metric)]

    def _resolve(self, task: str, extractor: str, metric: str) -> Rule:
        case = {"task": task, "extractor": extractor, "metric": metric}
        matching = sorted((t for t in self._tables if t.applies(case)), key=lambda t: -len(t.match))
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for key in RULE_FIELDS:
            setters = [t for t in matching if key in t.values]
            if not setters:
                continue
            best = [t for t in setters if len(t.match) == len(setters[0].match)]
            if len({repr(t.values[key]) for t in best}) > 1:
                dims = {d for t in best for d, _ in t.match}
                decider = ".".join(f"{d}.{case[d]}" for d in DIMENSIONS if d in dims)
                raise ThresholdsError(
                    f"{self.path}: {' and '.join(f'[{t.name}]' for t in best)} both set {key} for task {task}, "
                    f"extractor {extractor}, metric {metric} and are equally specific; add [{decider}] to decide"
                )
            values[key] = best[0].values[key]
            origins[key] = best[0].name
        for key, value in BUILTIN.items():
            if key not in values:
                values[key] = value
                origins[key] = "built-in"
        limit = max_change(metric, 2)
        # At K = 2 both scales give the margin max_increase (2/K = 1), and every bound is largest there.
        if values["gate"] and values["max_increase"] >= limit:
            raise ThresholdsError(
                f"{_where(self.path, origins['max_increase'], 'max_increase')} = {values['max_increase']:g} can "
                f"never fail for metric {metric} (its worsening is at most {limit:g}, on 2-option tasks); lower it, "
                f"or set gate = false to report the metric without gating it"
            )
        by_name = {t.name: t for t in matching}
        used = sorted({name for name in origins.values() if name in by_name}, key=lambda n: (-len(by_name[n].match), n))
        source = " > ".join(f"[{name}]" for name in used) or "built-in"
        return Rule(**values, source=source, origins=origins)


def _collect(data: Mapping[str, Any], path: str, known: dict[str, tuple[str, ...]],
             match: tuple[tuple[str, str], ...], out: list[_Table]) -> None:
    """Walk one table (`match` = the dimension keys leading to it) and its nested dimension tables."""
    name = "default" if not match else ".".join(f"{d}.{n}" for d, n in match)
    values: dict[str, Any] = {}
    used = {d for d, _ in match}
    for key, value in data.items():
        if key in RULE_FIELDS:
            values[key] = _check_field(path, name, key, value)
        elif key in _REMOVED:
            raise ThresholdsError(f"{_where(path, name, key)}: {_REMOVED[key]}")
        elif key in DIMENSIONS and match:
            if key in used:
                raise ThresholdsError(f"{_where(path, name)}: {key!r} appears twice in one table name")
            _collect_dimension(key, value, path, known, match, out)
        else:
            allowed = list(RULE_FIELDS) + ([d for d in DIMENSIONS if d not in used] if match else [])
            raise ThresholdsError(
                f"{_where(path, name, key)}: unknown key{_suggest(key, allowed)}; allowed here: {', '.join(allowed)}"
            )
    if values or not match:
        order = {d: i for i, d in enumerate(DIMENSIONS)}
        out.append(_Table(tuple(sorted(match, key=lambda m: order[m[0]])), values))


def _collect_dimension(dim: str, value: Any, path: str, known: dict[str, tuple[str, ...]],
                       match: tuple[tuple[str, str], ...], out: list[_Table]) -> None:
    prefix = ".".join(f"{d}.{n}" for d, n in match)
    where = f"{prefix}.{dim}" if prefix else dim
    if not isinstance(value, Mapping):
        raise ThresholdsError(f"{path}: {where} must be tables like [{where}.<name>], got {value!r}")
    for name, sub in value.items():
        if name not in known[dim]:
            raise ThresholdsError(
                f"{path}: [{where}.{name}]: unknown {dim} {name!r}{_suggest(name, known[dim])}; known: "
                f"{', '.join(known[dim])}"
            )
        if not isinstance(sub, Mapping):
            raise ThresholdsError(f"{path}: {where}.{name} must be a table [{where}.{name}], got {sub!r}")
        _collect(sub, path, known, (*match, (dim, name)), out)


def parse_thresholds(data: Mapping[str, Any], path: str = "thresholds.toml",
                     tasks: Iterable[str] | None = None) -> Thresholds:
    """Validate parsed TOML `data` (as `tomllib.loads` returns it); `path` names the file in messages."""
    known = _known_names(tasks)
    tables: list[_Table] = []
    policy = BUILTIN_POLICY
    if "default" not in data:
        raise ThresholdsError(f"{path}: no [default] table; start the file with [default] and max_increase = ...")
    for key, value in data.items():
        if key == "default":
            if not isinstance(value, Mapping):
                raise ThresholdsError(f"{path}: default must be a table [default], got {value!r}")
            _collect(value, path, known, (), tables)
            if "max_increase" not in tables[-1].values:
                raise ThresholdsError(f"{_where(path, 'default')}: max_increase is required (the largest allowed "
                                      "worsening, e.g. max_increase = 0.01)")
        elif key in DIMENSIONS:
            _collect_dimension(key, value, path, known, (), tables)
        elif key == "gate":
            if not isinstance(value, Mapping):
                raise ThresholdsError(f"{path}: top-level gate must be the table [gate] (family, alpha, "
                                      f"on_inconclusive), got {value!r}; the rule field gate = true/false goes in "
                                      "[default] or a [task/extractor/metric] table")
            policy = _parse_policy(value, path)
        else:
            allowed = ["default", "gate", *DIMENSIONS]
            raise ThresholdsError(
                f"{path}: unknown top-level key {key!r}{_suggest(key, allowed)}; allowed: [gate], [default], "
                "[task.<name>], [extractor.<name>], [metric.<name>] and their combinations"
            )
    seen: dict[tuple[tuple[str, str], ...], str] = {}
    for table in tables:
        if table.match in seen:  # e.g. [task.x.metric.y] and [metric.y.task.x]
            raise ThresholdsError(f"{path}: [{table.name}] is given twice (the order of keys in a table name does "
                                  "not matter); merge them")
        seen[table.match] = table.name
    return Thresholds(tables, path, known, policy)


def _parse_policy(data: Mapping[str, Any], path: str) -> GatePolicy:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "family":
            values[key] = _check_choice(path, "gate", key, value, FAMILIES)
        elif key == "alpha":
            values[key] = _check_number(path, "gate", key, value, 0.0, True, 0.5, False)
        elif key == "on_inconclusive":
            values[key] = _check_choice(path, "gate", key, value, ON_INCONCLUSIVE)
        elif key == "pooled_weight":
            values[key] = _check_number(path, "gate", key, value, 0.0, False, 1.0, True)
        elif key == "pooled_metrics":
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise ThresholdsError(f"{_where(path, 'gate', key)}: expected a list of metric names, e.g. "
                                      f'pooled_metrics = ["ece", "overconfidence"], got {value!r}')
            for metric in value:
                if metric not in METRICS:
                    raise ThresholdsError(f"{_where(path, 'gate', key)}: unknown metric {metric!r}"
                                          f"{_suggest(metric, tuple(METRICS))}")
            values[key] = tuple(value)
        elif key == "metric_weights":
            if not isinstance(value, Mapping):
                raise ThresholdsError(f"{_where(path, 'gate', key)}: expected a table of metric = weight, e.g. "
                                      f"metric_weights = {{ overconfidence = 2.0 }}, got {value!r}")
            for metric, weight in value.items():
                if metric not in METRICS:
                    raise ThresholdsError(f"{_where(path, 'gate', key)}: unknown metric {metric!r}"
                                          f"{_suggest(metric, tuple(METRICS))}")
                _check_number(path, "gate", f"{key}.{metric}", weight, 0.0, True)
            values[key] = dict(value)
        else:
            hint = ("; rule fields such as max_increase go in [default] or a [task/extractor/metric] table"
                    if key in RULE_FIELDS else "")
            raise ThresholdsError(f"{_where(path, 'gate', key)}: unknown key{_suggest(key, POLICY_FIELDS)}; allowed "
                                  f"here: {', '.join(POLICY_FIELDS)}{hint}")
    return GatePolicy(**values, source="[gate]")


def load_thresholds(path: str | Path, tasks: Iterable[str] | None = None) -> Thresholds:
    """Read and validate a thresholds file against the task names `tasks` (default: the registered tasks);
    raises ThresholdsError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ThresholdsError(f"thresholds file {str(path)!r} not found: pass its path (--calib-thresholds under "
                              "pytest, --thresholds for `python -m calib_checks`), or copy the shipped "
                              "thresholds.toml (docs/GATE.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ThresholdsError(f"thresholds file {str(path)!r} cannot be read: {exc}") from None
    try:
        data = parse_toml(text)
    except TOMLDecodeError as exc:
        raise ThresholdsError(f"{path}: not valid TOML: {exc}") from None
    return parse_thresholds(data, str(path), tasks)

"""One gate case: base vs aligned scores on one task, extractor and metric -> change, interval, verdict.

`judge_case` is the whole decision; `judge_arrays` is the same decision on plain arrays (the simulation in
tests/test_threshold_simulation.py measures the shipped rules through it).

Conventions (thresholds.py has the rule's fields):

* ``change = metric(aligned) - metric(base)``; ``relative_change = change / base`` (None when base is 0).
* ``[ci_low, ci_high]`` is the rule's paired bootstrap interval of the change (``metrics.paired_bootstrap``:
  both models are evaluated on the same resampled items), at the rule's confidence.
* The worsening is the change for metrics where higher is worse and ``-change`` for accuracy; the compared
  value is the rule's estimate of it (the point, or the lower / upper end of the mapped interval).
* verdict: ``error`` when the case cannot be judged (different items or labels in the two scores, no items,
  NaN/inf probabilities, invalid probabilities): it fails, it never passes; ``not-gated`` when the rule says
  ``gate = false`` (report only) or when there are fewer items than ``min_items`` (reported, not gated);
  else ``fail`` when the compared value is ``> max_increase`` (and, if ``max_relative_increase`` is set and the
  base is not 0, also ``> max_relative_increase * |base|``), else ``pass``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from calib_checks.errors import CalibChecksError
from calib_checks.metrics import METRICS, MetricInputError, paired_bootstrap
from calib_checks.thresholds import Rule

if TYPE_CHECKING:
    from calib_checks.scoring import TaskScores

__all__ = ["VERDICTS", "CaseResult", "Decision", "VerdictError", "judge_arrays", "judge_case"]

VERDICTS = ("pass", "fail", "not-gated", "error")


class VerdictError(CalibChecksError, ValueError):
    """A case asked for with an unknown metric or extractor (a caller's mistake, not a data problem)."""


@dataclass
class CaseResult:
    """One judged case (docs/ARCHITECTURE.md, `verdicts.CaseResult`).

    Beyond the contract's fields: `higher_is_worse` (the metric's orientation), `compared` (the value held
    against `max_increase`: the rule's estimate of the worsening; None when not computed) and `seed` (of the
    bootstrap). Numbers are None where an error prevented computing them.
    """

    pair: str
    base: str
    aligned: str
    task: str
    extractor: str
    metric: str
    base_value: float | None
    aligned_value: float | None
    change: float | None
    relative_change: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str
    confidence: float
    n_items: int
    rule: dict[str, Any]
    rule_source: str
    verdict: str
    message: str
    higher_is_worse: bool = True
    compared: float | None = None
    seed: int = 0

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(pair, task, extractor, metric): the case's identity within a run."""
        return (self.pair, self.task, self.extractor, self.metric)

    @property
    def gated(self) -> bool:
        """True when a threshold actually decided this case (pass or fail)."""
        return self.verdict in ("pass", "fail")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseResult:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise VerdictError(f"case result has unknown keys {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class Decision:
    """The numbers and verdict of one case on plain arrays (see `judge_arrays`)."""

    base_value: float
    aligned_value: float
    change: float
    relative_change: float | None
    ci_low: float
    ci_high: float
    compared: float
    exceeded: bool
    verdict: str  # "pass", "fail" or "not-gated"
    n_items: int


def _metric(metric: str) -> bool:
    """The metric's higher_is_worse, or VerdictError for an unknown name."""
    if metric not in METRICS:
        raise VerdictError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return METRICS[metric].higher_is_worse


def judge_arrays(base_probs: np.ndarray, aligned_probs: np.ndarray, labels: np.ndarray, metric: str, rule: Rule,
                 seed: int = 0) -> Decision:
    """Decide one case from (N, K) probabilities of both models and the (N,) gold labels.

    Raises `metrics.MetricInputError` (a ValueError) for invalid inputs (NaN, rows not summing to 1, ...).
    """
    sign = 1.0 if _metric(metric) else -1.0
    boot = paired_bootstrap(metric, base_probs, aligned_probs, labels, n_resamples=rule.n_resamples,
                            confidence=rule.confidence, seed=seed, n_bins=rule.n_bins)
    lo, hi = boot.basic if rule.interval == "basic" else boot.percentile
    worse_lo, worse_hi = sorted((sign * lo, sign * hi))
    compared = {"point": sign * boot.change, "lower": worse_lo, "upper": worse_hi}[rule.estimate]
    exceeded = compared > rule.max_increase
    if exceeded and rule.max_relative_increase is not None and boot.base_value != 0:
        exceeded = compared > rule.max_relative_increase * abs(boot.base_value)
    if not rule.gate or boot.n_items < rule.min_items:
        verdict = "not-gated"
    else:
        verdict = "fail" if exceeded else "pass"
    return Decision(
        base_value=boot.base_value,
        aligned_value=boot.aligned_value,
        change=boot.change,
        relative_change=boot.change / boot.base_value if boot.base_value != 0 else None,
        ci_low=lo,
        ci_high=hi,
        compared=compared,
        exceeded=exceeded,
        verdict=verdict,
        n_items=boot.n_items,
    )


def _first_difference(a: list[Any], b: list[Any]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"position {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"


def _bad_rows(probs: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(probs).all(axis=1))


def judge_case(base: TaskScores, aligned: TaskScores, extractor: str, metric: str, rule: Rule, seed: int = 0,
               *, pair: str | None = None) -> CaseResult:
    """Judge one case; data problems give an `error` CaseResult (never a pass), misuse raises VerdictError.

    `pair` names the pair in the result (default: the aligned model's label).
    """
    from calib_checks.scoring import EXTRACTORS

    higher_is_worse = _metric(metric)
    if extractor not in EXTRACTORS:
        raise VerdictError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")
    where = f"{metric} on {base.task} ({extractor})"
    header: dict[str, Any] = dict(
        pair=pair or aligned.model_label, base=base.model_label, aligned=aligned.model_label, task=base.task,
        extractor=extractor, metric=metric, ci_method=rule.interval, confidence=rule.confidence,
        rule=rule.to_json(), rule_source=rule.source, higher_is_worse=higher_is_worse, seed=seed,
    )

    def error(problem: str, n_items: int) -> CaseResult:
        return CaseResult(**header, base_value=None, aligned_value=None, change=None, relative_change=None,
                          ci_low=None, ci_high=None, n_items=n_items, verdict="error",
                          message=f"ERROR {where}: {problem}")

    base_ids = [r.id for r in base.records]
    aligned_ids = [r.id for r in aligned.records]
    if base.task != aligned.task:
        return error(f"base scored task {base.task!r} but aligned scored {aligned.task!r}", 0)
    if base_ids != aligned_ids:
        return error(
            f"base and aligned scored different items ({len(base_ids)} vs {len(aligned_ids)}; first difference at "
            f"{_first_difference(base_ids, aligned_ids)}); score both models on the same TaskData", 0
        )
    n = len(base_ids)
    if n == 0:
        return error("no items were scored (empty data set or --limit 0); an empty case cannot pass", 0)
    labels = base.labels()
    if not np.array_equal(labels, aligned.labels()):
        i = int(np.flatnonzero(labels != aligned.labels())[0])
        return error(f"base and aligned disagree on the gold label of item {base_ids[i]!r} "
                     f"({labels[i]} vs {aligned.labels()[i]}); they must be scored on the same TaskData", n)
    base_probs, aligned_probs = base.probs(extractor), aligned.probs(extractor)
    for who, scores, probs in (("base", base, base_probs), ("aligned", aligned, aligned_probs)):
        bad = _bad_rows(probs)
        if bad.size:
            return error(f"{who} model {scores.model_label} has NaN/inf {extractor} probabilities on {bad.size} of "
                         f"{n} items (first: {base_ids[bad[0]]!r}); check the model's logits and dtype", n)
    try:
        d = judge_arrays(base_probs, aligned_probs, labels, metric, rule, seed)
    except MetricInputError as exc:
        return error(str(exc), n)

    name = METRICS[metric].display_name
    rel = "" if d.relative_change is None else f" ({d.relative_change:+.1%})"
    numbers = (f"{name} {d.base_value:.4f} -> {d.aligned_value:.4f}, change {d.change:+.4f}{rel} "
               f"[{rule.confidence:.0%} {rule.interval} CI {d.ci_low:+.4f}, {d.ci_high:+.4f}], n={n}")
    rule_text = f"rule: {rule.describe(metric)} ({rule.source})"
    if d.verdict == "not-gated":
        why = (f"n={n} < min_items={rule.min_items}" if rule.gate else "report only (gate = false)")
        message = f"NOT GATED: {why}; {base.task} {extractor}: {numbers}; {rule_text}"
    else:
        head = "FAIL" if d.verdict == "fail" else "pass"
        message = f"{head} {base.task} {extractor}: {numbers}; compared {d.compared:+.4f}; {rule_text}"
    return CaseResult(**header, base_value=d.base_value, aligned_value=d.aligned_value, change=d.change,
                      relative_change=d.relative_change, ci_low=d.ci_low, ci_high=d.ci_high, n_items=n,
                      verdict=d.verdict, message=message, compared=d.compared)


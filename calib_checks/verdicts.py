"""One gate case: base vs aligned scores on one task, extractor and metric -> change, interval, p-value, verdict;
and the family correction that turns a run's per-case p-values into its verdicts.

`judge_case` judges one case as if it were its own family; `judge_arrays` is the same decision on plain arrays
(calib_checks/simulation.py measures the shipped rules through it). The family correction (calib_checks/family.py)
then adjusts the p-values of all gated cases of each family (by default: a pair, or a chain) at each sequential
look and recomputes verdicts and messages (`verdict_of`, `message`).

Conventions (thresholds.py has the rule's fields):

* ``change = metric(aligned) - metric(base)``; ``relative_change = change / base`` (None when base is 0).
* ``[ci_low, ci_high]`` is the rule's paired bootstrap interval of the change (``metrics.paired_bootstrap``:
  both models are evaluated on the same resampled items), at the rule's confidence; "normal" by default.
* The worsening is the change for metrics where higher is worse and ``-change`` for accuracy. Its interval
  is the change's, mapped the same way; ``compared`` is its UPPER end, ``worsening`` its bias-corrected
  estimate (the normal interval's centre ``2 change - mean(D*)``; the point change for basic / percentile),
  ``se`` the interval's (``BootstrapResult.se``: sd(D*) times the metric's measured inflation).
* A signed metric (``METRICS[m].signed``: over-confidence) is judged on ``|aligned| - |base|`` by an
  intersection-union test of two contrasts per side (`_sign_aware_test`); its ``change`` and interval stay
  the signed ones and ``sign_test`` says which side and contrast decided.
* ``margin = rule.margin(K, base value)``: ``max_increase`` (x 2/K with ``scale = "2/K"``, K = the number of
  probability columns, ARC's padded maximum included), raised by ``max_relative_increase x |base|`` if set.
* ``p_value``: one-sided, H0 "worsening <= margin" (``BootstrapResult.p_value``); ``p_adjusted``: over the case's
  family and looks (calib_checks/family.py: fail iff it is <= alpha; the case alone before that).
* verdict:
  - ``error`` when the case cannot be judged (different items or labels in the two scores, no items, an
    extractor a side lacks, invalid probabilities, a margin the metric can never exceed on this K): it never
    passes;
  - ``not-gated`` when the rule says ``gate = false`` (report only);
  - ``fail`` when ``p_adjusted <= alpha``, or when any number it rests on is NaN;
  - ``error`` when there are fewer items than ``min_items`` and it does not already fail ("too few items to tell");
  - ``pass`` when ``compared <= margin`` (the worsening is shown to be within the margin);
  - ``inconclusive`` otherwise; ``detectable`` then says the smallest worsening these items detect with 80 %
    power: ``margin + (z_{1 - level} + z_{0.8}) se``, `level` the case's own nominal level at its look (its
    weight's share of alpha, spent over the looks: calib_checks/family.py), a one-sided z-test at that level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from calib_checks.errors import CalibChecksError
from calib_checks.metrics import METRICS, BootstrapResult, MetricInputError, normal_quantile, paired_bootstrap
from calib_checks.thresholds import BUILTIN_POLICY, GatePolicy, Rule, max_change

if TYPE_CHECKING:
    from calib_checks.records import TaskScores

__all__ = ["POWER", "RUN_VERDICTS", "VERDICTS", "CaseResult", "Decision", "VerdictError", "message",
           "case_from_decision", "decide", "detectable_worsening", "error_case", "judge_arrays",
           "judge_case", "paired_arrays", "run_verdict", "upper_end_quantile"]

#: A case's verdicts (docs/GATE.md, "Cases and outcomes").
VERDICTS = ("pass", "fail", "inconclusive", "not-gated", "error")
#: A run's verdicts (`run_verdict`).
RUN_VERDICTS = ("ship", "regression", "error", "incomplete")

#: The power at which `detectable` is stated.
POWER = 0.8


class VerdictError(CalibChecksError, ValueError):
    """A case asked for with an unknown metric or extractor (a caller's mistake, not a data problem)."""


@dataclass
class CaseResult:
    """One judged case (docs/ARCHITECTURE.md, `verdicts.CaseResult`; module docstring for the definitions).

    Beyond the contract's fields: `higher_is_worse` (the metric's orientation), `compared` (the upper end of
    the worsening's interval, held against the margin for a pass), `seed` (of the bootstrap), `worsening` (its
    bias-corrected estimate), `se` (the bootstrap sd of the change), `p_value` (raw, one-sided, H0 worsening
    <= margin), `p_adjusted` (over the family), `margin` (effective, after scaling), `detectable` (smallest
    worsening detected with 80 % power at `level`), `level` (the nominal one-sided level of this case at this
    look: its share of the family's rate, spent over the looks; calib_checks/family.py), `mc_error` (Monte Carlo
    error of the interval ends), `alpha`, `family` ("case" until `family.correct_look`, then the policy's family),
    `family_size` (gated cases in the family), `n_options` (K), `sign_test` (signed metrics only, else None:
    which side's intersection-union test gave the p-value and which contrast bound it, e.g. `over:sum`; then
    `worsening`, `compared` and `p_value` are those of ``|aligned| - |base|``, while `change` and
    `ci_low`/`ci_high` stay the signed change). Numbers are None where an error prevented computing them.
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
    worsening: float | None = None
    se: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    margin: float | None = None
    detectable: float | None = None
    mc_error: float | None = None
    alpha: float = BUILTIN_POLICY.alpha
    family: str = "case"
    family_size: int = 1
    n_options: int | None = None
    sign_test: str | None = None
    chain: str | None = None  # the chain this case's comparison is a step of (its family); None for a pair
    level: float | None = None  # the nominal one-sided level its p-value met at this look (family.correct_look)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(pair, task, extractor, metric): the case's identity within a run."""
        return (self.pair, self.task, self.extractor, self.metric)

    @property
    def gated(self) -> bool:
        """True when a threshold decided this case (pass, fail or inconclusive)."""
        return self.verdict in ("pass", "fail", "inconclusive")

    def headline(self) -> str:
        """The case in one short line for a terminal (the full `message` is in the report and results.json)."""
        where = f"{self.task} {self.extractor} {self.metric}"
        if self.verdict == "error" or self.worsening is None or self.margin is None or self.compared is None:
            return self.message
        numbers = f"worsening {self.worsening:+.4f} (upper end {self.compared:+.4f}) vs margin {self.margin:.4g}"
        if self.verdict == "fail":
            return f"FAIL {where}: {numbers}, adjusted p {_p(self.p_adjusted)} <= {self.alpha:g}"
        if self.verdict == "inconclusive":
            return (f"INCONCLUSIVE {where}: {numbers}; n={self.n_items} detects {self.detectable:+.4f} or more "
                    "(details: report)")
        return f"{self.verdict.upper()} {where}: {numbers}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseResult:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise VerdictError(f"case result has unknown keys {sorted(unknown)}")
        missing = {f.name for f in fields(cls)} - set(data)
        if missing:
            raise VerdictError(f"case result lacks keys {sorted(missing)} (written by another calib-checks version?)")
        verdict = data["verdict"]
        if verdict not in VERDICTS:
            raise VerdictError(f"case verdict {verdict!r} is not one of {VERDICTS}")
        return cls(**dict(data))


@dataclass(frozen=True)
class Decision:
    """The numbers and per-case verdict of one case on plain arrays (see `judge_arrays`).

    `verdict` is the case judged alone (family of one, at `alpha`); `problem` says why it is an `error`.
    """

    base_value: float
    aligned_value: float
    change: float
    relative_change: float | None
    ci_low: float
    ci_high: float
    worsening: float
    compared: float
    se: float
    p_value: float
    margin: float
    detectable: float
    mc_error: float
    alpha: float
    n_items: int
    n_options: int
    too_few: bool
    verdict: str
    problem: str | None = None
    sign_test: str | None = None


def _metric(metric: str) -> bool:
    """The metric's higher_is_worse, or VerdictError for an unknown name."""
    if metric not in METRICS:
        raise VerdictError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return METRICS[metric].higher_is_worse


def detectable_worsening(margin: float, se: float, alpha: float, family_size: int = 1, power: float = POWER) -> float:
    """Smallest worsening a one-sided z-test at level alpha / family_size detects with probability `power`."""
    # z_{1-a} as -z_a: exact for the tiny levels an early look of O'Brien-Fleming spending gives (1 - a rounds to 1)
    return margin + (-normal_quantile(alpha / max(family_size, 1)) + normal_quantile(power)) * se


def verdict_of(p_adjusted: float, alpha: float, compared: float, margin: float, gate: bool, too_few: bool) -> str:
    if not gate:
        return "not-gated"
    if any(math.isnan(x) for x in (p_adjusted, compared, margin)) or p_adjusted <= alpha:
        return "fail"
    if too_few:
        return "error"
    return "pass" if compared <= margin else "inconclusive"


@dataclass(frozen=True)
class _Test:
    """What a case's verdict rests on: the worsening's estimate, the upper end of its interval, se, p-value."""

    worsening: float
    compared: float
    se: float
    p_value: float
    sign_test: str | None = None


def _estimate(boot: BootstrapResult, method: str) -> float:
    """The point estimate an interval method is centred on (bias-corrected for the normal interval)."""
    return boot.centre if method == "normal" else boot.change


def _directed_test(boot: BootstrapResult, margin: float, rule: Rule, higher_is_worse: bool) -> _Test:
    """H0 "sign x change <= margin", sign = +1 when higher is worse, -1 otherwise."""
    sign = 1.0 if higher_is_worse else -1.0
    lo, hi = boot.interval(rule.interval)
    return _Test(worsening=sign * _estimate(boot, rule.interval), compared=max(sign * lo, sign * hi),
                 se=boot.se, p_value=boot.p_value(margin, rule.interval, higher_is_worse))


#: A signed metric's sides: the aligned model miscalibrated in the base's direction of over- (+1) or
#: under-confidence (-1), and the two contrasts that must both exceed the margin on that side.
SIDES = (("over", 1.0), ("under", -1.0))
CONTRASTS = (("change", -1.0), ("sum", 1.0))  # base weight relative to the aligned model's


def _contrast_level(confidence: float) -> float:
    """The two-sided confidence of each contrast's interval in `_sign_aware_test`: the two contrasts share the
    rule's upper tail (Bonferroni), so each interval leaves half of it."""
    return 1.0 - (1.0 - confidence) / 2.0


def upper_end_quantile(confidence: float, signed: bool) -> float:
    """The normal quantile of the upper end a case passes on (`compared`): the upper end of a two-sided interval
    at the rule's confidence, ``(1 + confidence) / 2``; for a signed metric, of each contrast's interval at
    `_contrast_level`, ``1 - (1 - confidence) / 4``. `planning` sizes a pass with it."""
    level = _contrast_level(confidence) if signed else confidence
    return 1.0 - (1.0 - level) / 2.0


def _sign_aware_test(boot: BootstrapResult, margin: float, rule: Rule) -> _Test:
    """Intersection-union test of H0 "|a| - |b| <= margin" for a signed metric (a = aligned, b = base values).

    Since |b| = max(b, -b), ``a - |b| = min(a - b, a + b)`` and ``|a| - |b| = max(a - |b|, -a - |b|)``, so the
    worsening exceeds the margin exactly when, on one side s in {+1 (over), -1 (under)}, BOTH contrasts
    ``s (a - b)`` (the signed change) and ``s (a + b)`` (the sum) exceed it. Each contrast is a difference or
    sum of two means over the same resampled items, smooth everywhere, so its normal p-value is as honest as
    the change's; the |.| is never bootstrapped (its bootstrap is inconsistent at a calibrated model).

    * side p-value ``p_s = max`` of its two contrasts' one-sided p-values (an intersection-union test: level
      alpha when each part is); ``p = min(p_over, p_under)``. The sides' alternatives are disjoint and
      rejecting both would need the precise signed change to be shown above +margin and below -margin at
      once, so the min adds nothing measurable to the level (docs/GATE.md has the measured null rates);
    * ``worsening = |a_c| - |b_c|`` from the contrasts' estimates (``max_s min(s d_c, s s_c)``);
    * ``compared = max_s min(upper end of s d, upper end of s s)``, each upper end one-sided at level
      (1 - confidence)/4 (Bonferroni over the two contrasts), so it bounds |a| - |b| from above with
      probability >= (1 + confidence)/2, as the upper end of an unsigned metric's interval does;
    * ``se`` is the bootstrap sd of the contrast that bound the deciding side (the larger p-value), and
      ``sign_test`` names it: ``over:change``, ``over:sum``, ``under:change`` or ``under:sum``.

    Under a calibrated base the sum binds: it has about twice one model's se, the price of never failing a
    model that moved toward calibration (no valid test of this H0 does much better; docs/GATE.md).
    """
    level = _contrast_level(rule.confidence)
    sides = []  # per side: (p, -estimate, name, binding contrast, its se, estimate, upper end)
    for side, s in SIDES:
        parts = {name: boot.contrast(s, s * base_weight, level) for name, base_weight in CONTRASTS}
        p = {name: c.p_value(margin, rule.interval) for name, c in parts.items()}
        binding = max(parts, key=lambda name: p[name])
        if any(math.isnan(v) for v in p.values()):
            binding = next(name for name, v in p.items() if math.isnan(v))
        estimate = min(_estimate(c, rule.interval) for c in parts.values())
        upper = min(c.interval(rule.interval)[1] for c in parts.values())
        sides.append((p[binding], -estimate, side, binding, parts[binding].se, estimate, upper))
    if any(math.isnan(x[0]) for x in sides):  # never let max()/min() drop a NaN: `_verdict` fails a NaN case
        return _Test(worsening=math.nan, compared=math.nan, se=math.nan, p_value=math.nan, sign_test="nan")
    p_value, _, side, binding, se, _, _ = min(sides)  # the smaller p-value; on a tie the larger worsening
    return _Test(worsening=max(x[5] for x in sides), compared=max(x[6] for x in sides), se=se, p_value=p_value,
                 sign_test=f"{side}:{binding}")


def judge_arrays(base_probs: np.ndarray, aligned_probs: np.ndarray, labels: np.ndarray, metric: str, rule: Rule,
                 seed: int = 0, *, alpha: float = BUILTIN_POLICY.alpha) -> Decision:
    """Decide one case, alone in its family, from (N, K) probabilities of both models and the (N,) gold labels.

    The worsening is ``sign x change`` (``_directed_test``), or for a signed metric (``METRICS[m].signed``:
    over-confidence) the change of its absolute value, judged by ``_sign_aware_test``.
    Raises `metrics.MetricInputError` (a ValueError) for invalid inputs (NaN, rows far from summing to 1, ...).
    """
    _metric(metric)
    boot = paired_bootstrap(metric, base_probs, aligned_probs, labels, n_resamples=rule.n_resamples,
                            confidence=rule.confidence, seed=seed, n_bins=rule.n_bins)
    n_options = int(np.shape(base_probs)[1])
    return decide(boot, metric, rule, rule.margin(n_options, boot.base_value), n_options,
                  max_change(metric, n_options), alpha=alpha)


def decide(boot: BootstrapResult, metric: str, rule: Rule, margin: float, n_options: int, limit: float, *,
           alpha: float = BUILTIN_POLICY.alpha) -> Decision:
    """The `Decision` of one case, alone in its family, from its paired bootstrap (`judge_arrays`; also a pooled
    case's, calib_checks/pooled.py): `margin` is the case's effective margin, `limit` the largest worsening the
    metric can show on its items (a gated margin at or above it is an error), `n_options` the K reported."""
    higher_is_worse = _metric(metric)
    lo, hi = boot.interval(rule.interval)
    test = (_sign_aware_test(boot, margin, rule) if METRICS[metric].signed
            else _directed_test(boot, margin, rule, higher_is_worse))
    too_few = boot.n_items < rule.min_items
    problem = None
    if rule.gate and margin >= limit:
        verdict = "error"
        problem = (f"margin {margin:g} can never be exceeded: the {METRICS[metric].display_name} worsening is at most "
                   f"{limit:g} on {n_options}-option items; lower max_increase"
                   + (" or max_relative_increase" if rule.max_relative_increase is not None else "")
                   + " or set gate = false")
    else:
        verdict = verdict_of(test.p_value, alpha, test.compared, margin, rule.gate, too_few)
    return Decision(
        base_value=boot.base_value,
        aligned_value=boot.aligned_value,
        change=boot.change,
        relative_change=boot.change / boot.base_value if boot.base_value != 0 else None,
        ci_low=lo,
        ci_high=hi,
        worsening=test.worsening,
        compared=test.compared,
        se=test.se,
        p_value=test.p_value,
        margin=margin,
        detectable=detectable_worsening(margin, test.se, alpha, 1),
        mc_error=boot.mc_error(rule.interval),
        alpha=alpha,
        n_items=boot.n_items,
        n_options=n_options,
        too_few=too_few,
        verdict=verdict,
        problem=problem,
        sign_test=test.sign_test,
    )


def _p(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isnan(x):
        return "NaN"
    return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"


def _family_text(case: CaseResult) -> str:
    group = f"chain {case.chain}" if case.chain else f"pair {case.pair}"
    if case.family_size <= 1:
        return "this case alone" if case.family == "case" else f"the only gated case of {group}"
    return f"weighted Holm over the {case.family_size} gated cases of {group}"


_CONTRAST_TEXT = {"change": "signed change", "sum": "sum of both values"}


def _detectable(case: CaseResult) -> str:
    if case.detectable is None:
        return "none at this look (it spends no false-alarm rate on this case: judge more items)"
    return f"{case.detectable:+.4f} or more"


def message(case: CaseResult) -> str:
    """The case's one-line message, from its fields (so the family correction can rewrite it)."""
    name = METRICS[case.metric].display_name if case.metric in METRICS else case.metric
    where = f"{case.task} {case.extractor}"
    rel = "" if case.relative_change is None else f" ({case.relative_change:+.1%})"
    numbers = (f"{name} {case.base_value:.4f} -> {case.aligned_value:.4f}, change {case.change:+.4f}{rel} "
               f"[{case.confidence:.0%} {case.ci_method} CI {case.ci_low:+.4f}, {case.ci_high:+.4f}; MC error "
               f"{case.mc_error:.1g}], n={case.n_items}, K={case.n_options}")
    rule_text = f"rule: {Rule(**case.rule).describe(case.metric)} ({case.rule_source})"
    test = (f"worsening {case.worsening:+.4f} (upper end {case.compared:+.4f}) vs margin {case.margin:.4g}: p="
            f"{_p(case.p_value)}, adjusted p={_p(case.p_adjusted)} ({_family_text(case)}, alpha {case.alpha:g})")
    if case.sign_test is not None:
        side, binding = case.sign_test.split(":")
        test = (f"|{name}| {abs(case.base_value):.4f} -> {abs(case.aligned_value):.4f} (sign-aware test: its "
                f"{side}-confident side, bound by the {_CONTRAST_TEXT[binding]}), {test}")
    if case.verdict == "not-gated":
        return f"REPORT ONLY (gate = false) {where}: {numbers}; {test}; {rule_text}"
    if case.verdict == "error":  # too few items (other errors keep their own message)
        return (f"ERROR {case.metric} on {case.task} ({case.extractor}): n={case.n_items} < min_items="
                f"{case.rule['min_items']}: too few items to tell; lower min_items in thresholds.toml or score more "
                f"items; {numbers}; {test}; detectable worsening {_detectable(case)}; {rule_text}")
    if case.verdict == "fail":
        return f"FAIL {where}: {numbers}; {test} <= alpha: worse than the margin; {rule_text}"
    if case.verdict == "pass":
        return f"pass {where}: {numbers}; {test}; upper end within the margin; {rule_text}"
    level = f"{case.level:.2g}" if case.level is not None else f"{case.alpha:g}"
    return (f"INCONCLUSIVE {where}: {numbers}; {test}: neither shown worse than the margin nor within it; these "
            f"items detect a worsening of {_detectable(case)} ({POWER:.0%} power, one-sided z-test at this case's "
            f"level {level}); {rule_text}")


def case_from_decision(d: Decision, *, pair: str, base: str, aligned: str, task: str, extractor: str, metric: str,
                       rule: Rule, seed: int = 0) -> CaseResult:
    """The CaseResult of a `judge_arrays` decision (what `judge_case` returns for valid scores)."""
    case = CaseResult(
        pair=pair, base=base, aligned=aligned, task=task, extractor=extractor, metric=metric,
        base_value=d.base_value, aligned_value=d.aligned_value, change=d.change, relative_change=d.relative_change,
        ci_low=d.ci_low, ci_high=d.ci_high, ci_method=rule.interval, confidence=rule.confidence,
        n_items=d.n_items, rule=rule.to_json(), rule_source=rule.source, verdict=d.verdict, message="",
        higher_is_worse=_metric(metric), compared=d.compared, seed=seed, worsening=d.worsening, se=d.se,
        p_value=None if d.problem else d.p_value, p_adjusted=None if d.problem else d.p_value, margin=d.margin,
        detectable=d.detectable, mc_error=d.mc_error, alpha=d.alpha, family="case", family_size=1,
        n_options=d.n_options, sign_test=d.sign_test,
    )
    if d.problem:
        case.message = f"ERROR {metric} on {task} ({extractor}): {d.problem}"
    else:
        case.message = message(case)
    return case


def error_case(*, pair: str, base: str, aligned: str, task: str, extractor: str, metric: str, rule: Rule,
               message: str, seed: int = 0, n_items: int = 0, alpha: float = BUILTIN_POLICY.alpha) -> CaseResult:
    """An `error` CaseResult (no numbers; it never passes) whose message says why the case cannot be judged."""
    return CaseResult(
        pair=pair, base=base, aligned=aligned, task=task, extractor=extractor, metric=metric, base_value=None,
        aligned_value=None, change=None, relative_change=None, ci_low=None, ci_high=None, ci_method=rule.interval,
        confidence=rule.confidence, n_items=n_items, rule=rule.to_json(), rule_source=rule.source, verdict="error",
        message=f"ERROR {metric} on {task} ({extractor}): {message}", higher_is_worse=_metric(metric), seed=seed,
        alpha=alpha,
    )


def _same_items(base: TaskScores, aligned: TaskScores) -> tuple[TaskScores, str | None]:
    """`aligned` in the base's item order, or why the two sides cannot be compared item for item (a side read
    from files may list its items in another order; what matters is that both scored the same ids)."""
    base_ids, aligned_ids = base.ids, aligned.ids
    if base_ids == aligned_ids:
        return aligned, None
    only_base = [i for i in base_ids if i not in set(aligned_ids)]
    only_aligned = sorted(set(aligned_ids) - set(base_ids))
    if only_base or only_aligned or len(set(aligned_ids)) != len(aligned_ids):
        which = (f"item {only_base[0]!r} is missing on the aligned side" if only_base else
                 f"item {only_aligned[0]!r} is missing on the base side" if only_aligned else "an item is repeated")
        return aligned, (f"base and aligned scored different items ({len(base_ids)} vs {len(aligned_ids)}; {which}); "
                         "score both on the same items")
    return aligned.select(base_ids), None


def paired_arrays(base: TaskScores, aligned: TaskScores, extractor: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(base probabilities, aligned probabilities in the base's item order, gold labels) of one task, or why the
    two sides cannot be judged against each other item for item (a one-line problem): another task, other items,
    no items, an extractor a side lacks, gold labels that differ. Per-task and pooled cases both start here."""
    if base.task != aligned.task:
        return f"base scored task {base.task!r} but aligned scored {aligned.task!r}"
    aligned, problem = _same_items(base, aligned)
    if problem is not None:
        return problem
    n = len(base.records)
    if n == 0:
        return "no items were scored (empty data set or --limit 0); an empty case cannot pass"
    for role, scores in (("base", base), ("aligned", aligned)):
        lacking = scores.lacking(extractor)
        if lacking:  # e.g. continuation-min from lm-eval, which logs only sums: never judged as a pass
            return (f"{extractor} is not available from the {role} side ({scores.stats.source}) on {base.task}: "
                    f"{lacking} of {n} items lack it; drop it from --calib-extractors or score that side with "
                    "calib-checks")
    labels = base.labels()
    if not np.array_equal(labels, aligned.labels()):
        i = int(np.flatnonzero(labels != aligned.labels())[0])
        return (f"base and aligned disagree on the gold label of item {base.ids[i]!r} of {base.task} "
                f"({labels[i]} vs {aligned.labels()[i]}); they must be scored on the same items")
    return base.probs(extractor), aligned.probs(extractor), labels


def judge_case(base: TaskScores, aligned: TaskScores, extractor: str, metric: str, rule: Rule, seed: int = 0,
               *, pair: str | None = None, alpha: float = BUILTIN_POLICY.alpha) -> CaseResult:
    """Judge one case as its own family (raw p = adjusted p, level `alpha`); `apply_family` corrects a run.

    Data problems give an `error` CaseResult (never a pass): different items or labels on the two sides, no
    items, an extractor a side cannot provide. Misuse raises VerdictError. `pair` names
    the pair in the result (default: the aligned model's label).
    """
    from calib_checks.records import EXTRACTORS

    if extractor not in EXTRACTORS:
        raise VerdictError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")

    def error(problem: str, n_items: int = 0) -> CaseResult:
        return error_case(pair=pair or aligned.model_label, base=base.model_label, aligned=aligned.model_label,
                          task=base.task, extractor=extractor, metric=metric, rule=rule, message=problem, seed=seed,
                          n_items=n_items, alpha=alpha)

    checked = paired_arrays(base, aligned, extractor)
    if isinstance(checked, str):
        return error(checked, len(base.records))
    labels = checked[2]
    n = len(labels)
    try:  # the probabilities are finite: records refuse non-finite scores when they are made
        d = judge_arrays(checked[0], checked[1], labels, metric, rule, seed, alpha=alpha)
    except MetricInputError as exc:
        return error(str(exc), n)
    return case_from_decision(d, pair=pair or aligned.model_label, base=base.model_label,
                              aligned=aligned.model_label, task=base.task, extractor=extractor, metric=metric,
                              rule=rule, seed=seed)


def run_verdict(verdicts: Sequence[str], complete: bool, policy: GatePolicy = BUILTIN_POLICY, *,
                partial: dict | None = None) -> tuple[str, str]:
    """The run's verdict and a one-line reason, from its cases' verdicts; `policy.blocks` is the one rule of what
    stops a release.

    incomplete: the session did not end normally (whatever the cases say, they are not all there);
    regression: a case that blocks is a fail, or an inconclusive under ``on_inconclusive = "fail"``; error: the
    only blocking cases could not be judged (a case that never ran included), or there were no cases at all, or
    none was gated; ship: nothing blocks. An inconclusive case under ``on_inconclusive = "pass"`` does not stop a
    release, and the reason says how many there were: "no regression detected" is not "shown to be within the
    thresholds". A partial run (an explicit opt-in) says so.
    """
    counts = {verdict: 0 for verdict in VERDICTS}
    for verdict in verdicts:
        counts[verdict] += 1
    total = sum(counts.values())
    part = (f" PARTIAL RUN: {partial['judged']} of {partial['expected']} expected cases judged "
            "(--calib-allow-partial)." if partial else "")
    if not complete:
        return "incomplete", f"the run did not finish: {total} case(s) were judged before it stopped"
    regressions = {v: counts[v] for v in ("fail", "inconclusive") if counts[v] and policy.blocks(v)}
    if regressions:
        blocking = regressions.get("inconclusive", 0)
        inconclusive = f" and {blocking} inconclusive (on_inconclusive = \"fail\")" if blocking else ""
        return "regression", f"{counts['fail']} of {total} case(s) failed their threshold{inconclusive}.{part}"
    if counts["error"]:
        return "error", f"{counts['error']} of {total} case(s) could not be judged.{part}"
    if total == 0:
        return "error", "no case was judged: check the selected tasks, pairs and thresholds"
    gated = counts["pass"] + counts["inconclusive"]
    if gated == 0:
        return "error", f"none of the {total} case(s) is gated by a threshold: nothing was checked"
    if counts["inconclusive"]:
        return "ship", (f"no regression detected: {counts['pass']} of {gated} gated case(s) passed, "
                        f"{counts['inconclusive']} INCONCLUSIVE (these items cannot show the change is within the "
                        f"threshold; each case states the smallest worsening they could detect).{part}")
    return "ship", f"all {counts['pass']} gated case(s) passed ({counts['not-gated']} reported, not gated).{part}"


def stopped_early(case: CaseResult, reason: str) -> CaseResult:
    """A case of a family that stopped at an interim look because a case failed there: its numbers are the
    look's. A case that is an error only for having fewer items than `min_items` there is reported as
    inconclusive instead (it was not judged on the whole budget, which the family no longer needs: the run
    fails already); the message says where and why the family stopped."""
    if case.verdict == "error" and case.p_value is not None:
        case = replace(case, verdict="inconclusive")
        case.message = message(case)
    return replace(case, message=f"{case.message} [stopped early: {reason}; n={case.n_items}]")

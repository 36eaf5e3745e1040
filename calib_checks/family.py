"""The family correction: which gated cases of a family fail at a sequential look, and their adjusted p-values.

A family is a pair's gated cases, or all comparisons of a chain together (`policy.family = "pair"`), or each case
alone (`"case"`). Its cases are tested by the sequentially rejective graphical procedure (calib_checks/graphical.py,
Bretz et al. 2009) in its group-sequential form (Maurer & Bretz 2013): the family's false-alarm rate alpha is split
over its cases by weights, the pooled cases (calib_checks/pooled.py) sharing `policy.pooled_weight` of it and the
per-task cases the rest, within each group in proportion to `policy.metric_weights`; each case's local rate
(weight x alpha) is spent over the family's looks by the Lan-DeMets O'Brien-Fleming-type function
(calib_checks/spending.py), so a case at look j is rejected when its p-value at some look k <= j is at most the
nominal level of look k for its current rate. A rejected pooled case passes its weight to the per-task cases of
its extractor and metric, a rejected per-task case to its pooled case (`graphical.pooled_design`, "matched").
With no pooled cases, equal weights and one look this is Holm's step-down.

The family false-alarms (rejects any true hypothesis at any look) with probability at most alpha: the procedure
is a closed test of group-sequential weighted Bonferroni tests, each spending its rate over the looks.

`p_adjusted` of a case is ``min_k p_k x alpha / level_k``, with level_k the nominal level of look k for its weight
(the weight it had when rejected, else its final one), capped at 1: a case fails exactly when it is <= alpha, so
the verdict rule (`verdicts.verdict_of`) stays "adjusted p <= alpha". `level` is the nominal level of the current
look for that weight; `detectable` the smallest worsening a one-sided z-test at it detects with 80 % power
(None at a look that spends nothing on the case: an early look of O'Brien-Fleming spending can).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from calib_checks.graphical import pooled_design, sequential_graphical_test
from calib_checks.pooled import POOLED_TASK
from calib_checks.spending import look_levels
from calib_checks.thresholds import BUILTIN_POLICY
from calib_checks.verdicts import detectable_worsening, message, verdict_of

if TYPE_CHECKING:
    from calib_checks.thresholds import GatePolicy
    from calib_checks.verdicts import CaseResult

__all__ = ["apply_family", "correct_look", "in_family"]


def in_family(case: CaseResult) -> bool:
    """Gated and judged: has a p-value (data errors and report-only cases do not take part)."""
    return bool(case.rule.get("gate")) and case.p_value is not None and case.verdict != "not-gated"


def _plan(plan: Sequence[int]) -> tuple[float, ...]:
    # Items per task at each look; a family without items (its cases error) still gets one look to spend on.
    return tuple(float(n) for n in plan) if plan and plan[-1] > 0 else (1.0,)


def correct_look(rows: Sequence[Sequence[CaseResult]], policy: GatePolicy, plan: Sequence[int]) -> list[CaseResult]:
    """The family's cases at its latest look, corrected (module docstring).

    `rows[k]`: every case of ONE family judged alone at look k, in the same order at every look, for the looks
    reached so far (a case that had no p-value at a look counts as p = 1 there); `plan`: the family's items per
    task at each of its looks, the last being every item. Returns the last row with `p_adjusted`, `alpha`,
    `family`, `family_size`, `level`, `detectable`, verdict and message set for its members (`in_family`);
    other cases are returned unchanged.
    """
    current = list(rows[-1])
    members = [i for i, c in enumerate(current) if in_family(c)]
    groups = ([members] if members else []) if policy.family == "pair" else [[i] for i in members]
    sizes = _plan(plan)
    look = len(rows) - 1
    for group in groups:
        keys = [(current[i].pair, current[i].task, current[i].extractor, current[i].metric) for i in group]
        graph = pooled_design(keys, policy.pooled_weight, "matched", pooled_task=POOLED_TASK,
                              metric_weights=policy.metric_weights)
        p_by_look = [[1.0 if row[i].p_value is None else row[i].p_value for i in group] for row in rows]
        result = sequential_graphical_test(p_by_look, graph, policy.alpha, sizes, stop_at_first=False)
        for position, i in enumerate(group):
            case = current[i]
            local = float(result.weights[position]) * policy.alpha
            levels = look_levels(sizes, local) if local > 0 else (0.0,) * len(sizes)
            ratios = [p_by_look[k][position] * policy.alpha / levels[k] for k in range(look + 1) if levels[k] > 0]
            p_adjusted = min(1.0, min(ratios, default=1.0))
            if result.rejected[position]:  # float rounding must not turn a rejection into a pass
                p_adjusted = min(p_adjusted, policy.alpha)
            level = levels[look]
            too_few = case.n_items < int(case.rule["min_items"])
            assert case.compared is not None and case.margin is not None and case.se is not None
            new = replace(case, p_adjusted=p_adjusted, alpha=policy.alpha, family=policy.family,
                          family_size=len(group), level=level,
                          detectable=detectable_worsening(case.margin, case.se, level, 1) if level > 0 else None,
                          verdict=verdict_of(p_adjusted, policy.alpha, case.compared, case.margin, True, too_few))
            new.message = message(new)
            current[i] = new
    return current


def apply_family(cases: Sequence[CaseResult], policy: GatePolicy = BUILTIN_POLICY) -> list[CaseResult]:
    """The cases of one or more families judged at one look (all their items at once): each family (a pair, or a
    chain: `CaseResult.chain`) corrected by `correct_look`. Returns new results in the input order."""
    by_family: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        by_family.setdefault(case.chain or case.pair, []).append(i)
    out = list(cases)
    for members in by_family.values():
        for i, new in zip(members, correct_look([[cases[i] for i in members]], policy, [1])):
            out[i] = new
    return out

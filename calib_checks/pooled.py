"""Pooled cases: one case per extractor x gated metric over the items of ALL tasks of a pair at once.

A per-task case sees a few hundred items; a small worsening spread over every task (a 70B-class release: logits /
0.85) is then invisible in each of them, while the same worsening measured on all tasks' items together has an se
about sqrt(number of tasks) smaller. A pooled case judges that: for one extractor and one metric, the change of the
metric computed over the union of the tasks' items (or an item-weighted mean of per-task values, below), by a
paired bootstrap and the same decision code as a per-task case (`verdicts.decide`: the same p-value rules, the
sign-aware test for over-confidence).

How each metric pools (`pooling`), with n_t the items of task t and N = sum_t n_t:

* ``"union"``: the metric computed once over all N items, every task's probability table padded with zero
  columns to the largest K (padding changes no top-label quantity). Over-confidence, Brier, NLL and accuracy
  are means over items, so this IS the item-weighted mean of their per-task values; top-label ECE (and MCE,
  the debiased top-label errors) bins the confidences of all items together (one set of bins across tasks).
* ``"mean"``: the classwise metrics (SCE and the classwise debiased errors) average K per-class errors and K
  differs across tasks (PIQA 2, most 4, ARC padded to 5), so there is no common set of classes to pool over.
  Their pooled value is the item-weighted mean of the per-task values, ``sum_t (n_t / N) SCE_t``, each SCE_t
  over its own K_t columns.

The pooled margin is the item-weighted mean of the per-task rules' effective margins,
``margin = sum_t (n_t / N) rule_t.margin(K_t, base value_t)``: for SCE with ``scale = "2/K"`` that is
``max_increase x sum_t (n_t / N) 2 / K_t`` (the 2/K scaling applied per task, consistent with the mean of
per-task SCE); for ECE and over-confidence with one margin everywhere it is that margin. The largest worsening
the pooled metric can show is the same mean of the per-task bounds (``thresholds.max_change``).

The bootstrap is stratified: each replicate resamples every task WITHIN itself, so every task keeps its n_t
items in every replicate (tasks are fixed strata, not a random draw), and a task given cluster labels (MMLU
subjects, shared passages) is resampled by whole clusters, as `metrics.paired_bootstrap` does with
``clusters``. Task t's resampling stream is child t of ``numpy.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from calib_checks.metrics import (_CHUNK_ENTRIES, METRICS, BootstrapResult, MetricInputError, _cluster_index,
                                  _resample_weights, _summary, _validate, check_bootstrap_arguments)
from calib_checks.selection import POOLED_TASK
from calib_checks.thresholds import BUILTIN_POLICY, Rule, ThresholdsError, max_change, pooled_rule
from calib_checks.verdicts import (CaseResult, Decision, VerdictError, case_from_decision, decide, error_case,
                                   paired_arrays)

if TYPE_CHECKING:
    from calib_checks.records import TaskScores

__all__ = ["POOLED_TASK", "Group", "judge_pooled", "judge_pooled_scores", "pooled_bootstrap", "pooled_margin",
           "pooling"]


#: Metrics whose value depends on the set of classes (classwise): pooled as the item-weighted mean of per-task values.
_CLASSWISE = frozenset({"sce", "debiased_sce", "debiased_sce_sq"})


class Group(NamedTuple):
    """One task's items for a pooled case: (N_t, K_t) probabilities of both models, gold labels, and optional
    cluster labels (one per item: whole clusters are resampled within the task)."""

    task: str
    base_probs: ArrayLike
    aligned_probs: ArrayLike
    labels: ArrayLike
    clusters: ArrayLike | None = None


def pooling(metric: str) -> str:
    """``"mean"`` for classwise metrics (the item-weighted mean of per-task values), ``"union"`` otherwise (the
    metric over all items together). See the module docstring."""
    if metric not in METRICS:
        raise MetricInputError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    return "mean" if metric in _CLASSWISE else "union"


class _Checked(NamedTuple):
    task: str
    base: np.ndarray
    aligned: np.ndarray
    labels: np.ndarray
    cluster_of: np.ndarray | None
    n_clusters: int | None


def _check_groups(groups: Sequence[Group | tuple]) -> list[_Checked]:
    if len(groups) == 0:
        raise MetricInputError("a pooled case needs at least one task's items")
    out = []
    for g in groups:
        g = Group(*g)
        base, y = _validate(g.base_probs, g.labels, f"base_probs of {g.task}")
        aligned, _ = _validate(g.aligned_probs, g.labels, f"aligned_probs of {g.task}")
        if base.shape != aligned.shape:
            raise MetricInputError(f"{g.task}: base_probs {base.shape} and aligned_probs {aligned.shape} must have the "
                                   "same shape (same items)")
        cluster_of, n_clusters = _cluster_index(g.clusters, base.shape[0])
        out.append(_Checked(g.task, base, aligned, y, cluster_of, n_clusters))
    tasks = [c.task for c in out]
    if len(set(tasks)) != len(tasks):
        raise MetricInputError(f"a task appears twice among the pooled groups: {tasks}")
    return out


def _pad(p: np.ndarray, k: int) -> np.ndarray:
    return p if p.shape[1] == k else np.hstack([p, np.zeros((p.shape[0], k - p.shape[1]))])


def pooled_bootstrap(metric: str, groups: Sequence[Group | tuple], n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0, *, n_bins: int = 15) -> BootstrapResult:
    """Stratified paired bootstrap of ``pooled(aligned) - pooled(base)`` over the tasks' items (module docstring).

    `groups`: one `Group` (or a tuple in its order) per task. The result is a `metrics.BootstrapResult` whose
    ``n_items`` is N (all tasks' items), ``n_clusters`` the resampling units of all tasks (clusters of the tasks
    that have them, items of the others) or None when no task has clusters; its intervals, ``contrast``,
    ``p_value`` and ``se`` (the metric's se inflation) mean what they mean for one task.
    """
    mode = pooling(metric)
    name, spec = metric, METRICS[metric]
    checked = _check_groups(groups)
    n_bins = check_bootstrap_arguments(n_resamples, confidence, seed, n_bins)
    sizes = [c.base.shape[0] for c in checked]
    total = sum(sizes)
    k_max = max(c.base.shape[1] for c in checked)

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(checked))]
    if mode == "union":  # one evaluation over all items; replicate r stacks every task's r-th draw
        labels = np.concatenate([c.labels for c in checked])
        on_base = spec.prepare(np.vstack([_pad(c.base, k_max) for c in checked]), labels, n_bins)
        on_aligned = spec.prepare(np.vstack([_pad(c.aligned, k_max) for c in checked]), labels, n_bins)
        ones = np.ones((1, total))
        base_value, aligned_value = float(on_base(ones)[0]), float(on_aligned(ones)[0])
        chunk = max(1, _CHUNK_ENTRIES // (total * k_max))
        draws = [_resample_weights(rng, c.base.shape[0], int(n_resamples), c.cluster_of, chunk)
                 for rng, c in zip(streams, checked)]
        base_reps, aligned_reps = [], []
        for parts in zip(*draws):
            w = np.hstack(parts)
            base_reps.append(on_base(w))
            aligned_reps.append(on_aligned(w))
        b_reps, a_reps = np.concatenate(base_reps), np.concatenate(aligned_reps)
    else:  # the item-weighted mean of per-task values, replicate by replicate (task t's r-th draw)
        base_value = aligned_value = 0.0
        b_reps, a_reps = np.zeros(int(n_resamples)), np.zeros(int(n_resamples))
        for rng, c in zip(streams, checked):
            n_t, share = c.base.shape[0], c.base.shape[0] / total
            on_base, on_aligned = spec.prepare(c.base, c.labels, n_bins), spec.prepare(c.aligned, c.labels, n_bins)
            ones = np.ones((1, n_t))
            base_value += share * float(on_base(ones)[0])
            aligned_value += share * float(on_aligned(ones)[0])
            chunk = max(1, _CHUNK_ENTRIES // (n_t * c.base.shape[1]))
            weights = list(_resample_weights(rng, n_t, int(n_resamples), c.cluster_of, chunk))
            b_reps += share * np.concatenate([on_base(w) for w in weights])
            a_reps += share * np.concatenate([on_aligned(w) for w in weights])
    if not (np.isfinite(b_reps).all() and np.isfinite(a_reps).all()):
        raise MetricInputError(f"metric {name!r} returned a non-finite value on a bootstrap replicate")
    clustered = any(c.cluster_of is not None for c in checked)
    units = sum(c.n_clusters if c.n_clusters is not None else c.base.shape[0] for c in checked)
    return BootstrapResult(
        n_items=total, n_resamples=int(n_resamples), confidence=float(confidence), seed=int(seed), metric=name,
        base_value=base_value, aligned_value=aligned_value, n_clusters=units if clustered else None,
        n_bins=n_bins if spec.binned else None, base_replicates=b_reps, aligned_replicates=a_reps,
        **_summary(aligned_value - base_value, a_reps - b_reps, float(confidence), spec.se_inflation),
    )


def _rules_for(groups: Sequence[Group | tuple], rules: Rule | Sequence[Rule] | Mapping[str, Rule]) -> list[Rule]:
    tasks = [Group(*g).task for g in groups]
    if isinstance(rules, Rule):
        return [rules] * len(tasks)
    if isinstance(rules, Mapping):
        missing = [t for t in tasks if t not in rules]
        if missing:
            raise VerdictError(f"no rule given for task(s) {missing} of the pooled case")
        return [rules[t] for t in tasks]
    out = list(rules)
    if len(out) != len(tasks):
        raise VerdictError(f"{len(out)} rules for {len(tasks)} pooled tasks")
    return out


def pooled_margin(metric: str, groups: Sequence[Group | tuple], rules: Rule | Sequence[Rule] | Mapping[str, Rule]
                  ) -> tuple[float, float]:
    """(margin, limit) of a pooled case: ``sum_t (n_t / N) rule_t.margin(K_t, base value_t)`` and the same mean of
    ``thresholds.max_change(metric, K_t)``; base value_t is task t's base metric (it matters only with
    ``max_relative_increase``)."""
    rule_list = _rules_for(groups, rules)
    spec = METRICS[metric]
    margin = limit = 0.0
    sizes = [np.shape(Group(*g).labels)[0] for g in groups]
    total = float(sum(sizes))
    for g, rule, n in zip(groups, rule_list, sizes):
        g = Group(*g)
        k = int(np.shape(g.base_probs)[1])
        base_value = None
        if rule.max_relative_increase is not None:
            base_value = spec.function(g.base_probs, g.labels, **({"n_bins": rule.n_bins} if spec.binned else {}))
        margin += n / total * rule.margin(k, base_value)
        limit += n / total * max_change(metric, k)
    return margin, limit


def judge_pooled_scores(scores: Sequence[tuple[TaskScores, TaskScores]], extractor: str, metric: str,
                        rules: Sequence[Rule], seed: int = 0, *, pair: str) -> CaseResult:
    """The pooled case of one comparison, extractor and metric from each task's (base, aligned) scores, checked
    item for item as a per-task case is (`verdicts.paired_arrays`): a problem on any task errors the pooled case
    (never a pass), naming the task."""
    base_label, aligned_label = scores[0][0].model_label, scores[0][1].model_label
    groups = []
    for base, aligned in scores:
        checked = paired_arrays(base, aligned, extractor)
        if isinstance(checked, str):
            return error_case(pair=pair, base=base_label, aligned=aligned_label, task=POOLED_TASK,
                              extractor=extractor, metric=metric, rule=rules[0], seed=seed,
                              message=f"ERROR pooled {metric} ({extractor}): {checked}")
        groups.append(Group(base.task, *checked))
    try:
        rule = pooled_rule(rules)
        d = judge_pooled(groups, metric, rules, seed)
    except (VerdictError, ThresholdsError, MetricInputError) as exc:
        return error_case(pair=pair, base=base_label, aligned=aligned_label, task=POOLED_TASK, extractor=extractor,
                          metric=metric, rule=rules[0], seed=seed, message=f"ERROR pooled {metric} ({extractor}): {exc}")
    return case_from_decision(d, pair=pair, base=base_label, aligned=aligned_label, task=POOLED_TASK,
                              extractor=extractor, metric=metric, rule=rule, seed=seed)


def judge_pooled(groups: Sequence[Group | tuple], metric: str, rules: Rule | Sequence[Rule] | Mapping[str, Rule],
                 seed: int = 0, *, alpha: float = BUILTIN_POLICY.alpha) -> Decision:
    """Decide one pooled case (one extractor, one metric, all tasks' items), alone in its family, as
    `verdicts.judge_arrays` decides a per-task case: a `verdicts.Decision` whose p-value, worsening, interval
    and verdict follow the same rules (`verdicts.decide`; the sign-aware test for over-confidence).

    `groups`: (task, base_probs, aligned_probs, labels, clusters-or-None) per task; `rules`: one Rule for all
    tasks, one per group, or a mapping task -> Rule. The rules' ``interval``, ``confidence``, ``n_resamples``,
    ``n_bins`` and ``gate`` must agree (VerdictError otherwise); the margin is `pooled_margin`'s; the case is
    "too few items" when N is below the largest ``min_items`` (`thresholds.pooled_rule`). ``n_options`` is the largest K. Build the
    CaseResult with ``verdicts.case_from_decision(d, task=POOLED_TASK, ...)``.
    """
    if metric not in METRICS:
        raise VerdictError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    rule_list = _rules_for(groups, rules)
    rule = pooled_rule(rule_list)
    boot = pooled_bootstrap(metric, groups, rule.n_resamples, rule.confidence, seed, n_bins=rule.n_bins)
    margin, limit = pooled_margin(metric, groups, rule_list)
    k_max = max(int(np.shape(Group(*g).base_probs)[1]) for g in groups)
    if not math.isfinite(margin):
        raise VerdictError(f"the pooled {metric} case's margin is not finite ({margin})")
    return decide(boot, metric, rule, margin, k_max, limit, alpha=alpha)

"""Graphical multiple testing: weighted, sequentially rejective Bonferroni tests over a family of cases.

Bretz, Maurer, Brannath & Posch (2009), "A graphical approach to sequentially rejective multiple test
procedures", Statistics in Medicine 28: the family's rate alpha is split over hypotheses by weights w_i (sum <= 1);
H_i is rejected when ``p_i <= w_i alpha``; a rejected hypothesis passes its weight on along the edges of a
transition matrix G (g_ij >= 0, g_ii = 0, rows sum to <= 1), and the graph is updated (their Algorithm 1):

    w_l <- w_l + w_j g_jl,    g_lk <- (g_lk + g_lj g_jk) / (1 - g_lj g_jl)  (0 when the denominator is 0).

The procedure is the closure of weighted Bonferroni tests, so it controls the family-wise error rate strongly at
alpha, and its rejections do not depend on the order in which rejectable hypotheses are taken. Holm's step-down
is the special case of equal weights 1/m and the complete graph g_ij = 1/(m - 1) (`holm_graph`, tested).

Group-sequential form (Maurer & Bretz 2013, "Multiple testing in group sequential trials using graphical
approaches", Statistics in Biopharmaceutical Research 5): each hypothesis's local rate w_i alpha gets its own
spending boundary over the looks (`spending.look_levels`); at look j, H_i is rejected when its p-value at some
look k <= j is at most the nominal level of look k for its CURRENT local rate (a rate increased by a rejection
applies to the looks already seen: each intersection hypothesis of the closure is tested by a group-sequential
weighted Bonferroni test over all looks so far). `sequential_graphical_test` does that, optionally stopping at the
first look with a rejection (the gate's stop-for-fail).

Because the first rejection of any graphical procedure needs ``p_i <= w_i alpha`` (or its look's level) at the
INITIAL weights, whether a family rejects anything at all, and at which look, depends on the initial weights
only: the transition matrix decides which further cases fail once one has (tested). `pooled_design` builds the
graph of pooled cases (calib_checks/pooled.py) next to per-task cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from calib_checks.spending import look_levels

__all__ = ["PASSING", "Graph", "GraphicalResult", "SequentialResult", "graphical_adjusted", "graphical_test",
           "holm_graph", "pooled_design", "sequential_graphical_test"]

_TOL = 1e-9


@dataclass(frozen=True)
class Graph:
    """Initial weights (m,), transition matrix (m, m) and optional names of the hypotheses (validated)."""

    weights: np.ndarray
    transitions: np.ndarray
    names: tuple[Hashable, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        g = np.asarray(self.transitions, dtype=np.float64)
        m = w.size
        if g.shape != (m, m):
            raise ValueError(f"transitions must be ({m}, {m}) for {m} weights, got {g.shape}")
        if not (np.isfinite(w).all() and np.isfinite(g).all()):
            raise ValueError("weights and transitions must be finite")
        if (w < -_TOL).any() or w.sum() > 1 + _TOL:
            raise ValueError(f"weights must be >= 0 and sum to at most 1, got sum {w.sum():.6g}")
        if (g < -_TOL).any() or np.abs(np.diag(g)).max(initial=0.0) > _TOL or (g.sum(axis=1) > 1 + _TOL).any():
            raise ValueError("transitions must be >= 0 with a zero diagonal and rows summing to at most 1")
        if self.names is not None and len(self.names) != m:
            raise ValueError(f"{len(self.names)} names for {m} hypotheses")
        object.__setattr__(self, "weights", np.clip(w, 0.0, None))
        object.__setattr__(self, "transitions", np.clip(g, 0.0, None))

    @property
    def size(self) -> int:
        return int(self.weights.size)


def holm_graph(m: int) -> Graph:
    """Holm's procedure as a graph: weights 1/m, every hypothesis passes its weight equally to all others."""
    if m < 1:
        raise ValueError("a family needs at least one hypothesis")
    g = np.full((m, m), 1.0 / (m - 1)) if m > 1 else np.zeros((1, 1))
    np.fill_diagonal(g, 0.0)
    return Graph(np.full(m, 1.0 / m), g)


def _reject(weights: np.ndarray, g: np.ndarray, active: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Bretz et al.'s Algorithm 1 update after rejecting j: the new weights and transitions of the others."""
    w = weights.copy()
    w[active] += weights[j] * g[j, active]
    w[j] = 0.0
    denom = 1.0 - g[:, j] * g[j, :]  # 1 - g_lj g_jl for every l
    with np.errstate(divide="ignore", invalid="ignore"):
        new = (g + np.outer(g[:, j], g[j, :])) / denom[:, None]
    new[denom <= _TOL, :] = 0.0
    new[j, :] = 0.0
    new[:, j] = 0.0
    new[~active, :] = 0.0
    new[:, ~active] = 0.0
    np.fill_diagonal(new, 0.0)
    return w, np.clip(new, 0.0, None)


def _clean(p_values: Sequence[float], m: int) -> np.ndarray:
    """p-values as float64; a NaN or None counts as 0 (it fails, as in verdicts.holm)."""
    p = np.array([0.0 if (x is None or math.isnan(x)) else float(x) for x in p_values], dtype=np.float64)
    if p.size != m:
        raise ValueError(f"{p.size} p-values for {m} hypotheses")
    return p


@dataclass(frozen=True)
class GraphicalResult:
    """`rejected` (m,) bools, the hypotheses in the order they were rejected, and the weights at the end."""

    rejected: np.ndarray
    order: tuple[int, ...]
    weights: np.ndarray


def graphical_test(p_values: Sequence[float], graph: Graph, alpha: float, *,
                   level: Callable[[int, float], float] | None = None) -> GraphicalResult:
    """The sequentially rejective graphical procedure at family rate `alpha`.

    H_i is rejectable when ``p_i <= level(i, w_i alpha)`` (default: ``w_i alpha`` itself; pass e.g. a group-sequential
    nominal level of the local rate). Among the rejectable ones the smallest ``p_i / level`` is rejected first (the
    final set does not depend on this choice), the graph is updated, and the search repeats until none is left.
    """
    p = _clean(p_values, graph.size)
    w, g = graph.weights.copy(), graph.transitions.copy()
    active = np.ones(graph.size, dtype=bool)
    order: list[int] = []
    while active.any():
        best, best_ratio = -1, math.inf
        for i in np.flatnonzero(active):
            bound = w[i] * alpha if level is None else (level(int(i), w[i] * alpha) if w[i] > 0 else 0.0)
            if bound > 0.0 and p[i] <= bound and p[i] / bound < best_ratio:
                best, best_ratio = int(i), p[i] / bound
        if best < 0:
            break
        active[best] = False
        w, g = _reject(w, g, active, best)
        order.append(best)
    return GraphicalResult(~active, tuple(order), w)


def graphical_adjusted(p_values: Sequence[float], graph: Graph) -> list[float]:
    """Adjusted p-values of the graphical procedure (H_i is rejected at level alpha iff its adjusted p <= alpha):
    repeatedly take the active hypothesis with the smallest ``p_i / w_i``, its adjusted value is the running
    maximum of those ratios (capped at 1), reject it and update the graph. A hypothesis whose weight stays 0 gets 1.
    """
    p = _clean(p_values, graph.size)
    w, g = graph.weights.copy(), graph.transitions.copy()
    active = np.ones(graph.size, dtype=bool)
    adjusted = np.ones(graph.size)
    running = 0.0
    while active.any():
        idx = np.flatnonzero(active)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(w[idx] > 0, p[idx] / np.where(w[idx] > 0, w[idx], 1.0), math.inf)
        k = int(np.argmin(ratio))
        if not math.isfinite(ratio[k]):
            break
        j = int(idx[k])
        running = max(running, float(ratio[k]))
        adjusted[j] = min(1.0, running)
        active[j] = False
        w, g = _reject(w, g, active, j)
    return [float(x) for x in adjusted]


@dataclass(frozen=True)
class SequentialResult:
    """`rejected` (m,) bools; `look` (m,) the 0-based look at which each was rejected (-1: never); `stopped_at` the
    last look judged (0-based); `weights` (m,) each hypothesis's weight when it was rejected, else at the end (its
    local rate is weight x alpha: what its adjusted p-value is measured against)."""

    rejected: np.ndarray
    look: np.ndarray
    stopped_at: int
    weights: np.ndarray


def sequential_graphical_test(p_by_look: np.ndarray | Sequence[Sequence[float]], graph: Graph, alpha: float,
                              sizes: Sequence[int | float], *, planned: float | None = None,
                              stop_at_first: bool = True, recheck_earlier: bool = True) -> SequentialResult:
    """The graphical procedure over group-sequential looks (Maurer & Bretz 2013; module docstring).

    `p_by_look`: (looks, m) one-sided p-values of every hypothesis at every look (rows beyond the looks reached may
    be absent); `sizes`: the items at each look, strictly increasing, the last the final look (``planned`` as in
    `spending.look_levels`). At look j, H_i is rejectable when ``p[k, i] <= look_levels(sizes, w_i alpha)[k]`` for
    k = j, or for some k <= j with `recheck_earlier` (the current local rate's boundary at the looks already seen).
    With `stop_at_first` the family ends at the first look where anything is rejected (what is rejected at that
    look, after passing weights on, is reported); otherwise it goes on to the last look.
    """
    p_all = np.asarray([_clean(row, graph.size) for row in p_by_look])
    n_looks = min(len(sizes), p_all.shape[0])
    sizes_t = tuple(float(x) for x in sizes)
    w, g = graph.weights.copy(), graph.transitions.copy()
    active = np.ones(graph.size, dtype=bool)
    look_of = np.full(graph.size, -1)
    at_rejection = np.zeros(graph.size)
    cache: dict[float, tuple[float, ...]] = {}

    def levels(local: float) -> tuple[float, ...]:
        key = float(f"{local:.12g}")
        if key not in cache:
            cache[key] = look_levels(sizes_t, key, planned=planned) if key > 0 else (0.0,) * len(sizes_t)
        return cache[key]

    stopped = n_looks - 1
    for j in range(n_looks):
        first = 0 if recheck_earlier else j
        while active.any():
            best, best_ratio = -1, math.inf
            for i in np.flatnonzero(active):
                if w[i] <= 0.0:
                    continue
                lv = levels(w[i] * alpha)
                for k in range(first, j + 1):
                    if lv[k] > 0.0 and p_all[k, i] <= lv[k] and p_all[k, i] / lv[k] < best_ratio:
                        best, best_ratio = int(i), p_all[k, i] / lv[k]
            if best < 0:
                break
            active[best] = False
            look_of[best] = j
            at_rejection[best] = w[best]
            w, g = _reject(w, g, active, best)
        if stop_at_first and (~active).any():
            stopped = j
            break
    return SequentialResult(~active, look_of, stopped, np.where(active, w, at_rejection))


#: Passing-on rules of `pooled_design`.
PASSING = ("holm", "matched")


def pooled_design(cases: Sequence[tuple[Hashable, ...]], pooled_weight: float, passing: str = "matched", *,
                  pooled_task: str = "pooled", metric_weights: Mapping[str, float] | None = None) -> Graph:
    """The graph of a family of pooled and per-task cases, each case a (task, extractor, metric) key, pooled
    cases having ``task == pooled_task``. A key may carry a prefix, (..., task, extractor, metric), e.g. the
    comparison of a chain: partners (below) then also share the prefix.

    Initial weights: the pooled cases share `pooled_weight` equally, the per-task cases ``1 - pooled_weight``
    (all of it goes to the group that exists when the other is empty); within each group a case's share is in
    proportion to ``metric_weights[metric]`` (default 1: equal shares). Passing-on rules:

    * ``"holm"``: a rejected case passes its weight to all others in proportion to their initial weights
      (``g_ij = w_j / (1 - w_i)``: weighted Holm);
    * ``"matched"``: a rejected pooled case (extractor e, metric m) passes its weight equally to the per-task cases
      of (e, m), and a rejected per-task case (t, e, m) to the pooled (e, m) case (through it, once that is
      rejected, to the other tasks of (e, m)); a case without such partners passes as under "holm". Weight that
      reaches a block whose cases are all rejected is not passed on (conservative).
    """
    if passing not in PASSING:
        raise ValueError(f"passing must be one of {PASSING}, got {passing!r}")
    if not 0.0 <= pooled_weight <= 1.0:
        raise ValueError(f"pooled_weight must be in [0, 1], got {pooled_weight!r}")
    keys = [tuple(c) for c in cases]
    if len(set(keys)) != len(keys):
        raise ValueError("a case appears twice in the family")
    if any(len(k) < 3 for k in keys):
        raise ValueError("a case key is (..., task, extractor, metric)")
    m = len(keys)
    pooled = np.array([k[-3] == pooled_task for k in keys])
    n_pooled, n_task = int(pooled.sum()), int((~pooled).sum())
    share_pooled = pooled_weight if n_task else 1.0
    share_task = (1.0 - pooled_weight) if n_pooled else 1.0
    rel = np.array([float((metric_weights or {}).get(k[-1], 1.0)) for k in keys])
    if (rel < 0).any() or not np.isfinite(rel).all():
        raise ValueError("metric weights must be finite and >= 0")
    group_sum = np.where(pooled, rel[pooled].sum(), rel[~pooled].sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(group_sum > 0, np.where(pooled, share_pooled, share_task) * rel / group_sum, 0.0)
    g = np.zeros((m, m))
    for i in range(m):
        others = np.arange(m) != i
        if w[others].sum() > 0:
            g[i, others] = w[others] / w[others].sum()
        if passing == "matched":
            prefix, block = keys[i][:-3], keys[i][-2:]
            partners = [j for j, k in enumerate(keys) if j != i and k[:-3] == prefix and k[-2:] == block
                        and pooled[j] != pooled[i]]
            if partners:
                g[i, :] = 0.0
                g[i, partners] = 1.0 / len(partners)
    return Graph(w, g, tuple(keys))

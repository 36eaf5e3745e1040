"""calib_checks.graphical: the graphical sequentially rejective procedure and its group-sequential form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib_checks.graphical import (Graph, graphical_adjusted, graphical_test, holm_graph, pooled_design,
                                    sequential_graphical_test)
from calib_checks.metrics import normal_sf
from calib_checks.spending import look_levels


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (the oracle): sorted ascending, adj_(i) = max_{j <= i} min(1,
    (m - j + 1) p_(j)); a NaN counts as 0."""
    p = np.array([0.0 if math.isnan(x) else x for x in p_values], dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]))
    out = np.empty(p.size)
    out[order] = adjusted
    return [float(x) for x in out]


def test_holm_step_down_by_hand() -> None:
    # sorted 0.001, 0.01, 0.02, 0.04 (m = 4): 0.004, 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert holm([0.04, 0.001, 0.02, 0.01]) == pytest.approx([0.04, 0.004, 0.04, 0.03])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


@pytest.mark.parametrize("seed", range(6))
def test_complete_uniform_graph_is_holm(seed) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 30))
    p = rng.uniform(0, 0.02, m) ** rng.uniform(0.5, 2)
    p[rng.integers(0, m)] = p[0]  # a tie
    graph = holm_graph(m)
    assert graphical_adjusted(p, graph) == pytest.approx(holm(p), rel=1e-9)
    for alpha in (0.01, 0.05):
        expected = np.array(holm(p)) <= alpha
        assert np.array_equal(graphical_test(p, graph, alpha).rejected, expected)


def test_no_edges_is_weighted_bonferroni_and_fixed_sequence() -> None:
    p = [0.01, 0.03, 0.001]
    graph = Graph([0.5, 0.25, 0.25], np.zeros((3, 3)))
    assert list(graphical_test(p, graph, 0.05).rejected) == [True, False, True]
    # fixed sequence H1 -> H2 -> H3: all alpha on H1, passed on in order
    chain = Graph([1.0, 0.0, 0.0], [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert list(graphical_test([0.04, 0.049, 0.2], chain, 0.05).rejected) == [True, True, False]
    assert list(graphical_test([0.06, 0.001, 0.001], chain, 0.05).rejected) == [False, False, False]
    assert graphical_adjusted([0.04, 0.049, 0.2], chain) == pytest.approx([0.04, 0.049, 0.2])


def test_update_formula_on_a_small_graph() -> None:
    """Bretz et al. (2009) Algorithm 1 by hand: rejecting H1 of a 3-node graph."""
    g = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    graph = Graph([0.5, 0.3, 0.2], g)
    result = graphical_test([0.02, 0.3, 0.3], graph, 0.05)
    assert list(result.rejected) == [True, False, False]
    assert result.weights == pytest.approx([0.0, 0.55, 0.45])
    # g_23 <- (0.5 + 0.5 * 0.5) / (1 - 0.5 * 0.5) = 1: H2 then passes everything to H3
    follow = graphical_test([0.02, 0.0275, 0.04], graph, 0.05)
    assert list(follow.rejected) == [True, True, True] and follow.order == (0, 1, 2)


def test_nan_fails_and_validation() -> None:
    assert list(graphical_test([math.nan, 0.5], holm_graph(2), 0.05).rejected) == [True, False]
    with pytest.raises(ValueError):
        Graph([0.7, 0.7], np.zeros((2, 2)))
    with pytest.raises(ValueError):
        Graph([0.5, 0.5], [[0.5, 0.5], [0, 0]])
    with pytest.raises(ValueError):
        Graph([0.5, 0.5], [[0, 0.7], [0.7, 0.7]])


def test_whether_anything_is_rejected_depends_on_the_initial_weights_only() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        m = 6
        w = rng.dirichlet(np.ones(m))
        g1 = rng.dirichlet(np.ones(m - 1), size=m)
        g2 = rng.dirichlet(np.ones(m - 1), size=m)

        def full(rows):
            out = np.zeros((m, m))
            for i in range(m):
                out[i, [j for j in range(m) if j != i]] = rows[i]
            return out

        p = rng.uniform(0, 0.05, m)
        a = graphical_test(p, Graph(w, full(g1)), 0.05).rejected.any()
        b = graphical_test(p, Graph(w, full(g2)), 0.05).rejected.any()
        assert a == b == bool((p <= w * 0.05).any())


CASES = [("pooled", e, m) for e in ("sum", "choice") for m in ("ece", "oc")] + \
        [(t, e, m) for t in ("a", "b", "c") for e in ("sum", "choice") for m in ("ece", "oc")]


def test_pooled_design_weights_and_passing() -> None:
    g = pooled_design(CASES, 0.3)
    assert g.weights[:4] == pytest.approx([0.3 / 4] * 4)
    assert g.weights[4:] == pytest.approx([0.7 / 12] * 12)
    assert g.weights.sum() == pytest.approx(1.0)
    # matched: pooled (sum, ece) -> the three per-task (sum, ece) cases
    row = g.transitions[0]
    partners = [i for i, k in enumerate(CASES) if k[0] != "pooled" and k[1:] == ("sum", "ece")]
    assert row[partners] == pytest.approx([1 / 3] * 3) and row.sum() == pytest.approx(1.0)
    assert g.transitions[partners[0], 0] == pytest.approx(1.0)
    # holm: proportional to the initial weights
    h = pooled_design(CASES, 0.5, "holm")
    assert h.transitions[0, 1] == pytest.approx(h.weights[1] / (1 - h.weights[0]))
    # w = 0 / 1 leave one group with all the weight; equal weights with "holm" are plain Holm
    assert pooled_design(CASES[4:], 0.3).weights == pytest.approx([1 / 12] * 12)
    plain = pooled_design(CASES[4:], 0.3, "holm")
    p = np.linspace(0.0005, 0.05, 12)
    assert graphical_adjusted(p, plain) == pytest.approx(holm(p))
    # a rejected pooled case makes its partners' rejection easier; an unrelated case gets nothing
    p = np.full(len(CASES), 0.5)
    p[0] = 1e-4
    p[partners[0]] = 0.004  # above 0.05 x 0.7/12 = 0.0029, below 0.05 x (0.7/12 + 0.3/4/3) = 0.0042
    res = graphical_test(p, g, 0.05)
    assert res.rejected[0] and res.rejected[partners[0]] and res.rejected.sum() == 2
    p_alone = p.copy()
    p_alone[0] = 0.5
    assert not graphical_test(p_alone, g, 0.05).rejected.any()
    unrelated = [i for i, k in enumerate(CASES) if k[0] == "a" and k[1:] == ("choice", "oc")][0]
    p2 = p.copy()
    p2[partners[0]], p2[unrelated] = 0.5, 0.004
    assert not graphical_test(p2, g, 0.05).rejected[unrelated]
    with pytest.raises(ValueError):
        pooled_design(CASES, 0.3, "other")


def test_pooled_design_of_a_chain_keeps_partners_within_a_comparison() -> None:
    keys = [(c, *k) for c in ("1-2", "2-3", "1-3") for k in CASES]
    g = pooled_design(keys, 0.3)
    assert g.weights.sum() == pytest.approx(1.0)
    assert g.weights[0] == pytest.approx(0.3 / 12)
    row = g.transitions[keys.index(("2-3", "pooled", "sum", "ece"))]
    assert {keys[j] for j in np.flatnonzero(row)} == {("2-3", t, "sum", "ece") for t in ("a", "b", "c")}


def test_sequential_levels_and_stop_at_first() -> None:
    sizes = [100, 200, 400, 500]
    graph = holm_graph(3)
    lv = look_levels(sizes, 0.05 / 3)
    p = np.full((4, 3), 0.9)
    p[2, 1] = lv[2] * 0.99  # H2 crosses its boundary at look 3
    res = sequential_graphical_test(p, graph, 0.05, sizes)
    assert list(res.rejected) == [False, True, False] and res.stopped_at == 2 and list(res.look) == [-1, 2, -1]
    # the same p-value at look 1 is not enough (the early boundary is far stricter)
    p1 = np.full((4, 3), 0.9)
    p1[0, 1] = lv[2] * 0.99
    assert not sequential_graphical_test(p1, graph, 0.05, sizes).rejected.any()
    # after a rejection the others' rate grows and the earlier looks are re-examined at it
    p3 = p.copy()
    p3[1, 0] = look_levels(sizes, 0.05 / 2)[1] * 0.99  # between H1's look-2 levels at alpha/3 and alpha/2
    assert p3[1, 0] > look_levels(sizes, 0.05 / 3)[1]
    res3 = sequential_graphical_test(p3, graph, 0.05, sizes)
    assert list(res3.rejected) == [True, True, False] and list(res3.look) == [2, 2, -1]
    assert not sequential_graphical_test(p3, graph, 0.05, sizes, recheck_earlier=False).rejected[0]
    # without stopping, later looks go on
    p4 = p.copy()
    p4[3, 2] = 1e-9
    res4 = sequential_graphical_test(p4, graph, 0.05, sizes, stop_at_first=False)
    assert list(res4.look) == [-1, 2, 3] and res4.stopped_at == 3


def _brownian_p(rng, n_paths: int, sizes, m: int, drift: np.ndarray) -> np.ndarray:
    """(paths, looks, m) one-sided p-values of z-statistics with Brownian correlation over looks."""
    t = np.asarray(sizes, float) / sizes[-1]
    inc = rng.standard_normal((n_paths, len(sizes), m)) * np.sqrt(np.diff(np.concatenate([[0], t])))[None, :, None]
    z = np.cumsum(inc, axis=1) / np.sqrt(t)[None, :, None] + drift[None, None, :] * np.sqrt(t)[None, :, None]
    return 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2))


def test_sequential_family_error_rate_by_monte_carlo() -> None:
    """Four hypotheses, the gate's looks: with all nulls true the family errs at most alpha (Bonferroni: about
    alpha); with H1 false and far away, passing its weight on (re-examining earlier looks) keeps the error on the
    three true nulls at or under alpha."""
    rng = np.random.default_rng(0)
    sizes = [100, 200, 400, 800, 1000]
    graph = holm_graph(4)
    n = 6000
    se = math.sqrt(0.05 * 0.95 / n)
    p = _brownian_p(rng, n, sizes, 4, np.zeros(4))
    rate = np.mean([sequential_graphical_test(x, graph, 0.05, sizes).rejected.any() for x in p])
    assert 0.05 - 4 * se - 0.003 < rate < 0.05 + 3 * se
    p = _brownian_p(rng, n, sizes, 4, np.array([6.0, 0, 0, 0]))
    results = [sequential_graphical_test(x, graph, 0.05, sizes, stop_at_first=False) for x in p]
    assert np.mean([r.rejected[0] for r in results]) > 0.99
    assert np.mean([r.rejected[1:].any() for r in results]) < 0.05 + 3 * se

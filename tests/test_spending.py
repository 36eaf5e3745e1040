"""calib_checks.spending: Lan-DeMets O'Brien-Fleming-type boundaries by recursive numerical integration."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from calib_checks import spending
from calib_checks.metrics import normal_quantile, normal_sf
from calib_checks.spending import critical_values, exit_probabilities, look_levels, nominal_levels, obf_spent


def test_spending_function_ends() -> None:
    assert obf_spent(0.0, 0.05) == 0.0
    assert obf_spent(1.0, 0.05) == 0.05
    assert obf_spent(0.999999, 0.05) == pytest.approx(0.05, rel=1e-5)
    # 2 - 2 Phi(z_{0.9875} / sqrt(0.5)) at alpha = 0.025
    assert obf_spent(0.5, 0.025) == pytest.approx(2 * normal_sf(normal_quantile(0.9875) / math.sqrt(0.5)), rel=1e-12)
    values = [obf_spent(t, 0.05) for t in np.linspace(0.05, 1, 20)]
    assert all(b > a for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        obf_spent(0.5, 0.0)


def test_published_three_looks() -> None:
    """rpact's getDesignGroupSequential(typeOfDesign = "asOF", kMax = 3, alpha = 0.025, one-sided): efficacy boundary
    3.710 / 2.511 / 1.993, stage levels 0.0001 / 0.0060 / 0.0231 (rpact slides, MCP 2025,
    https://rpact-com.github.io/slides-mcp-2025; the same as gsDesign's sfLDOF)."""
    c = critical_values([1, 2, 3], 0.025)
    assert c == pytest.approx((3.710, 2.511, 1.993), abs=6e-4)
    levels = nominal_levels([1, 2, 3], 0.025)
    assert levels == pytest.approx((0.0001, 0.0060, 0.0231), abs=6e-5)


def _two_look_exit(c1: float, c2: float, rho: float) -> float:
    """P(Z1 < c1, Z2 >= c2), corr rho, by plain trapezoid quadrature over z1 (independent of the module's grid)."""
    z1 = np.linspace(-12, c1, 200_001)
    cond = np.array([normal_sf((c2 - rho * z) / math.sqrt(1 - rho * rho)) for z in z1[::100]])
    dens = np.exp(-0.5 * z1[::100] ** 2) / math.sqrt(2 * math.pi)
    return float(np.trapezoid(dens * cond, z1[::100]))


@pytest.mark.parametrize("info", [(1, 2), (1, 5), (3, 4)])
def test_two_looks_against_direct_quadrature(info) -> None:
    alpha = 0.05
    c1, c2 = critical_values(info, alpha)
    t1 = info[0] / info[1]
    assert normal_sf(c1) == pytest.approx(obf_spent(t1, alpha), rel=1e-9)
    exit2 = _two_look_exit(c1, c2, math.sqrt(t1))
    assert exit2 == pytest.approx(alpha - obf_spent(t1, alpha), rel=1e-5)


def test_grid_refinement_changes_nothing_that_matters(monkeypatch) -> None:
    coarse = critical_values([1, 2, 3, 4, 5], 0.025)
    monkeypatch.setattr(spending, "GRID_STEP", 0.01)
    fine = spending._critical_values(tuple(x / 5 for x in (1, 2, 3, 4, 5)),
                                     tuple(obf_spent(t / 5, 0.025) for t in (1, 2, 3, 4)) + (0.025,), 0.01)
    assert coarse == pytest.approx(fine, abs=1e-5)
    # and both are the standard five-look values (gsDesign / rpact print 4.877 3.357 2.680 2.290 2.031)
    assert coarse == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=6e-4)


def test_monte_carlo_overall_rate_is_alpha() -> None:
    """Unequal looks (the gate's doubling schedule): per-look exit probabilities follow the spending function and
    the overall rejection probability under H0 is alpha, within Monte Carlo error."""
    sizes = [100, 200, 400, 800, 1000]
    alpha = 0.05
    c = critical_values(sizes, alpha)
    n = 400_000
    exits = exit_probabilities(sizes, c, n_sims=n, seed=11)
    mc = math.sqrt(alpha * (1 - alpha) / n)
    assert abs(exits.sum() - alpha) < 4 * mc
    spent = np.diff([0.0] + [obf_spent(x / 1000, alpha) for x in sizes])
    assert np.all(np.abs(exits - spent) < 4 * np.sqrt(spent * (1 - spent) / n) + 1e-6)
    # a real drift is detected more often than alpha
    assert exit_probabilities(sizes, c, drift=2.5, n_sims=20_000, seed=1).sum() > 0.5


def test_last_look_keeps_nearly_all_alpha() -> None:
    levels = look_levels([1, 2, 3, 4, 5], 0.05)
    assert levels[-1] > 0.04
    assert all(b > a for a, b in zip(levels, levels[1:]))
    # the gate's looks at a 500-item budget, at a Holm-sized local level
    gate = look_levels([100, 200, 400, 500], 0.05 / 54)
    assert gate[-1] > 0.9 * 0.05 / 54
    assert gate[0] < 1e-6 * 0.05 / 54
    # a nominal level is never below its increment of alpha (a joint exit probability <= the marginal one)
    spent = np.diff([0.0] + [obf_spent(n / 500, 0.05 / 54) for n in (100, 200, 400, 500)])
    assert np.all(np.array(gate) >= spent * (1 - 1e-9))


def test_looks_reached_early() -> None:
    """Planned 2000 items, the data end at 700: the interim levels are those planned (they depend on earlier looks
    only), the final look spends the rest, and the overall rate is still alpha."""
    alpha = 0.05
    planned = look_levels([100, 200, 400], alpha, planned=2000, final=False)
    early = look_levels([100, 200, 400, 700], alpha, planned=2000)
    assert early[:3] == pytest.approx(planned, rel=1e-9)
    assert early[-1] > look_levels([100, 200, 400, 800, 1600, 2000], alpha)[3]
    c = [-normal_quantile(x) for x in early]
    exits = exit_probabilities([100, 200, 400, 700], c, n_sims=400_000, seed=5)
    assert abs(exits.sum() - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / 400_000)
    with pytest.raises(ValueError, match="final"):
        look_levels([100, 2000], alpha, planned=2000, final=False)


def test_one_look_is_the_plain_test_and_zero_alpha_never_rejects() -> None:
    assert look_levels([500], 0.01) == pytest.approx((0.01,), rel=1e-12)
    assert look_levels([100, 200], 0.0) == (0.0, 0.0)
    with pytest.raises(ValueError):
        critical_values([2, 1], 0.05)
    with pytest.raises(ValueError):
        critical_values([1, 2], 0.05, spend_at=[0.8, 0.5])


def test_fast_and_cached() -> None:
    spending._critical_values.cache_clear()
    sizes = [100, 200, 400, 800, 1600, 3200, 6400, 10_000]
    start = time.perf_counter()
    first = critical_values(sizes, 0.05 / 63)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(100):
        assert critical_values(sizes, 0.05 / 63) == first
    warm = (time.perf_counter() - start) / 100
    assert cold < 1.0  # a few ms here; generous for a loaded CI machine
    assert warm < 1e-3
    assert spending._critical_values.cache_info().hits >= 100

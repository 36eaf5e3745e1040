"""Group-sequential alpha spending: Lan-DeMets O'Brien-Fleming-type boundaries for a one-sided test.

A hypothesis judged at looks j = 1..K on growing item sets has z-statistics Z_1..Z_K that are (asymptotically)
jointly normal with ``corr(Z_i, Z_j) = sqrt(I_i / I_j)`` (i <= j), I_j the information at look j (here: items per
task). The spending function

    alpha(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)),   0 < t <= 1,   alpha(1) = alpha,

(Lan & DeMets 1983, the O'Brien-Fleming-like one, as gsDesign's ``sfLDOF`` and rpact's ``asOF`` with a one-sided
``alpha``) says how much of the rate may have been spent by information fraction t. The critical values
c_1..c_K solve, under H0,

    P(Z_1 < c_1, ..., Z_{j-1} < c_{j-1}, Z_j >= c_j) = alpha(t_j) - alpha(t_{j-1}),

so a hypothesis is rejected at some look with probability alpha(t_K) = alpha exactly (when t_K = 1). They are
exposed as NOMINAL one-sided levels ``1 - Phi(c_j)``: the level a look's one-sided p-value is compared with.

Computation: the recursive numerical integration of Armitage, McPherson & Rowe (1969) in the form of Jennison &
Turnbull (2000), ch. 19: on the score scale S_j = Z_j sqrt(I_j) the increments are independent N(0, I_j -
I_{j-1}); the sub-density of S_j on the continuation region (-inf, c_j sqrt(I_j)) is carried on a grid (Simpson's
rule, spacing ``GRID_STEP`` in z units, truncated at ``-GRID_RANGE`` z below and ``GRID_RANGE`` above: the mass
beyond is below 1e-22), each look's exit probability is the grid sum of ``f(u) P(N(u, Delta) >= b)`` and c_j is
found by a safeguarded Newton iteration on its logarithm. About 1-4 ms per look; results are cached.

Spending fractions vs information. ``critical_values(info, alpha, spend_at=...)`` separates the two, as the
Lan-DeMets method does when the looks actually reached differ from the planned ones: alpha is spent at the
fractions ``spend_at`` (default ``info / info[-1]``), the correlations follow the information actually reached.
``look_levels(sizes, alpha, planned=..., final=...)`` is the gate's form: looks at ``sizes`` items per task,
planned to end at ``planned`` items; looks before the end spend ``alpha(n_j / planned)``; the final look (also
when it is reached early, with fewer items than planned) spends everything left. A look's level depends only on
the looks up to it, so levels computed before the final look stay valid (the flexibility of spending functions).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from calib_checks.metrics import normal_quantile, normal_sf

__all__ = ["GRID_RANGE", "GRID_STEP", "critical_values", "exit_probabilities", "look_levels", "nominal_levels",
           "obf_spent"]

#: Grid spacing, in z units, of the recursive integration (Simpson's rule: error ~ step^4).
GRID_STEP = 0.05
#: The grid covers z in [-GRID_RANGE, min(c_j, GRID_RANGE)] at each look (P(|Z| > 10) = 1.5e-23).
GRID_RANGE = 10.0

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _sf(x: np.ndarray) -> np.ndarray:
    """1 - Phi(x), elementwise, accurate in the far tails (math.erfc)."""
    return 0.5 * _erfc(np.asarray(x, dtype=np.float64) / _SQRT2).astype(np.float64)


def _isf(p: float) -> float:
    """c with 1 - Phi(c) = p, accurate for tiny p (Wichura's AS241 through statistics.NormalDist); +inf at p <= 0."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return -math.inf
    return -normal_quantile(p) if p < 0.5 else normal_quantile(1.0 - p)


def obf_spent(t: float, alpha: float) -> float:
    """The Lan-DeMets O'Brien-Fleming-type rate spent by information fraction t: ``2 - 2 Phi(z_{1-alpha/2} /
    sqrt(t))`` (0 at t <= 0, alpha at t >= 1)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if t <= 0.0:
        return 0.0
    if t >= 1.0:
        return float(alpha)
    return 2.0 * normal_sf(normal_quantile(1.0 - alpha / 2.0) / math.sqrt(t))


def _simpson(a: float, b: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid points on [a, b] (an odd number, at least 3, spacing <= step) and their Simpson weights."""
    n = max(2, int(math.ceil((b - a) / step)))
    n += n % 2
    x = np.linspace(a, b, n + 1)
    w = np.full(n + 1, 2.0)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return x, w * (b - a) / (3.0 * n)


def _solve_exit(u: np.ndarray, mass: np.ndarray, sd: float, target: float) -> float:
    """b with sum(mass * P(N(u, sd^2) >= b)) = target (decreasing in b): Newton on the logarithm, kept inside a
    bisection bracket."""
    def exit_prob(b: float) -> tuple[float, float]:
        z = (b - u) / sd
        p = float(mass @ _sf(z))
        dp = -float(mass @ np.exp(-0.5 * z * z)) / (_SQRT2PI * sd)
        return p, dp

    total = float(mass.sum())
    if target >= total:
        return -math.inf
    lo, hi = float(u.min()) - 10.0 * sd, float(u.max()) + 40.0 * sd  # exit(lo) ~ total > target > exit(hi)
    b = float(u.max()) + sd * _isf(min(target / max(total, 1e-300), 0.5))
    b = min(max(b, lo), hi)
    log_target = math.log(target)
    for _ in range(100):
        p, dp = exit_prob(b)
        if p > target:
            lo = b
        else:
            hi = b
        if p > 0.0 and abs(math.log(p) - log_target) < 1e-11:
            return b
        step_ok = p > 0.0 and dp < 0.0
        nxt = b - (math.log(p) - log_target) * p / dp if step_ok else math.nan
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if hi - lo < 1e-13 * max(1.0, abs(b)):
            return nxt
        b = nxt
    return b


@functools.lru_cache(maxsize=4096)
def _critical_values(info: tuple[float, ...], spent: tuple[float, ...], step: float) -> tuple[float, ...]:
    """c_j on the z scale for looks with information `info` and cumulative rates `spent` (increasing, <= 1)."""
    out = []
    u = mass = None  # the grid (score scale) and grid weights x sub-density of the continuation region
    prev_info, prev_spent = 0.0, 0.0
    for info_j, spent_j in zip(info, spent):
        increment = spent_j - prev_spent
        root = math.sqrt(info_j)
        if u is None:  # first look: S_1 ~ N(0, I_1)
            c = _isf(increment) if increment > 0.0 else math.inf
            z, w = _simpson(-GRID_RANGE, min(c, GRID_RANGE), step)
            u, mass = z * root, w * np.exp(-0.5 * z * z) / _SQRT2PI  # weights x density in z, moved to s = z root
        else:
            sd = math.sqrt(info_j - prev_info)
            b = _solve_exit(u, mass, sd, increment) if increment > 0.0 else math.inf
            c = b / root
            z, w = _simpson(-GRID_RANGE, min(c, GRID_RANGE), step)
            s = z * root
            kernel = np.exp(-0.5 * ((s[:, None] - u[None, :]) / sd) ** 2) / (_SQRT2PI * sd)
            u, mass = s, w * root * (kernel @ mass)  # density on the s scale x (ds = root dz) x Simpson weight
        out.append(float(c))
        prev_info, prev_spent = info_j, spent_j
    return tuple(out)


def _check(info: Sequence[float], spend_at: Sequence[float] | None, alpha: float
           ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    info_t = tuple(float(x) for x in info)
    if not info_t or info_t[0] <= 0.0 or any(b <= a for a, b in zip(info_t, info_t[1:])):
        raise ValueError(f"information levels must be positive and strictly increasing, got {info_t}")
    fractions = (tuple(x / info_t[-1] for x in info_t) if spend_at is None else tuple(float(x) for x in spend_at))
    if len(fractions) != len(info_t):
        raise ValueError(f"spend_at has {len(fractions)} fractions for {len(info_t)} looks")
    if any(not 0.0 <= t <= 1.0 for t in fractions) or any(b < a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"spending fractions must be non-decreasing within [0, 1], got {fractions}")
    # rounded so that equal designs computed along different float paths share the cache
    norm = info_t[-1]
    return (tuple(_round(x / norm) for x in info_t),
            tuple(_round(obf_spent(t, alpha)) if t < 1.0 else float(alpha) for t in fractions))


def _round(x: float) -> float:
    """x to 12 significant digits (cache keys)."""
    return float(f"{x:.12g}")


def critical_values(info: Sequence[float], alpha: float, *, spend_at: Sequence[float] | None = None
                    ) -> tuple[float, ...]:
    """The z-scale critical values c_1..c_K (module docstring) of looks with information `info` (strictly
    increasing; any scale, e.g. items), spending ``obf_spent(t_j, alpha)`` at ``t = spend_at`` (default
    ``info / info[-1]``). A look that spends nothing gets +inf (it never rejects)."""
    info_t, spent = _check(info, spend_at, alpha)
    return _critical_values(info_t, spent, GRID_STEP)


def nominal_levels(info: Sequence[float], alpha: float, *, spend_at: Sequence[float] | None = None
                   ) -> tuple[float, ...]:
    """``1 - Phi(c_j)`` for the critical values of `critical_values`: reject at look j when the look's one-sided
    p-value is at most this."""
    return tuple(normal_sf(c) if math.isfinite(c) else 0.0 for c in critical_values(info, alpha, spend_at=spend_at))


def look_levels(sizes: Sequence[int | float], alpha: float, *, planned: float | None = None, final: bool = True
                ) -> tuple[float, ...]:
    """Nominal one-sided levels of the looks reached so far, at `sizes` items (strictly increasing).

    `planned`: the items the design plans to end at (default: ``sizes[-1]``). A look before the end spends
    ``obf_spent(min(n_j / planned, 1), alpha)``; with ``final=True`` the last of `sizes` is the final look and
    spends the rest of alpha (also when reached early: a budget smaller than planned). With ``final=False`` the
    levels are those of interim looks, and stay valid whatever the later looks turn out to be.
    ``alpha <= 0`` gives levels of 0 (a hypothesis with no rate never rejects).
    """
    if alpha <= 0.0:
        return tuple(0.0 for _ in sizes)
    if len(sizes) == 1 and final:  # one look spends alpha itself (exactly: no boundary to solve)
        return (float(alpha),)
    end = float(sizes[-1] if planned is None else planned)
    if end <= 0.0:
        raise ValueError(f"planned must be positive, got {planned!r}")
    fractions = [min(float(n) / end, 1.0) for n in sizes]
    if final:
        fractions[-1] = 1.0
    elif fractions[-1] >= 1.0:
        raise ValueError("a look at or past the planned items is the final one: pass final=True")
    return nominal_levels(sizes, alpha, spend_at=fractions)


def exit_probabilities(info: Sequence[float], critical: Sequence[float], drift: float = 0.0,
                       n_sims: int = 0, seed: int = 0) -> np.ndarray:
    """P(first crossing at look j) for z-statistics with drift ``drift x sqrt(info_j / info_K)`` (0: H0), by
    Monte Carlo with `n_sims` paths (a check of `critical_values`; seeded)."""
    info_a = np.asarray(info, dtype=np.float64) / float(info[-1])
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((n_sims, info_a.size)) * np.sqrt(np.diff(np.concatenate([[0.0], info_a])))
    z = np.cumsum(steps, axis=1) / np.sqrt(info_a) + drift * np.sqrt(info_a)
    crossed = z >= np.asarray(critical, dtype=np.float64)
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    return np.array([(first == j).mean() for j in range(info_a.size)])

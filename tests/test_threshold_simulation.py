"""The shipped default rule, measured: false alarms on equally calibrated pairs, power against T = 0.7.

The rule (thresholds.toml's ECE and SCE rules) is applied through `verdicts.judge_arrays`, the same code the
gate runs, on simulated tasks where calibration is known exactly:

* Items have K = 4 options, a uniformly drawn gold option y, and a model sees the signal
  ``s = beta * e_y + noise``, noise ~ N(0, I). Its probabilities are the exact posterior
  ``softmax(beta * s)``, so the model is perfectly calibrated (P(y = k | p) = p_k). BETA = 1.2 gives about
  62 % accuracy, the range of real models on the seed study's tasks.
* Equal calibration: base and aligned see independent noise draws on the same items (two different
  calibrated models of equal sharpness); and the identical pair (aligned = base).
* Regression: aligned = base's logits divided by T = 0.7 (sharpened, over-confident), the seed study's kind
  of alignment damage; its true ECE change is about +0.06 here.

Run with `-s` to see the figures; docs/GATE.md and thresholds.toml quote them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calib_checks.thresholds import load_thresholds
from calib_checks.verdicts import judge_arrays

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"
K = 4
BETA = 1.2
T_SHARP = 0.7
FALSE_ALARM_SIZES = {200: 200, 1000: 100}  # items: repetitions
POWER_SIZES = {500: 100, 1000: 100, 2000: 60}
FALSE_ALARM_BOUND = 0.05
# Power floors: the shipped rule must keep at least these (measured values are printed and in docs/GATE.md).
POWER_FLOOR = {500: 0.35, 1000: 0.75, 2000: 0.9}


def calibrated_logits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logits whose softmax is the exact posterior of y given s = BETA * e_y + N(0, I)."""
    signal = BETA * np.eye(K)[labels] + rng.standard_normal((labels.size, K))
    return BETA * signal


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def rate(metric: str, n: int, reps: int, scenario: str, seed: int) -> float:
    """Fraction of `reps` simulated cases of `n` items where the shipped rule's verdict is "fail"."""
    rule = load_thresholds(SHIPPED).rule_for("arc_easy", "choice", metric)
    assert n >= rule.min_items, "simulate only sizes the rule gates"
    rng = np.random.default_rng(seed)
    fails = 0
    for rep in range(reps):
        labels = rng.integers(0, K, n)
        base = calibrated_logits(labels, rng)
        if scenario == "independent":
            aligned = calibrated_logits(labels, rng)
        elif scenario == "identical":
            aligned = base
        else:
            aligned = base / T_SHARP
        decision = judge_arrays(softmax(base), softmax(aligned), labels, metric, rule, seed=rep)
        assert decision.verdict in ("pass", "fail")
        fails += decision.verdict == "fail"
    return fails / reps


@pytest.fixture(scope="module")
def figures() -> dict[tuple[str, str, int], float]:
    out = {}
    for i, metric in enumerate(("ece", "sce")):
        for n, reps in FALSE_ALARM_SIZES.items():
            out[(metric, "identical", n)] = rate(metric, n, 5, "identical", seed=100 + i)
            out[(metric, "independent", n)] = rate(metric, n, reps, "independent", seed=200 + n + i)
        for n, reps in POWER_SIZES.items():
            out[(metric, "sharpened", n)] = rate(metric, n, reps, "sharpened", seed=300 + n + i)
    rules = {m: load_thresholds(SHIPPED).rule_for("arc_easy", "choice", m) for m in ("ece", "sce")}
    print("\nshipped rules: " + "; ".join(f"{m}: {r.describe(m)}" for m, r in rules.items()))
    print(f"{'metric':<6} {'scenario':<26} " + " ".join(f"{n:>6}" for n in sorted({n for _, _, n in out})))
    for metric in ("ece", "sce"):
        for scenario, label in (("identical", "false alarm, identical"), ("independent", "false alarm, independent"),
                                ("sharpened", f"power, T={T_SHARP}")):
            cells = [f"{out[(metric, scenario, n)]:>6.1%}" if (metric, scenario, n) in out else f"{'':>6}"
                     for n in sorted({n for _, _, n in out})]
            print(f"{metric:<6} {label:<26} " + " ".join(cells))
    return out


@pytest.mark.parametrize("metric", ["ece", "sce"])
def test_identical_pair_never_fails(figures: dict, metric: str) -> None:
    for n in FALSE_ALARM_SIZES:
        assert figures[(metric, "identical", n)] == 0.0


@pytest.mark.parametrize("metric", ["ece", "sce"])
@pytest.mark.parametrize("n", sorted(FALSE_ALARM_SIZES))
def test_false_alarms_at_most_five_percent(figures: dict, metric: str, n: int) -> None:
    assert figures[(metric, "independent", n)] <= FALSE_ALARM_BOUND


@pytest.mark.parametrize("metric", ["ece", "sce"])
@pytest.mark.parametrize("n", sorted(POWER_SIZES))
def test_power_against_sharpening(figures: dict, metric: str, n: int) -> None:
    assert figures[(metric, "sharpened", n)] >= POWER_FLOOR[n]


def test_power_grows_with_items(figures: dict) -> None:
    for metric in ("ece", "sce"):
        powers = [figures[(metric, "sharpened", n)] for n in sorted(POWER_SIZES)]
        assert powers == sorted(powers), powers

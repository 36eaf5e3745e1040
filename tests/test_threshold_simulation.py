"""The shipped decision rule, measured on simulated pairs: per-pair false alarms, per-pair and per-case power.

calib_checks/simulation.py has the design (a simulated pair = 6 tasks x 3 extractors = 18 independent groups
x the gated metrics ECE, SCE, over-confidence = 54 cases, judged by `verdicts.judge_arrays` and corrected by
`verdicts.apply_family` under thresholds.toml's rules and [gate] policy, exactly as the gate does). This file
runs a small study (TEST_PLAN, about a minute of CPU) and prints its tables (run with `-s`); the figures
docs/GATE.md and thresholds.toml quote come from the full study, `python -m calib_checks simulate --full`.

Assertions use exact Clopper-Pearson intervals (95 %, two-sided) so that they can fail with few repetitions
and yet do not fail by chance: a "<= target" claim fails only when the interval's LOWER end is above the
target (the data show the target is missed), a ">= target" claim only when its UPPER end is below it. With
40 pairs, a false-alarm assertion fails from 6 failing pairs (15 %) up; with 20 pairs, the power assertion
fails from 15 detected of 20 (75 %) down. They are consistency checks at these counts, not proofs; the full
study's intervals are the evidence.
"""

from __future__ import annotations

import numpy as np
import pytest

from calib_checks.simulation import (
    SCENARIOS,
    SHIPPED,
    Scenario,
    clopper_pearson,
    format_study,
    judge_pair,
    run_study,
)
from calib_checks.thresholds import load_thresholds

pytestmark = pytest.mark.slow

TEST_PLAN = {
    "equal-indep": {200: 30},
    "equal-rho0.9": {200: 40},
    "over-base": {200: 15},
    "under-base": {200: 15},
    "T0.7": {200: 10, 500: 20},
    "T0.85": {500: 10},
}
FALSE_ALARM_TARGET = 0.05  # per pair, from 200 items
PAIR_POWER_TARGET = 0.90  # vs T = 0.7 at 500 items
OVERCONFIDENCE_POWER_TARGET = 0.80  # per case vs T = 0.7 at 500 items


@pytest.fixture(scope="module")
def study():
    result = run_study(TEST_PLAN, SHIPPED, seed=1, jobs=1, truth_items=100_000)
    print("\n" + format_study(result))
    return result


def test_clopper_pearson_matches_known_values() -> None:
    assert clopper_pearson(0, 60)[1] == pytest.approx(0.0596, abs=2e-4)  # the "rule of three" neighbourhood
    lo, hi = clopper_pearson(5, 20)
    assert (lo, hi) == (pytest.approx(0.0866, abs=2e-4), pytest.approx(0.4910, abs=2e-4))
    assert clopper_pearson(20, 20) == (pytest.approx(0.8316, abs=2e-4), 1.0)


def test_identical_pair_never_fails() -> None:
    twin = Scenario("twin", "identical models", True, rho=1.0)  # aligned noise = base noise, same temperature
    for seed in range(2):
        cases = judge_pair(twin, 200, load_thresholds(SHIPPED), seed=seed)
        assert len(cases) == 54
        assert {c.verdict for c in cases} == {"pass"} and {c.change for c in cases} == {0.0}


@pytest.mark.parametrize("scenario", ["equal-indep", "equal-rho0.9", "over-base", "under-base"])
def test_per_pair_false_alarms_at_most_five_percent(study, scenario: str) -> None:
    for n, cell in ((n, study.cell(scenario, n)) for n in TEST_PLAN[scenario]):
        lo, _ = clopper_pearson(cell.pairs_failing(), cell.reps)
        assert lo <= FALSE_ALARM_TARGET, (scenario, n, cell.pairs_failing(), cell.reps)


def test_per_pair_power_against_t07_at_500_items(study) -> None:
    cell = study.cell("T0.7", 500)
    _, hi = clopper_pearson(cell.pairs_failing(), cell.reps)
    assert hi >= PAIR_POWER_TARGET, (cell.pairs_failing(), cell.reps)


def test_per_case_power_of_overconfidence_against_t07_at_500_items(study) -> None:
    rows = [r for r in study.cell("T0.7", 500).records if r[3] == "overconfidence"]
    k = sum(r[5] == "fail" for r in rows)
    _, hi = clopper_pearson(k, len(rows))
    assert hi >= OVERCONFIDENCE_POWER_TARGET, (k, len(rows))
    # ... and it is the most powerful of the three gated metrics, far above binned ECE
    by_metric = {m: study.cell("T0.7", 500).share("fail", m) for m in study.metrics}
    assert by_metric["overconfidence"] > by_metric["ece"] + 0.2 and by_metric["overconfidence"] > by_metric["sce"]


def test_equal_pairs_are_mostly_inconclusive_so_on_inconclusive_pass_is_the_shipped_choice(study) -> None:
    assert load_thresholds(SHIPPED).policy.on_inconclusive == "pass"
    cell = study.cell("equal-rho0.9", 200)
    pairs_with_an_inconclusive_case = {r[0] for r in cell.records if r[5] == "inconclusive"}
    # with on_inconclusive = "fail" nearly every equally calibrated pair would block its release
    assert len(pairs_with_an_inconclusive_case) / cell.reps >= 0.9
    assert cell.share("inconclusive") > 0.5


def test_overconfidence_p_values_are_calibrated_under_the_null(study) -> None:
    # a difference of means: the normal p-value at the true change (0) is about uniform in its tail
    from calib_checks.metrics import normal_sf

    rows = [r for name in ("equal-indep", "equal-rho0.9") for r in study.cell(name, 200).records
            if r[3] == "overconfidence"]
    p = np.array([normal_sf(r[8] / r[9]) for r in rows])
    k = int((p <= 0.025).sum())
    lo, hi = clopper_pearson(k, len(rows))
    assert lo <= 0.025 * 1.5 and hi >= 0.025 / 3, (k, len(rows))


def test_sce_changes_scale_as_2_over_k(study) -> None:
    # the reason for [metric.sce] scale = "2/K": the same sharpening moves SCE by about ECE x 2/K, ARC's
    # padded 5 columns included
    for task, k in (("piqa", 2), ("hellaswag", 4), ("arc_easy", 5)):
        ratio = study.truths[("T0.7", task, "sce")] / study.truths[("T0.7", task, "ece")]
        assert ratio == pytest.approx(2 / k, rel=0.3), (task, ratio)


def test_scenarios_cover_the_issue() -> None:
    nulls = {s.name for s in SCENARIOS.values() if s.null}
    assert nulls == {"equal-indep", "equal-rho0.9", "over-base", "under-base"}
    assert {s.aligned_temperature for s in SCENARIOS.values() if not s.null} == {0.7, 0.85}

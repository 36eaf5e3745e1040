"""The shipped decision rule on simulated pairs: the properties that hold with overwhelming probability.

calib_checks/simulation.py has the design (a simulated pair = 6 tasks x 3 extractors = 18 groups x the gated
metrics = 54 cases, judged by `verdicts.judge_arrays` and corrected by `verdicts.apply_family` under
thresholds.toml's rules and [gate] policy, as the gate does). The rates docs/GATE.md quotes (false alarms,
blocked improvements, power) come from the full study, `python -m calib_checks simulate --full`, and are not
re-estimated here: at the sizes a unit test can afford a rate near 5 % cannot be told from 10 %. Instead,
each test below checks a property whose failure probability under the shipped rule is tiny (stated per test)
and which the defects it guards against break for certain; seeds are fixed, so a run is reproducible. Rules,
margins and alpha are read from thresholds.toml, never restated.
"""

from __future__ import annotations

import numpy as np
import pytest

from calib_checks.metrics import METRICS, ROW_SUM_ATOL, normal_sf, paired_bootstrap
from calib_checks.simulation import (
    EXTRACTORS,
    KINDS,
    SCENARIOS,
    SHIPPED,
    TASK_OPTIONS,
    Scenario,
    clopper_pearson,
    generate_group,
    judge_pair,
    true_worsening,
)
from calib_checks.thresholds import load_thresholds
from calib_checks.verdicts import _sign_aware_test, judge_arrays

pytestmark = pytest.mark.slow

THRESHOLDS = load_thresholds(SHIPPED)
GATED = tuple(m for m in ("ece", "sce", "overconfidence") if THRESHOLDS.rule_for("piqa", "choice", m).gate)


def test_clopper_pearson_matches_known_values() -> None:
    assert clopper_pearson(0, 60)[1] == pytest.approx(0.0596, abs=2e-4)  # the "rule of three" neighbourhood
    lo, hi = clopper_pearson(5, 20)
    assert (lo, hi) == (pytest.approx(0.0866, abs=2e-4), pytest.approx(0.4910, abs=2e-4))
    assert clopper_pearson(20, 20) == (pytest.approx(0.8316, abs=2e-4), 1.0)


def test_identical_pair_never_fails() -> None:
    twin = Scenario("twin", "identical models", "null", rho=1.0)  # aligned noise = base noise, same temperature
    for seed in range(2):
        cases = judge_pair(twin, 200, THRESHOLDS, seed=seed)  # per task, and pooled over the tasks
        assert len(cases) == (len(GATED) * len(TASK_OPTIONS) + 2) * len(EXTRACTORS)  # pooled ECE, over-confidence
        assert {c.verdict for c in cases} == {"pass"} and {c.change for c in cases} == {0.0}


@pytest.mark.parametrize("scenario", ["under-to-cal", "over-to-cal"])
def test_a_move_to_calibration_never_fails_the_over_confidence_case(scenario: str) -> None:
    # The defect of issue #21: the signed change of an under-confident base made calibrated is +0.08, and the
    # previous rule failed 100 % of such pairs with p ~ 1e-10. The sign-aware test's p-value here is that of
    # the sum OC_a + OC_b (about -0.08, se 0.03-0.04 at 500 items) exceeding the margin: above 0.01 unless
    # that sum is 4 or more se above its mean (probability < 1e-4 per case).
    for seed in range(2):
        oc = [c for c in judge_pair(SCENARIOS[scenario], 500, THRESHOLDS, seed=seed) if c.metric == "overconfidence"]
        assert len(oc) == (len(TASK_OPTIONS) + 1) * len(EXTRACTORS)  # the pooled cases too
        assert all(c.verdict != "fail" and c.p_value > 0.01 for c in oc), [(c.task, c.p_value) for c in oc]
        # the signed change (+-0.085, se about 0.015) is reported as it is; the |over-confidence| change decides
        assert all((c.change > 0) == (scenario == "under-to-cal") for c in oc)


@pytest.mark.parametrize(("scenario", "side"), [("T0.7", "over"), ("T1.4", "under")])
def test_over_confidence_detects_damage_in_both_directions(scenario: str, side: str) -> None:
    # At 2000 items an over-confidence case of a 4-option task fails (Holm over the pair) about 80 % of the time
    # against T = 0.7 or T = 1.4, PIQA's about 20 %: 12 of 18 expected, fewer than 6 has probability < 1e-4.
    # The previous rule failed none of them against T = 1.4 (a fall of the signed value).
    cases = judge_pair(SCENARIOS[scenario], 2000, THRESHOLDS, seed=5)
    failing = [c for c in cases if c.metric == "overconfidence" and c.verdict == "fail" and c.task != "pooled"]
    assert len(failing) >= 6, len(failing)
    assert {c.sign_test.split(":")[0] for c in failing} == {side}


def _null_cases(n_groups: int, n_items: int) -> dict[str, list[tuple[float, float]]]:
    """(worsening, se) of every gated unsigned metric on null groups of all tasks, the true worsening 0 in each;
    for over-confidence (signed) (p-value of the sign-aware test at margin 0, nan): its worsening |a| - |b| is 0."""
    names = [s for s in SCENARIOS.values() if s.kind == "null"]
    rng = np.random.default_rng(2024)
    out: dict[str, list[tuple[float, float]]] = {m: [] for m in GATED}
    tasks = list(TASK_OPTIONS)
    for g in range(n_groups):
        task = tasks[g % len(tasks)]
        base, aligned, labels = generate_group(rng, n_items, task, names[g % len(names)])
        for metric in GATED:
            rule = THRESHOLDS.rule_for(task, "choice", metric)
            if METRICS[metric].signed:
                boot = paired_bootstrap(metric, base, aligned, labels, n_resamples=rule.n_resamples,
                                        confidence=rule.confidence, seed=g, n_bins=rule.n_bins)
                out[metric].append((_sign_aware_test(boot, 0.0, rule).p_value, float("nan")))
                continue
            d = judge_arrays(base, aligned, labels, metric, rule, seed=g)
            out[metric].append((d.worsening, d.se))
    return out


def test_null_p_values_of_the_gated_metrics_are_not_above_nominal() -> None:
    # Every null scenario's true ECE / SCE change is 0 (both models exactly calibrated, or equally
    # miscalibrated in distribution), so the normal p-value at the truth is sf(worsening / se). Before the
    # measured se inflation (metrics.SE_INFLATION) these rates were 6.6-8.1 % at 0.05 and 1.6-2.3 % at 0.01 and
    # the sd of z 1.03-1.26. The rate assertions fail only when the data SHOW a nominal rate exceeded (the lower
    # end of its 95 % Clopper-Pearson interval above it: probability < 2.5 % for a level-respecting test); the
    # sd assertion is the sharper one (the sd of 480 z-values is known to +-0.04): without the inflation it
    # fails for both metrics.
    cases = _null_cases(480, 200)
    for metric in GATED:
        if METRICS[metric].signed:  # the sign-aware over-confidence test at the truth (margin 0): at most nominal
            p = np.array([p_value for p_value, _ in cases[metric]])
            for level in (0.05, 0.01):
                k = int((p <= level).sum())
                assert clopper_pearson(k, p.size)[0] <= level, (metric, level, k, p.size)
            continue
        z = np.array([w / se for w, se in cases[metric]])
        p = np.array([normal_sf(x) for x in z])
        for level in (0.05, 0.01):
            k = int((p <= level).sum())
            assert clopper_pearson(k, p.size)[0] <= level, (metric, level, k, p.size)
        assert 0.8 < z.std() < 1.05, (metric, z.std())  # about unit sd once inflated (1.03-1.26 before)


def test_bf16_scores_are_judged_with_ties_counted_fractionally() -> None:
    base, aligned, labels = generate_group(np.random.default_rng(0), 2000, "piqa", SCENARIOS["bf16"])
    assert 1e-3 < np.abs(base.sum(axis=1) - 1).max() <= ROW_SUM_ATOL, "rows off by bf16's rounding, accepted"
    top = base == base.max(axis=1, keepdims=True)
    assert (top.sum(axis=1) > 1).any(), "bf16 storage ties top options"
    for metric in GATED:
        d = judge_arrays(base, aligned, labels, metric, THRESHOLDS.rule_for("piqa", "choice", metric))
        assert d.problem is None and d.verdict in ("pass", "inconclusive", "fail")


def test_sce_changes_scale_as_2_over_k() -> None:
    # the reason for [metric.sce] scale = "2/K": the same sharpening moves SCE by about ECE x 2/K, ARC's
    # padded 5 columns included
    truths = true_worsening(SCENARIOS["T0.7"], ("ece", "sce"), n_items=100_000)
    for task, k in (("piqa", 2), ("hellaswag", 4), ("arc_easy", 5)):
        ratio = truths[(task, "sce")] / truths[(task, "ece")]
        assert ratio == pytest.approx(2 / k, rel=0.3), (task, ratio)


def test_true_worsening_of_over_confidence_is_the_change_of_its_absolute_value() -> None:
    truths = true_worsening(SCENARIOS["under-to-cal"], ("overconfidence",), n_items=100_000)
    assert truths[("hellaswag", "overconfidence")] == pytest.approx(-0.085, abs=0.01)  # |-0.085| -> |0|
    one = true_worsening(SCENARIOS["one-task"], ("overconfidence",), n_items=100_000)
    assert one[("mmlu_stem", "overconfidence")] > 0.07 and abs(one[("mmlu_humanities", "overconfidence")]) < 1e-12


def test_scenarios_cover_the_issue() -> None:
    kinds = {name: s.kind for name, s in SCENARIOS.items()}
    assert set(kinds.values()) == set(KINDS)
    assert {n for n, k in kinds.items() if k == "null"} >= {"equal-indep", "equal-rho0.9", "over-base", "under-base",
                                                             "acc-loss", "bf16"}
    assert {n for n, k in kinds.items() if k == "improvement"} >= {"under-to-cal", "over-to-cal"}
    assert {n for n, k in kinds.items() if k == "damage"} >= {"T0.7", "T0.85", "T1.4", "one-task"}
    assert SCENARIOS["one-task"].tasks == ("mmlu_stem",) and SCENARIOS["bf16"].storage == "bfloat16"
    assert SCENARIOS["acc-loss"].aligned_signal < SCENARIOS["equal-rho0.9"].aligned_signal

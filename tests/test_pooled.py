"""calib_checks.pooled: the stratified paired bootstrap over all tasks' items and the pooled case's decision."""

from __future__ import annotations

import numpy as np
import pytest

from calib_checks import metrics
from calib_checks.metrics import MetricInputError, brier, ece, overconfidence, paired_bootstrap, sce
from calib_checks.pooled import POOLED_TASK, Group, judge_pooled, pooled_bootstrap, pooled_margin, pooling
from calib_checks.simulation import SCENARIOS, TASK_OPTIONS, generate_group
from calib_checks.thresholds import Rule, ThresholdsError
from calib_checks.verdicts import VerdictError, case_from_decision, judge_arrays

RULE = Rule(max_increase=0.01, n_resamples=400, min_items=50, source="[default]")
SCE_RULE = Rule(max_increase=0.01, scale="2/K", n_resamples=400, min_items=50, source="[metric.sce]")


def groups_of(scenario: str, n: int, seed: int = 0, tasks=tuple(TASK_OPTIONS)) -> list[Group]:
    rng = np.random.default_rng(seed)
    return [Group(t, *generate_group(rng, n, t, SCENARIOS[scenario])) for t in tasks]


def test_pooling_modes() -> None:
    assert [pooling(m) for m in ("ece", "overconfidence", "brier", "accuracy", "sce")] == \
        ["union", "union", "union", "union", "mean"]
    with pytest.raises(MetricInputError):
        pooling("eec")


def test_pooled_values_follow_the_documented_definitions() -> None:
    groups = groups_of("T0.7", 150, tasks=("arc_easy", "piqa", "mmlu_stem"))
    sizes = np.array([len(g.labels) for g in groups], dtype=float)
    share = sizes / sizes.sum()
    k_max = max(g.base_probs.shape[1] for g in groups)

    def padded(p: np.ndarray) -> np.ndarray:
        return np.hstack([p, np.zeros((p.shape[0], k_max - p.shape[1]))])

    labels = np.concatenate([g.labels for g in groups])
    for which in ("base_probs", "aligned_probs"):
        union = np.vstack([padded(getattr(g, which)) for g in groups])
        attr = "base_value" if which == "base_probs" else "aligned_value"
        assert getattr(pooled_bootstrap("ece", groups, 10), attr) == pytest.approx(ece(union, labels), abs=1e-12)
        oc = pooled_bootstrap("overconfidence", groups, 10)
        assert getattr(oc, attr) == pytest.approx(
            sum(s * overconfidence(getattr(g, which), g.labels) for s, g in zip(share, groups)), abs=1e-12)
        assert getattr(pooled_bootstrap("brier", groups, 10), attr) == pytest.approx(
            sum(s * brier(getattr(g, which), g.labels) for s, g in zip(share, groups)), abs=1e-12)
        assert getattr(pooled_bootstrap("sce", groups, 10), attr) == pytest.approx(
            sum(s * sce(getattr(g, which), g.labels) for s, g in zip(share, groups)), abs=1e-12)
    # union ECE is not the mean of per-task ECEs (one set of bins across tasks)
    mean_ece = sum(s * ece(g.aligned_probs, g.labels) for s, g in zip(share, groups))
    assert pooled_bootstrap("ece", groups, 10).aligned_value != pytest.approx(mean_ece, abs=1e-6)


def test_one_task_pools_to_its_own_point_estimate() -> None:
    (g,) = groups_of("T0.85", 300, tasks=("medmcqa",))
    pooled = pooled_bootstrap("ece", [g], 300, seed=4)
    single = paired_bootstrap("ece", g.base_probs, g.aligned_probs, g.labels, 300, seed=4)
    assert pooled.change == pytest.approx(single.change, abs=1e-14)
    assert pooled.n_items == 300 and pooled.n_clusters is None and pooled.n_bins == 15
    assert pooled.replicate_sd == pytest.approx(single.replicate_sd, rel=0.25)  # other draws, same spread


def _constant_gap_task(n: int, conf: float, correct: bool, k: int) -> Group:
    """Every item has top probability `conf` on option 0; gold 0 when `correct`, else 1."""
    p = np.full((n, k), (1 - conf) / (k - 1))
    p[:, 0] = conf
    labels = np.zeros(n, dtype=int) if correct else np.ones(n, dtype=int)
    return Group(f"t{k}{conf}", p, p.copy(), labels)


def test_stratified_every_replicate_keeps_each_tasks_count() -> None:
    """Task 1's items all have conf - correct = -0.1, task 2's +0.6: a replicate that kept each task's count has
    over-confidence (n1 (-0.1) + n2 (0.6)) / N exactly; an unstratified bootstrap would scatter it."""
    groups = [_constant_gap_task(200, 0.9, True, 4), _constant_gap_task(100, 0.6, False, 2)]
    boot = pooled_bootstrap("overconfidence", groups, 200, seed=1)
    expected = (200 * -0.1 + 100 * 0.6) / 300
    assert boot.base_value == pytest.approx(expected, abs=1e-12)
    assert np.ptp(boot.base_replicates) < 1e-12
    assert boot.base_replicates.mean() == pytest.approx(expected, abs=1e-12)


def test_clusters_are_resampled_whole_within_their_task() -> None:
    """A task of two equal clusters with gaps -0.1 and +0.6: its cluster replicates can only hold 0, 1 or 2 copies
    of each cluster, so the task's over-confidence takes just three values; items resampled singly would give many."""
    a, b = _constant_gap_task(60, 0.9, True, 4), _constant_gap_task(60, 0.6, False, 4)
    task = Group("mmlu", np.vstack([a.base_probs, b.base_probs]), np.vstack([a.aligned_probs, b.aligned_probs]),
                 np.concatenate([a.labels, b.labels]), np.array(["s1"] * 60 + ["s2"] * 60))
    other = _constant_gap_task(50, 0.7, True, 4)
    boot = pooled_bootstrap("overconfidence", [task, other], 300, seed=2)
    assert boot.n_clusters == 2 + 50
    values = np.unique(np.round(boot.base_replicates, 10))
    expected = {round((120 * v + 50 * -0.3) / 170, 10) for v in (-0.1, 0.25, 0.6)}
    assert set(values) <= expected and len(values) >= 2
    unclustered = pooled_bootstrap("overconfidence", [task._replace(clusters=None), other], 300, seed=2)
    assert len(np.unique(np.round(unclustered.base_replicates, 10))) > 10
    with pytest.raises(MetricInputError, match="single cluster"):
        pooled_bootstrap("ece", [task._replace(clusters=np.zeros(120))], 10)


def test_seeded_and_validated() -> None:
    groups = groups_of("equal-rho0.9", 100, tasks=("piqa", "hellaswag"))
    one = pooled_bootstrap("ece", groups, 100, seed=3)
    assert np.array_equal(one.replicates, pooled_bootstrap("ece", groups, 100, seed=3).replicates)
    assert not np.array_equal(one.replicates, pooled_bootstrap("ece", groups, 100, seed=4).replicates)
    bad = groups[0]._replace(aligned_probs=groups[0].aligned_probs[:-1])
    with pytest.raises(MetricInputError):
        pooled_bootstrap("ece", [bad], 10)
    with pytest.raises(MetricInputError, match="twice"):
        pooled_bootstrap("ece", [groups[0], groups[0]], 10)
    with pytest.raises(MetricInputError):
        pooled_bootstrap("ece", [], 10)


def test_margin_is_the_item_weighted_mean_of_per_task_margins() -> None:
    rng = np.random.default_rng(0)
    groups = [Group("piqa", *generate_group(rng, 300, "piqa", SCENARIOS["T0.7"])),
              Group("mmlu_stem", *generate_group(rng, 100, "mmlu_stem", SCENARIOS["T0.7"]))]
    margin, limit = pooled_margin("sce", groups, SCE_RULE)
    assert margin == pytest.approx(0.01 * (0.75 * 2 / 2 + 0.25 * 2 / 4))
    assert limit == pytest.approx(0.75 * 1.0 + 0.25 * 0.5)
    assert pooled_margin("ece", groups, RULE) == pytest.approx((0.01, 1.0))
    relative = Rule(max_increase=0.0, max_relative_increase=1.0, n_resamples=400, source="x")
    expected = 0.75 * abs(overconfidence(groups[0].base_probs, groups[0].labels)) + \
        0.25 * abs(overconfidence(groups[1].base_probs, groups[1].labels))
    assert pooled_margin("overconfidence", groups, relative)[0] == pytest.approx(expected)


def test_judge_pooled_decides_like_a_case() -> None:
    damage = groups_of("T0.5", 300, seed=1)
    same = groups_of("equal-rho0.9", 300, seed=1)
    identical = [g._replace(aligned_probs=g.base_probs) for g in same]
    rules = {t: SCE_RULE for t in TASK_OPTIONS}
    d = judge_pooled(damage, "sce", rules, seed=0)
    assert d.verdict == "fail" and d.p_value < 1e-3 and d.n_items == 1800 and d.n_options == 5
    assert d.margin == pytest.approx(0.01 * np.mean([2 / max(TASK_OPTIONS[t][0]) for t in TASK_OPTIONS]))
    oc = judge_pooled(damage, "overconfidence", RULE, seed=0)
    assert oc.verdict == "fail" and oc.sign_test == "over:sum"
    flat = judge_pooled(identical, "ece", RULE, seed=0)
    assert flat.verdict == "pass" and flat.p_value == 1.0 and flat.change == 0.0
    case = case_from_decision(d, pair="p", base="b", aligned="a", task=POOLED_TASK, extractor="choice", metric="sce",
                              rule=SCE_RULE)
    assert case.verdict == "fail" and case.task == POOLED_TASK and "FAIL pooled choice" in case.message
    # too few items in total: an error unless it already fails
    small = [g._replace(base_probs=g.base_probs[:20], aligned_probs=g.aligned_probs[:20], labels=g.labels[:20])
             for g in identical[:2]]
    assert judge_pooled(small, "ece", RULE).verdict == "error"


def test_pooled_se_shrinks_like_the_number_of_tasks() -> None:
    """Six tasks of 400 items: the pooled over-confidence sum's se is about 1/sqrt(6) of a task's."""
    groups = groups_of("T0.85", 400, seed=2)
    pooled = judge_pooled(groups, "overconfidence", RULE, seed=0)
    single = [judge_arrays(g.base_probs, g.aligned_probs, g.labels, "overconfidence", RULE, seed=0) for g in groups]
    ratio = pooled.se / np.mean([d.se for d in single])
    assert 0.3 < ratio < 0.55


def test_rules_must_agree_on_the_bootstrap() -> None:
    groups = groups_of("T0.7", 100, tasks=("piqa", "hellaswag"))
    with pytest.raises(ThresholdsError, match="n_resamples"):
        judge_pooled(groups, "ece", {"piqa": RULE, "hellaswag": Rule(max_increase=0.01, n_resamples=1000, source="x")})
    with pytest.raises(VerdictError, match="no rule"):
        judge_pooled(groups, "ece", {"piqa": RULE})
    with pytest.raises(VerdictError, match="unknown metric"):
        judge_pooled(groups, "eec", RULE)
    # per-task margins may differ: they are averaged
    wide = Rule(max_increase=0.03, n_resamples=400, min_items=50, source="x")
    assert judge_pooled(groups, "ece", [RULE, wide]).margin == pytest.approx(0.02)


def test_cluster_index_is_shared_with_the_per_task_bootstrap() -> None:
    of, n = metrics._cluster_index(np.array(["b", "a", "b"]), 3)
    assert n == 2 and list(of) == [1, 0, 1]
    assert metrics._cluster_index(None, 3) == (None, None)
    with pytest.raises(MetricInputError, match="one label per item"):
        metrics._cluster_index(np.array([1, 2]), 3)


def test_pooled_p_values_are_sane_under_null_and_damage() -> None:
    """A coarse Monte Carlo check of the whole pooled test (stratified bootstrap, margin, decision): on equally
    calibrated pairs the pooled ECE and over-confidence p-values rarely fall under 0.05 (nominal: at most 5 %;
    the bound here only catches a broken test), and a T = 0.7 sharpening makes them small nearly always."""
    tasks = ("hellaswag", "piqa", "arc_easy")
    for scenario, n, check in (("equal-rho0.9", 200, lambda share: share <= 0.15),
                               ("T0.7", 400, lambda share: share >= 0.6)):
        for metric in ("ece", "overconfidence"):
            p = [judge_pooled(groups_of(scenario, n, seed=100 + r, tasks=tasks), metric, RULE, seed=r).p_value
                 for r in range(30)]
            assert check(np.mean(np.array(p) <= 0.05)), (scenario, metric, sorted(p)[:5])

"""Tests of calib_checks.metrics: agreement with torchmetrics, hand-computed values, properties, validation,
and the paired bootstrap. (The interval-coverage simulation is in test_metrics_coverage.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error
from torchmetrics.functional.classification.calibration_error import _ce_compute

import calib_checks.metrics as metrics_module
from calib_checks.errors import CalibChecksError
from calib_checks.metrics import (
    METRICS,
    ROW_SUM_ATOL,
    MetricInputError,
    accuracy,
    brier,
    classwise_bins,
    debiased_l2_ce,
    ece,
    mce,
    nll,
    overconfidence,
    paired_bootstrap,
    reliability_bins,
    sce,
)

# ------------------------------------------------------------------------------------------------ helpers


def draw_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Labels drawn from the rows of probs: a perfectly calibrated model."""
    u = rng.random(probs.shape[0])[:, None]
    return np.minimum((u > np.cumsum(probs, axis=1)).sum(axis=1), probs.shape[1] - 1)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.maximum(probs, 1e-300)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def off_edges(values: np.ndarray, n_bins: int, tol: float) -> bool:
    """No nonzero value within tol (in probability units) of a bin edge k/B (0 sits in bin 0 everywhere)."""
    v = values[values > 0]
    return bool(np.all(np.abs(v * n_bins - np.round(v * n_bins)) >= tol * n_bins))


@st.composite
def dirichlet_cases(draw: st.DrawFn, min_n: int = 1, max_n: int = 2000) -> tuple[np.ndarray, np.ndarray, int]:
    """Random Dirichlet probabilities with labels drawn from them or uniformly; hypothesis picks everything."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_n, max_n))
    k = draw(st.integers(2, 6))
    alpha = draw(st.floats(0.2, 5.0))
    n_bins = draw(st.sampled_from([10, 15]))
    calibrated = draw(st.booleans())
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, alpha), size=n)
    labels = draw_labels(rng, probs) if calibrated else rng.integers(0, k, n)
    return probs, labels, n_bins


# ------------------------------------------------------------------------------ agreement with torchmetrics


@settings(max_examples=40, deadline=None)
@given(dirichlet_cases())
def test_ece_and_mce_agree_with_torchmetrics(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    probs, labels, n_bins = case
    # torchmetrics bins the confidence in float32 and is left-closed: keep values clear of the edges.
    assume(off_edges(probs.max(axis=1), n_bins, 1e-6))
    p, y = torch.from_numpy(probs), torch.from_numpy(labels)
    k = probs.shape[1]
    ref_ece = multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="l1").item()
    ref_mce = multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="max").item()
    assert ece(probs, labels, n_bins) == pytest.approx(ref_ece, abs=1e-6)
    assert mce(probs, labels, n_bins) == pytest.approx(ref_mce, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(dirichlet_cases())
def test_sce_agrees_with_mean_of_torchmetrics_binary_calibration_error(
    case: tuple[np.ndarray, np.ndarray, int],
) -> None:
    probs, labels, n_bins = case
    assume(off_edges(probs, n_bins, 1e-12))
    ref = np.mean(
        [
            binary_calibration_error(
                torch.from_numpy(np.ascontiguousarray(probs[:, k])),
                torch.from_numpy((labels == k).astype(np.int64)),
                n_bins=n_bins,
            ).item()
            for k in range(probs.shape[1])
        ]
    )
    assert sce(probs, labels, n_bins) == pytest.approx(ref, abs=1e-6)
    per_class = classwise_bins(probs, labels, n_bins)
    assert [b.target for b in per_class] == list(range(probs.shape[1]))


def reference_squared(values: np.ndarray, hits: np.ndarray, n_bins: int, n_total: int) -> float:
    """Kumar et al.'s squared estimator written out bin by bin (bins with fewer than 2 items contribute 0)."""
    ids = np.clip(np.ceil(values * n_bins) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = ids == b
        n_b = int(in_bin.sum())
        if n_b < 2:
            continue
        acc, conf = hits[in_bin].mean(), values[in_bin].mean()
        total += n_b / n_total * ((acc - conf) ** 2 - acc * (1 - acc) / (n_b - 1))
    return total


def reference_debiased(values: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    return math.sqrt(max(reference_squared(values, hits, n_bins, len(values)), 0.0))


@settings(max_examples=30, deadline=None)
@given(dirichlet_cases(min_n=2))
def test_debiased_l2_ce_matches_bin_by_bin_reference(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    probs, labels, n_bins = case
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    assert debiased_l2_ce(probs, labels, n_bins) == pytest.approx(
        reference_debiased(conf, correct, n_bins), abs=1e-12
    )
    assert debiased_l2_ce(probs, labels, n_bins, squared=True) == pytest.approx(
        reference_squared(conf, correct, n_bins, len(labels)), abs=1e-12
    )
    hits = [(labels == k).astype(float) for k in range(probs.shape[1])]
    rooted = [reference_debiased(probs[:, k], hits[k], n_bins) for k in range(probs.shape[1])]
    squared = [reference_squared(probs[:, k], hits[k], n_bins, len(labels)) for k in range(probs.shape[1])]
    assert debiased_l2_ce(probs, labels, n_bins, classwise=True) == pytest.approx(np.mean(rooted), abs=1e-12)
    assert debiased_l2_ce(probs, labels, n_bins, classwise=True, squared=True) == pytest.approx(
        np.mean(squared), abs=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(dirichlet_cases(min_n=300))
def test_debiased_l2_ce_agrees_with_torchmetrics_debias_when_no_bin_is_a_singleton(
    case: tuple[np.ndarray, np.ndarray, int],
) -> None:
    # torchmetrics' (private, unexposed) debias option keeps a singleton bin's plug-in term where we drop it,
    # so compare only where every non-empty bin holds at least 2 items.
    probs, labels, n_bins = case
    conf = probs.max(axis=1)
    assume(off_edges(conf, n_bins, 1e-12))
    counts = np.array(reliability_bins(probs, labels, n_bins).counts)
    assume(not np.any(counts == 1))
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    ref = _ce_compute(torch.from_numpy(conf), torch.from_numpy(correct), n_bins, norm="l2", debias=True)
    assert debiased_l2_ce(probs, labels, n_bins) == pytest.approx(float(ref), abs=1e-9)


# ---------------------------------------------------------------------------------- hand-computed values

# Four items, K = 2, B = 10; confidences .85 (right), .65 (wrong), .75 (right), .82 (right), none on an edge.
HAND_P = np.array([[0.85, 0.15], [0.65, 0.35], [0.25, 0.75], [0.82, 0.18]])
HAND_Y = np.array([0, 1, 1, 0])


def test_hand_computed_ece_mce_brier_nll_accuracy() -> None:
    # bins: {.85, .82} acc 1 conf .835; {.65} acc 0; {.75} acc 1
    assert ece(HAND_P, HAND_Y, 10) == pytest.approx(0.5 * 0.165 + 0.25 * 0.65 + 0.25 * 0.25, abs=1e-15)
    assert mce(HAND_P, HAND_Y, 10) == pytest.approx(0.65, abs=1e-15)
    assert brier(HAND_P, HAND_Y) == pytest.approx((2 * 0.15**2 + 2 * 0.65**2 + 2 * 0.25**2 + 2 * 0.18**2) / 4)
    gold = [0.85, 0.35, 0.75, 0.82]
    assert nll(HAND_P, HAND_Y) == pytest.approx(-sum(math.log(g) for g in gold) / 4)
    assert accuracy(HAND_P, HAND_Y) == 0.75


def test_hand_computed_sce_three_classes() -> None:
    probs = np.array([[0.7, 0.25, 0.05], [0.5, 0.35, 0.15], [0.1, 0.25, 0.65]])
    labels = np.array([0, 1, 2])
    # B = 5. class 0: bins {.7}|1, {.5}|0, {.1}|0 -> (.3 + .5 + .1) / 3
    # class 1: one bin {.25, .35, .25} with one hit -> |1 - .85| / 3
    # class 2: bin {.05, .15} no hit -> .2; bin {.65} hit -> .35; -> .55 / 3
    expected = ((0.3 + 0.5 + 0.1) / 3 + 0.15 / 3 + 0.55 / 3) / 3
    assert sce(probs, labels, 5) == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(8 / 45)


def test_hand_computed_equal_mass_ece_with_and_without_ties() -> None:
    def two_class(conf: list[float]) -> np.ndarray:
        c = np.array(conf)
        return np.stack([c, 1 - c], axis=1)

    # B = 2, ranks 0..3 -> bins 0, 0, 1, 1
    assert ece(two_class([0.6, 0.7, 0.8, 0.9]), np.array([0, 1, 0, 0]), 2, scheme="mass") == pytest.approx(
        0.5 * 0.15 + 0.5 * 0.15
    )
    # The tied .6s would straddle ranks 0..2; all go to the bin of rank 0: bins {.6, .6, .6} and {.9}.
    tied = two_class([0.6, 0.6, 0.6, 0.9])
    expected = 0.75 * abs(1 / 3 - 0.6) + 0.25 * abs(1 - 0.9)
    assert ece(tied, np.array([0, 1, 1, 0]), 2, scheme="mass") == pytest.approx(expected, abs=1e-15)
    assert ece(tied[::-1], np.array([0, 1, 1, 0])[::-1], 2, scheme="mass") == pytest.approx(expected, abs=1e-15)
    # All values tied: a single bin, no crash.
    same = two_class([0.7] * 5)
    assert ece(same, np.array([0, 0, 1, 0, 1]), 15, scheme="mass") == pytest.approx(abs(0.6 - 0.7))


def test_hand_computed_debiased_l2_ce_with_a_singleton_bin() -> None:
    probs = np.array([[0.95, 0.03, 0.02]] * 4 + [[0.65, 0.3, 0.05]] * 2 + [[0.45, 0.35, 0.2]])
    labels = np.array([0, 1, 1, 2, 1, 2, 0])
    # B = 10: bin .95 has 4 items, 1 right: (.95 - .25)^2 - .25 * .75 / 3; bin .65: 2 items, none right:
    # .65^2 - 0; bin .45 is a singleton and contributes 0 (its weight stays in N = 7).
    squared = 4 / 7 * (0.7**2 - 0.25 * 0.75 / 3) + 2 / 7 * 0.65**2
    assert debiased_l2_ce(probs, labels, 10) == pytest.approx(math.sqrt(squared), abs=1e-15)
    assert debiased_l2_ce(probs, labels, 10, squared=True) == pytest.approx(squared, abs=1e-15)
    # Calibrated within noise: negative before clipping (one bin: 0 - .5 * .5 / 3), so exactly 0 rooted.
    fair = np.array([[0.5, 0.5]] * 4), np.array([0, 1, 1, 0])
    assert debiased_l2_ce(*fair, 10) == 0.0
    assert debiased_l2_ce(*fair, 10, squared=True) == pytest.approx(-0.25 / 3, abs=1e-15)


def test_right_closed_edges_and_confidence_one_differ_from_torchmetrics_as_documented() -> None:
    # 0.75 with B = 4 sits exactly on an edge: ours in bin 2 = (0.5, 0.75], torchmetrics in [0.75, 1).
    probs = np.array([[0.75, 0.25], [0.7, 0.3]])
    labels = np.array([0, 1])
    assert reliability_bins(probs, labels, 4).counts == (0, 0, 2, 0)
    assert ece(probs, labels, 4) == pytest.approx(abs(0.5 - 0.725))
    tm = multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), 2, n_bins=4, norm="l1")
    assert tm.item() == pytest.approx(0.5 * 0.25 + 0.5 * 0.7, abs=1e-6)
    # Confidence exactly 1.0 goes to our last bin; torchmetrics opens an extra overflow bin for it.
    probs = np.array([[1.0, 0.0], [0.95, 0.05]])
    labels = np.array([1, 0])
    assert reliability_bins(probs, labels, 10).counts[-1] == 2
    assert ece(probs, labels, 10) == pytest.approx(abs(0.5 - 0.975))
    tm = multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), 2, n_bins=10, norm="l1")
    assert tm.item() == pytest.approx(0.5 * 1.0 + 0.5 * 0.05, abs=1e-6)
    # A value of exactly 0 goes to the first bin (with 0.05): class 1's column is (0.0, 0.05).
    assert classwise_bins(probs, labels, 10)[1].counts[0] == 2


# ------------------------------------------------------------------------------------------ reliability bins


def test_reliability_bins_rebuild_ece_and_sce() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), 500)
    labels = draw_labels(rng, probs)
    top = reliability_bins(probs, labels, 15)
    assert top.target is None and top.n_items == 500 and sum(top.counts) == 500
    assert top.edges[0] == 0.0 and top.edges[-1] == 1.0 and len(top.edges) == 16

    def weighted_gap(b: metrics_module.ReliabilityBins) -> float:
        return sum(c / b.n_items * abs(a - f) for c, a, f in zip(b.counts, b.accuracy, b.confidence) if c)

    assert weighted_gap(top) == pytest.approx(ece(probs, labels, 15), abs=1e-12)
    assert np.mean([weighted_gap(b) for b in classwise_bins(probs, labels, 15)]) == pytest.approx(
        sce(probs, labels, 15), abs=1e-12
    )
    # Bins below 1/K are empty for the top label: NaN in the dataclass, None in JSON.
    assert top.counts[0] == 0 and math.isnan(top.confidence[0]) and math.isnan(top.accuracy[0])
    as_json = top.to_json()
    assert as_json["confidence"][0] is None and as_json["counts"] == list(top.counts)
    conf = probs.max(axis=1)
    for b in range(15):
        in_bin = (conf > top.edges[b]) & (conf <= top.edges[b + 1])
        assert top.counts[b] == int(in_bin.sum())
        if in_bin.any():
            assert top.confidence[b] == pytest.approx(conf[in_bin].mean(), abs=1e-12)


# ---------------------------------------------------------------------------- zero-padded options (ARC)


def test_zero_padded_options_behave_as_architecture_md_claims() -> None:
    rng = np.random.default_rng(7)
    probs3 = rng.dirichlet(np.ones(3), 400)
    labels = draw_labels(rng, probs3)
    padded = np.hstack([probs3, np.zeros((400, 1))])
    for f in (ece, mce, debiased_l2_ce, brier, nll, accuracy):
        assert f(padded, labels) == pytest.approx(f(probs3, labels), abs=1e-15)
    # SCE: the real classes' per-class terms are unchanged, the padded class adds 0, the mean is over K_max.
    assert sce(padded, labels) == pytest.approx(sce(probs3, labels) * 3 / 4, abs=1e-15)

    # Mixed: 4-option items and 3-option items padded to 4. Class 3's term is the one its real items give.
    probs4 = rng.dirichlet(np.ones(4), 300)
    labels4 = draw_labels(rng, probs4)
    mixed_p = np.vstack([probs4, padded])
    mixed_y = np.concatenate([labels4, labels])
    n = len(mixed_y)

    def class_sum(values: np.ndarray, hits: np.ndarray) -> float:
        ids = np.clip(np.ceil(values * 15) - 1, 0, 14)
        return sum(abs(hits[ids == b].sum() - values[ids == b].sum()) for b in range(15))

    per_class = [
        class_sum(mixed_p[:, k], (mixed_y == k).astype(float)) / n for k in range(3)
    ] + [class_sum(probs4[:, 3], (labels4 == 3).astype(float)) / n]
    assert sce(mixed_p, mixed_y) == pytest.approx(np.mean(per_class), abs=1e-15)
    # The padded items sit in class 3's first bin (confidence 0, never gold).
    assert classwise_bins(mixed_p, mixed_y)[3].counts[0] >= 400
    # The squared classwise statistic is NOT padding-invariant (documented): the padded zeros join class 3's
    # first bin and change its squared term, unlike a term computed on class 3's real items alone.
    hits = [(mixed_y == k).astype(float) for k in range(4)]
    with_padding = [reference_squared(mixed_p[:, k], hits[k], 15, n) for k in range(4)]
    real_only = with_padding[:3] + [reference_squared(probs4[:, 3], (labels4 == 3).astype(float), 15, n)]

    def mean_root(squared: list[float]) -> float:
        return float(np.mean([math.sqrt(max(s, 0.0)) for s in squared]))

    assert debiased_l2_ce(mixed_p, mixed_y, classwise=True) == pytest.approx(mean_root(with_padding), abs=1e-12)
    assert abs(with_padding[3] - real_only[3]) > 1e-5  # before clipping at 0 and the square root


# ----------------------------------------------------------------------------------------------- properties


@settings(max_examples=5, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 6), alpha=st.floats(0.5, 5.0))
def test_calibrated_ece_and_sce_shrink_towards_zero_as_n_grows(seed: int, k: int, alpha: float) -> None:
    rng = np.random.default_rng(seed)
    eces, sces = [], []
    for n in (300, 3_000, 30_000, 300_000):
        probs = rng.dirichlet(np.full(k, alpha), n)
        labels = draw_labels(rng, probs)
        eces.append(ece(probs, labels))
        sces.append(sce(probs, labels))
    assert eces == sorted(eces, reverse=True) and eces[-1] < 0.01
    assert sces == sorted(sces, reverse=True) and sces[-1] < 0.01


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(2, 6),
    alpha=st.floats(0.5, 3.0),
    temperature=st.floats(0.3, 0.7),
)
def test_sharpening_a_calibrated_model_raises_ece(seed: int, k: int, alpha: float, temperature: float) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, alpha), 20_000)
    labels = draw_labels(rng, probs)
    assert ece(sharpen(probs, temperature), labels) > ece(probs, labels) + 0.01
    assert debiased_l2_ce(sharpen(probs, temperature), labels) > debiased_l2_ce(probs, labels) + 0.01


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_distinct=st.integers(1, 60),
    k=st.integers(2, 5),
    n_bins=st.integers(1, 20),
)
def test_every_metric_is_invariant_to_item_order(seed: int, n_distinct: int, k: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    # Repeated rows make ties, the case where equal-mass binning could depend on order.
    rows = rng.integers(0, n_distinct, 3 * n_distinct)
    probs = rng.dirichlet(np.ones(k), n_distinct)[rows]
    labels = rng.integers(0, k, n_distinct)[rows]
    perm = rng.permutation(len(rows))
    for name, m in METRICS.items():
        kwargs = {"n_bins": n_bins} if m.binned else {}
        assert m.function(probs[perm], labels[perm], **kwargs) == pytest.approx(
            m.function(probs, labels, **kwargs), abs=1e-12
        ), name


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 6), alpha=st.floats(0.5, 5.0))
def test_debiased_estimator_is_near_zero_for_calibrated_data(seed: int, k: int, alpha: float) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, alpha), 50_000)
    labels = draw_labels(rng, probs)
    assert debiased_l2_ce(probs, labels) < 0.01
    assert debiased_l2_ce(probs, labels, classwise=True) < 0.01
    # ... while the same items, miscalibrated by sharpening, are clearly not near 0
    assert debiased_l2_ce(sharpen(probs, 0.5), labels) > 0.03


# -------------------------------------------------------------------------------------------------- registry


def test_registry_names_orientation_and_functions() -> None:
    required = {"ece", "sce", "mce", "brier", "nll", "accuracy", "ece_mass", "debiased_ece", "debiased_sce"}
    required |= {"debiased_ece_sq", "debiased_sce_sq"}
    assert required <= set(METRICS)
    for name, m in METRICS.items():
        assert m.name == name and m.display_name
        assert m.higher_is_worse is (name != "accuracy")
    probs, labels = HAND_P, HAND_Y
    assert METRICS["ece"].function(probs, labels, n_bins=10) == ece(probs, labels, 10)
    assert METRICS["ece_mass"].function(probs, labels, n_bins=2) == ece(probs, labels, 2, scheme="mass")
    assert METRICS["debiased_sce"].function(probs, labels) == debiased_l2_ce(probs, labels, classwise=True)
    assert METRICS["debiased_ece_sq"].function(probs, labels) == debiased_l2_ce(probs, labels, squared=True)
    assert METRICS["debiased_sce_sq"].function(probs, labels) == debiased_l2_ce(
        probs, labels, classwise=True, squared=True
    )
    with pytest.raises(AttributeError):
        METRICS["ece"].higher_is_worse = False  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ validation

GOOD_P = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
GOOD_Y = np.array([0, 1, 1])


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.array([[0.7, 0.3], [np.nan, 0.6], [0.5, 0.5]]), GOOD_Y, r"NaN or inf \(first at row 1, column 0"),
        (np.array([[0.7, 0.3], [0.4, 0.6], [np.inf, 0.5]]), GOOD_Y, r"NaN or inf \(first at row 2, column 0"),
        (np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.4]]), GOOD_Y, r"row 2 sums to 0\.9.*not 1 \(tolerance 0\.0078125"),
        (np.array([[1.1, -0.1], [0.4, 0.6], [0.5, 0.5]]), GOOD_Y, r"negative probability -0\.1 at row 0, column 1"),
        (np.array([[2.0, 1.0], [0.4, 0.6], [0.5, 0.5]]), GOOD_Y, r"row 0 sums to 3\.0"),
        (GOOD_P, np.array([0, 2, 1]), r"labels\[1\] = 2 is out of range for 2 options \(valid: 0\.\.1\)"),
        (GOOD_P, np.array([0, 1, -1]), r"labels\[2\] = -1 is out of range"),
        (GOOD_P, np.array([0.0, 1.5, 1.0]), r"labels\[1\] = 1\.5 is not an integer"),
        (GOOD_P, np.array(["a", "b", "c"]), r"labels must be integer option indices, got dtype <U1"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), r"empty input: probs has 0 rows"),
        (np.zeros((3, 0)), GOOD_Y, r"probs has 0 columns"),
        (GOOD_P, np.array([0, 1]), r"probs has 3 rows, labels has 2"),
        (GOOD_P[0], GOOD_Y, r"probs must be 2-D \(N items, K options\), got shape \(2,\)"),
        (GOOD_P, GOOD_Y[:, None], r"labels must be 1-D \(N,\), got shape \(3, 1\)"),
        (np.array([["a", "b"]] * 3), GOOD_Y, r"probs must hold real numbers"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_problem(
    probs: np.ndarray, labels: np.ndarray, message: str
) -> None:
    for name, m in METRICS.items():
        with pytest.raises(MetricInputError, match=message) as info:
            m.function(probs, labels)
        assert isinstance(info.value, ValueError) and isinstance(info.value, CalibChecksError), name
    with pytest.raises(ValueError, match=message):
        reliability_bins(probs, labels)


def test_row_sum_tolerance_accepts_fp32_softmax_and_rejects_just_beyond() -> None:
    logits = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0)) * 5
    fp32 = torch.softmax(logits, dim=1).numpy()  # float32 rows summing to 1 within ~1e-7
    labels = np.zeros(1000, dtype=int)
    assert 0.0 <= ece(fp32, labels) <= 1.0
    off = GOOD_P.copy()
    off[1] = [0.4, 0.6 + 2 * ROW_SUM_ATOL]
    with pytest.raises(ValueError, match="row 1 sums to"):
        ece(off, GOOD_Y)
    off[1] = [0.4, 0.6 + 0.5 * ROW_SUM_ATOL]
    assert ece(off, GOOD_Y) >= 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rows_are_accepted_and_renormalised(dtype: torch.dtype) -> None:
    # Probabilities stored in bf16 sum to 1 +- 2^-8 (fp16: 2^-11); the metrics take each row divided by its sum.
    logits = torch.randn(4000, 5, generator=torch.Generator().manual_seed(1)) * 3
    stored = torch.softmax(logits, dim=1).to(dtype).double().numpy()
    labels = np.random.default_rng(1).integers(0, 5, 4000)
    deviation = np.abs(stored.sum(axis=1) - 1).max()
    assert deviation > (1e-3 if dtype == torch.bfloat16 else 1e-4), "the rows really are off by the stored precision"
    assert deviation <= ROW_SUM_ATOL / 2
    normalised = stored / stored.sum(axis=1, keepdims=True)
    for name, m in METRICS.items():
        assert m.function(stored, labels) == pytest.approx(m.function(normalised, labels), abs=1e-12), name
    assert overconfidence(stored, labels) != pytest.approx(
        float(np.mean(stored.max(axis=1) - (stored.argmax(axis=1) == labels))), abs=1e-6
    ), "used as stored, the confidences would differ"


def test_ties_count_fractionally_and_do_not_depend_on_option_order() -> None:
    # gold among 2 tied top options -> 1/2; gold not among the tied -> 0; no tie -> 1; gold among 3 tied -> 1/3
    probs = np.array([[0.375, 0.375, 0.25], [0.4, 0.4, 0.2], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    labels = np.array([1, 2, 0, 0])
    correct = np.array([0.5, 0.0, 1.0, 1 / 3])
    conf = np.array([0.375, 0.4, 0.5, 1 / 3])
    assert accuracy(probs, labels) == pytest.approx(correct.mean(), abs=1e-15)
    assert overconfidence(probs, labels) == pytest.approx(float(np.mean(conf - correct)), abs=1e-15)
    assert reliability_bins(probs, labels, 10).accuracy[3] == pytest.approx((0.5 + 0.0 + 1 / 3) / 3, abs=1e-15)
    # Every top-label metric and the reliability bins give the same value under any permutation of the options.
    rng = np.random.default_rng(0)
    base = np.round(rng.dirichlet(np.ones(4), 3000) * 16) + 1  # small integers: many exact ties
    base /= base.sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 3000)
    assert (base == base.max(axis=1, keepdims=True)).sum(axis=1).max() > 1
    for perm in ([1, 0, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1]):
        inverse = np.argsort(perm)
        permuted, permuted_y = base[:, perm], inverse[y]
        for name, m in METRICS.items():
            assert m.function(permuted, permuted_y) == pytest.approx(m.function(base, y), abs=1e-12), (name, perm)
        assert reliability_bins(permuted, permuted_y).to_json() == reliability_bins(base, y).to_json()
    # The lowest-index argmax (torchmetrics' rule) would depend on the order.
    first = lambda p, lab: float(np.mean(p.argmax(axis=1) == lab))  # noqa: E731
    assert first(base, y) != first(base[:, [3, 2, 1, 0]], np.argsort([3, 2, 1, 0])[y])


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "15"])
def test_bad_n_bins_raise(n_bins: object) -> None:
    for f in (ece, sce, mce, debiased_l2_ce, reliability_bins, classwise_bins):
        with pytest.raises(MetricInputError, match=r"n_bins must be an integer >= 1"):
            f(GOOD_P, GOOD_Y, n_bins)  # type: ignore[arg-type]


def test_bad_scheme_raises() -> None:
    with pytest.raises(MetricInputError, match=r"scheme must be 'width' or 'mass', got 'quantile'"):
        ece(GOOD_P, GOOD_Y, scheme="quantile")


def test_float_labels_with_whole_values_and_list_inputs_are_accepted() -> None:
    assert ece(GOOD_P.tolist(), [0.0, 1.0, 1.0]) == ece(GOOD_P, GOOD_Y)
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(metrics_module.NLL_EPS))


# ------------------------------------------------------------------------------------------------ bootstrap


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    base = rng.dirichlet(np.ones(4), 300)
    labels = draw_labels(rng, base)
    return base, sharpen(base, 0.7), labels


def test_bootstrap_is_reproducible_with_a_seed_and_reports_its_inputs(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    base, aligned, labels = pair
    a = paired_bootstrap("ece", base, aligned, labels, n_resamples=200, seed=5)
    b = paired_bootstrap("ece", base, aligned, labels, n_resamples=200, seed=5)
    c = paired_bootstrap("ece", base, aligned, labels, n_resamples=200, seed=6)
    assert a == b
    assert a.basic != c.basic and a.change == c.change
    assert (a.n_items, a.n_resamples, a.confidence, a.seed, a.metric, a.n_bins, a.n_clusters) == (
        300, 200, 0.95, 5, "ece", 15, None,
    )
    assert a.base_value == ece(base, labels) and a.aligned_value == ece(aligned, labels)
    assert a.change == pytest.approx(a.aligned_value - a.base_value, abs=0)
    assert a.percentile[0] < a.percentile[1] and a.basic[0] < a.change < a.basic[1]
    assert paired_bootstrap("brier", base, aligned, labels, n_resamples=50).n_bins is None


@pytest.mark.parametrize("name", sorted(METRICS))
def test_bootstrap_of_identical_models_is_exactly_zero(
    name: str, pair: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, _, labels = pair
    r = paired_bootstrap(name, base, base.copy(), labels, n_resamples=100)
    assert r.change == 0.0 and r.basic == (0.0, 0.0) and r.percentile == (0.0, 0.0)


def loop_replicates(
    f, base: np.ndarray, aligned: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int,
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """The bootstrap written the slow, obvious way: resample indices, call the plain function on both models."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        if clusters is None:
            idx = np.floor(rng.random(len(labels)) * len(labels)).astype(int)
        else:
            names = np.unique(clusters)
            picked = np.floor(rng.random(len(names)) * len(names)).astype(int)
            idx = np.concatenate([np.flatnonzero(clusters == names[c]) for c in picked])
        out.append(f(aligned[idx], labels[idx]) - f(base[idx], labels[idx]))
    return np.array(out)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_vectorised_bootstrap_equals_plain_loop(
    name: str, pair: tuple[np.ndarray, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, aligned, labels = pair
    m = METRICS[name]

    def f(p: np.ndarray, y: np.ndarray) -> float:
        return m.function(p, y, n_bins=10) if m.binned else m.function(p, y)

    changes = loop_replicates(f, base, aligned, labels, 60, seed=3)
    q_lo, q_hi = np.quantile(changes, [0.05, 0.95])
    change = f(aligned, labels) - f(base, labels)
    # small chunks: several chunks, so the random stream must not depend on chunking
    monkeypatch.setattr(metrics_module, "_CHUNK_ENTRIES", 7 * base.size)
    r = paired_bootstrap(name, base, aligned, labels, n_resamples=60, confidence=0.9, seed=3, n_bins=10)
    assert r.change == pytest.approx(change, abs=1e-12)
    assert r.percentile == pytest.approx((q_lo, q_hi), abs=1e-12)
    assert r.basic == pytest.approx((2 * change - q_hi, 2 * change - q_lo), abs=1e-12)
    # the private replicate values themselves, a few of them
    ones = np.ones((1, len(labels)))
    rng = np.random.default_rng(3)
    weights = next(metrics_module._resample_weights(rng, len(labels), 4, None, 4))
    prep = metrics_module.METRICS[name].prepare
    vectorised = prep(aligned, labels, 10)(weights) - prep(base, labels, 10)(weights)
    assert vectorised == pytest.approx(changes[:4], abs=1e-12)
    assert prep(base, labels, 10)(ones)[0] == pytest.approx(f(base, labels), abs=1e-15)


def test_generic_callable_goes_through_the_loop_and_matches(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, aligned, labels = pair
    vectorised = paired_bootstrap("sce", base, aligned, labels, n_resamples=40, n_bins=10)
    looped = paired_bootstrap(lambda p, y: sce(p, y, 10), base, aligned, labels, n_resamples=40)
    assert looped.metric == "<lambda>" and looped.n_bins is None
    assert looped.basic == pytest.approx(vectorised.basic, abs=1e-12)
    # passing a registered function is the same as passing its name
    assert paired_bootstrap(sce, base, aligned, labels, n_resamples=40, n_bins=10) == vectorised


def test_cluster_bootstrap_resamples_whole_clusters(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, aligned, labels = pair
    clusters = np.array([f"subject-{i % 7}" for i in range(len(labels))])
    for name in ("ece", "ece_mass", "debiased_sce", "nll"):
        m = METRICS[name]
        changes = loop_replicates(m.function, base, aligned, labels, 50, seed=2, clusters=clusters)
        r = paired_bootstrap(name, base, aligned, labels, n_resamples=50, confidence=0.8, seed=2, clusters=clusters)
        assert r.n_clusters == 7
        assert r.percentile == pytest.approx(tuple(np.quantile(changes, [0.1, 0.9])), abs=1e-12)


def test_bootstrap_of_2000_by_10000_runs_in_seconds() -> None:
    # The brief's size; a generous bound so a loaded 2-core CI box passes (docs/METRICS.md has the timing).
    import time

    rng = np.random.default_rng(0)
    base = rng.dirichlet(np.ones(4), 10_000)
    labels = draw_labels(rng, base)
    start = time.perf_counter()
    r = paired_bootstrap("ece", base, sharpen(base, 0.7), labels, n_resamples=2000)
    assert time.perf_counter() - start < 20.0
    assert r.basic[0] > 0.0  # a real change of ~0.08 is detected at N = 10,000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "ecee"}, r"unknown metric 'ecee'; known: accuracy, brier"),
        ({"metric": 3}, r"metric must be a name in METRICS or a callable"),
        ({"n_resamples": 0}, r"n_resamples must be an integer >= 1"),
        ({"confidence": 1.0}, r"confidence must be strictly between 0 and 1"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
        ({"n_bins": 0}, r"n_bins must be an integer >= 1"),
        ({"clusters": np.zeros(5)}, r"clusters must have one label per item, shape \(300,\)"),
        ({"clusters": np.zeros(300)}, r"a single cluster"),
        ({"aligned_probs": np.full((300, 5), 0.2)}, r"must have the same shape"),
        ({"aligned_probs": np.full((300, 4), 0.3)}, r"aligned_probs row 0 sums to"),
    ],
)
def test_bootstrap_validation(kwargs: dict, message: str, pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, aligned, labels = pair
    args = {"metric": "ece", "base_probs": base, "aligned_probs": aligned, "labels": labels} | kwargs
    with pytest.raises(MetricInputError, match=message):
        paired_bootstrap(**args)


# ------------------------------------------------------------------------------------------ over-confidence


@settings(max_examples=30, deadline=None)
@given(dirichlet_cases())
def test_overconfidence_agrees_with_a_direct_numpy_computation(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    probs, labels, _ = case
    direct = float(np.mean(probs.max(axis=1) - (probs.argmax(axis=1) == labels)))
    assert overconfidence(probs, labels) == pytest.approx(direct, abs=1e-12)
    # a one-bin signed ECE: never larger than ECE in absolute value, for any binning
    assert abs(overconfidence(probs, labels)) <= ece(probs, labels, 15) + 1e-12


def test_hand_computed_overconfidence_and_its_registry_entry() -> None:
    # confidences .85 (right), .65 (wrong), .75 (right), .82 (right)
    assert overconfidence(HAND_P, HAND_Y) == pytest.approx((0.85 - 1 + 0.65 + 0.75 - 1 + 0.82 - 1) / 4, abs=1e-15)
    m = METRICS["overconfidence"]
    assert m.higher_is_worse and not m.binned and m.function is overconfidence
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(4), 20_000)
    labels = draw_labels(rng, probs)
    assert abs(overconfidence(probs, labels)) < 0.01  # calibrated: about 0
    assert overconfidence(sharpen(probs, 0.5), labels) > 0.05  # sharpened: over-confident
    assert overconfidence(sharpen(probs, 2.0), labels) < -0.05  # flattened: under-confident


# ------------------------------------------------------------------- normal interval, p-values, MC error


def test_normal_interval_is_the_inflated_bias_corrected_normal_approximation_of_the_replicates(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    base, aligned, labels = pair
    r = paired_bootstrap("ece", base, aligned, labels, n_resamples=500, confidence=0.9, seed=4)
    d = loop_replicates(lambda p, y: ece(p, y), base, aligned, labels, 500, seed=4)
    assert r.replicates == pytest.approx(d, abs=1e-12)
    assert r.replicate_mean == pytest.approx(d.mean(), abs=1e-12)
    assert r.replicate_sd == pytest.approx(d.std(ddof=1), abs=1e-12)
    z = 1.6448536269514722  # Phi^-1(0.95)
    centre = 2 * r.change - d.mean()
    se = metrics_module.SE_INFLATION["ece"] * d.std(ddof=1)  # ECE's measured inflation (docs/GATE.md)
    assert r.centre == pytest.approx(centre, abs=1e-12) and r.se == pytest.approx(se, abs=1e-12)
    assert r.normal == pytest.approx((centre - z * se, centre + z * se), abs=1e-12)
    assert r.interval("normal") == r.normal and r.interval("basic") == r.basic
    # a mean needs no inflation: over-confidence's se is the replicates' sd
    plain = paired_bootstrap("overconfidence", base, aligned, labels, n_resamples=500, confidence=0.9, seed=4)
    assert METRICS["overconfidence"].se_inflation == 1.0 and plain.se == plain.replicate_sd
    with pytest.raises(MetricInputError, match="interval method"):
        r.interval("bca")


@pytest.mark.parametrize("higher_is_worse", [True, False])
def test_p_values_follow_their_definitions(pair: tuple[np.ndarray, np.ndarray, np.ndarray],
                                           higher_is_worse: bool) -> None:
    base, aligned, labels = pair
    r = paired_bootstrap("sce", base, aligned, labels, n_resamples=1000, seed=1)
    sign = 1.0 if higher_is_worse else -1.0
    w, w_star = sign * r.change, sign * r.replicates
    for margin in (-0.05, 0.0, 0.01, 0.03, 0.2):
        expected = 0.5 * math.erfc((sign * r.centre - margin) / r.se / math.sqrt(2))
        assert r.p_value(margin, "normal", higher_is_worse) == pytest.approx(expected, rel=1e-12, abs=1e-300)
        assert r.p_value(margin, "basic", higher_is_worse) == (1 + np.sum(w_star >= 2 * w - margin)) / 1001
        assert r.p_value(margin, "percentile", higher_is_worse) == (1 + np.sum(w_star <= margin)) / 1001
    # the normal p-value resolves the far tail (Holm over 54 cases needs ~1e-3), the replicates cannot
    far = sign * r.centre - 5 * r.se
    assert r.p_value(far, "normal", higher_is_worse) == pytest.approx(2.8665e-7, rel=1e-3)
    assert r.p_value(far, "basic", higher_is_worse) >= 1 / 1001
    # p <= a exactly when the one-sided (1 - a) lower bound of the normal interval is above the margin
    lower = r.normal[0] if higher_is_worse else -r.normal[1]
    assert r.p_value(lower - 1e-9, "normal", higher_is_worse) < 0.025 < r.p_value(lower + 1e-9, "normal",
                                                                                     higher_is_worse)


def test_identical_models_have_p_one_within_and_zero_beyond_the_margin(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    base, _, labels = pair
    r = paired_bootstrap("overconfidence", base, base.copy(), labels, n_resamples=1000)
    assert r.normal == (0.0, 0.0) and r.replicate_sd == 0.0
    assert r.p_value(0.0) == 1.0 and r.p_value(0.01) == 1.0 and r.p_value(-0.01) == 0.0
    assert r.mc_error("normal") == 0.0 and r.mc_error("basic") == 0.0


def test_monte_carlo_error_of_the_interval_ends(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, aligned, labels = pair
    r = paired_bootstrap("ece", base, aligned, labels, n_resamples=2000, seed=0)
    z = 1.959963984540054
    c = metrics_module.SE_INFLATION["ece"]
    assert r.mc_error("normal") == pytest.approx(r.replicate_sd * math.sqrt(1 / 2000 + c * c * z * z / 3998),
                                                 rel=1e-12)
    batches = np.array_split(r.replicates, metrics_module.MC_BATCHES)
    ends = np.array([np.quantile(b, [0.025, 0.975]) for b in batches])
    assert r.mc_error("percentile") == pytest.approx((ends.std(axis=0, ddof=1) / math.sqrt(10)).max(), rel=1e-12)
    assert r.mc_error("basic") == pytest.approx(r.mc_error("percentile"), rel=1e-9)  # mirrored ends
    # the MC error is a small fraction of the interval's width at 2000 replicates, and it matches reality:
    # ends from 8 independent seeds scatter by about the stated error
    assert r.mc_error("normal") < 0.05 * (r.normal[1] - r.normal[0])
    uppers = [paired_bootstrap("ece", base, aligned, labels, n_resamples=2000, seed=s).normal[1] for s in range(8)]
    assert 0.3 * r.mc_error("normal") < np.std(uppers, ddof=1) < 3 * r.mc_error("normal")


@pytest.mark.parametrize("name", ["ece", "sce", "mce", "debiased_sce_sq"])
def test_dense_and_gather_replicate_sums_agree(name: str, pair: tuple[np.ndarray, np.ndarray, np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    base, aligned, labels = pair
    monkeypatch.setattr(metrics_module, "_DENSE_COLS", 512)
    dense = paired_bootstrap(name, base, aligned, labels, n_resamples=300, seed=2)
    monkeypatch.setattr(metrics_module, "_DENSE_COLS", 0)
    gather = paired_bootstrap(name, base, aligned, labels, n_resamples=300, seed=2)
    assert dense.replicates == pytest.approx(gather.replicates, abs=1e-12)
    assert dense.change == pytest.approx(gather.change, abs=1e-15)

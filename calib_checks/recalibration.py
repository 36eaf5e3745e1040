"""Temperature scaling: is a calibration regression cheap to repair?

For one model, task and extractor the records hold per-option log-scores s[i,k] (before the softmax across
options). Temperature scaling (Guo et al. 2017) replaces the probabilities by

    p_T[i,k] = exp(s[i,k] / T) / sum_j exp(s[i,j] / T)

with the single T > 0 that minimises the negative log-likelihood NLL(T) = -mean_i log p_T[i, y_i].
T = 1 leaves the model as it is; T > 1 softens it (the model was over-confident); T < 1 sharpens it.
NLL is convex in 1/T (a log-sum-exp of a linear function minus a linear term), hence unimodal in log T, so a
golden-section search on log T over a bounded interval finds the optimum without derivatives.

`cross_fit` is honest about over-fitting: the items are split in two halves deterministically (by sha256 of
the item id, so base and aligned models get the same halves in every run); T is fitted on one half and the
ECE evaluated on the other, then the halves swap, and the two ECEs are averaged. The ECE "before" is the
same average at T = 1, so before and after are measured on the same item sets with the same bias (plug-in
ECE grows as N shrinks, see reference facts section 2). HELM's Platt-scaled ECE serves the same purpose.

`repair` asks whether one temperature brings a model back to a reference's calibration (the pair's base, a
chain's first checkpoint), on held-out items and with an interval: "repairable by one temperature", "not
repairable by one temperature" (the damage is not a matter of scale) or "cannot tell". This is narrower than
the calibratable and non-calibratable regimes of calibration-aware fine-tuning (Xiao et al., ICML 2025, arXiv
2505.01997, section 4.2), which are defined by bounds of a model's ECE relative to its accuracy; the report
does not use their names for this test.

Variable option counts: scores of absent options are -inf (probability 0 at every T), so padding changes
neither the fit nor the ECE. Plain numpy; no torch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from calib_checks.errors import CalibChecksError
from calib_checks.metrics import ece

T_BOUNDS = (0.05, 20.0)
"""Search interval for T. A fit at a bound (separable data, or a degenerate extractor) is flagged."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class RecalibrationError(CalibChecksError, ValueError):
    """Scores or labels that temperature scaling cannot use."""


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0] or scores.shape[0] == 0:
        raise RecalibrationError(
            f"temperature scaling needs scores of shape (N, K) and N labels with N > 0; got scores "
            f"{scores.shape} and labels {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise RecalibrationError(f"labels must be integer option indices in [0, {scores.shape[1]}); got {labels[:5]}")
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise RecalibrationError("scores hold NaN or +inf: the records are corrupt; re-score the model")
    if not np.isfinite(scores[np.arange(len(labels)), labels]).all():
        raise RecalibrationError("a gold option has score -inf (an absent option): labels and scores disagree")
    return scores, labels


def scaled_log_probs(scores: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(scores / T) across options (axis 1), float64; -inf scores stay at probability 0."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    top = np.max(z, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # -inf - top = -inf is intended
        shifted = z - top
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def temperature_nll(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """NLL(T) = -mean_i log softmax(s_i / T)[y_i] (natural log)."""
    log_p = scaled_log_probs(scores, temperature)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def fit_temperature(
    scores: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS, tol: float = 1e-7
) -> float:
    """The T in `bounds` minimising `temperature_nll`, by golden-section search on log T (to `tol` in log T)."""
    scores, labels = _check(scores, labels)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def f(u: float) -> float:
        return temperature_nll(scores, labels, math.exp(u))

    a, b = lo, hi
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    # The interior search never evaluates the ends; a minimum at a bound must still be reported there.
    candidates = [(f(lo), lo), (min(fc, fd), c if fc <= fd else d), (f(hi), hi)]
    return math.exp(min(candidates)[1])


def split_halves(ids: Sequence[str]) -> np.ndarray:
    """Boolean mask of half A: the items whose sha256(id) ranks in the lower half (N // 2 items).

    Depends only on the ids, not on their order or on any random state, so it is the same for the base
    and the aligned model and across runs.
    """
    if len(set(ids)) != len(ids):
        raise RecalibrationError("item ids are not unique: the halves of temperature scaling need unique ids")
    keys = [hashlib.sha256(str(item_id).encode("utf-8")).hexdigest() for item_id in ids]
    order = np.argsort(np.asarray(keys), kind="stable")
    mask = np.zeros(len(ids), dtype=bool)
    mask[order[: len(ids) // 2]] = True
    return mask


@dataclass(frozen=True)
class TemperatureFit:
    """Temperature scaling of one model on one task and extractor.

    temperature: T fitted on all items (the single best T; > 1 = over-confident).
    half_temperatures: (T fitted on half A, T fitted on half B).
    ece_before: mean over the halves of the ECE at T = 1.
    ece_after: mean of ECE(half B at T_A) and ECE(half A at T_B).
    at_bound: some fit hit the search interval's end (T is then a bound, not an optimum).
    """

    temperature: float
    half_temperatures: tuple[float, float]
    ece_before: float
    ece_after: float
    n_items: int
    n_bins: int
    at_bound: bool

    def to_json(self) -> dict:
        return asdict(self)


def cross_fit(scores: np.ndarray, labels: np.ndarray, ids: Sequence[str], n_bins: int = 15) -> TemperatureFit:
    """Fit T on one half, evaluate ECE (`n_bins` equal-width bins) on the other, swap, average."""
    scores, labels = _check(scores, labels)
    if len(ids) != len(labels) or len(labels) < 4:
        raise RecalibrationError(f"cross-fitting needs one id per item and at least 4 items; got {len(labels)}")
    half_a = split_halves(ids)
    halves = (half_a, ~half_a)

    def ece_at(mask: np.ndarray, temperature: float) -> float:
        probs = np.exp(scaled_log_probs(scores[mask], temperature))
        return float(ece(probs, labels[mask], n_bins=n_bins))

    fitted = tuple(fit_temperature(scores[mask], labels[mask]) for mask in halves)
    overall = fit_temperature(scores, labels)
    before = np.mean([ece_at(mask, 1.0) for mask in halves])
    after = np.mean([ece_at(halves[1], fitted[0]), ece_at(halves[0], fitted[1])])
    at_bound = any(
        math.isclose(t, bound, rel_tol=1e-4) for t in (overall, *fitted) for bound in T_BOUNDS
    )
    return TemperatureFit(
        temperature=overall,
        half_temperatures=(fitted[0], fitted[1]),
        ece_before=float(before),
        ece_after=float(after),
        n_items=len(labels),
        n_bins=n_bins,
        at_bound=at_bound,
    )


#: Outcomes of `repair`.
REPAIRS = ("repairable by one temperature", "not repairable by one temperature", "cannot tell")


@dataclass(frozen=True)
class Repair:
    """Whether one temperature brings a model back to a reference model's calibration (`repair`).

    ``gap``: ECE of the model at its cross-fitted temperature minus the reference's ECE at T = 1, both on
    held-out items (each half scored at the temperature fitted on the other half); ``interval``: its paired
    bootstrap interval (the gate's normal interval, at `confidence`); ``margin``: what "back" means (the gate's
    ECE margin); ``verdict``: one of `REPAIRS`.
    """

    gap: float
    interval: tuple[float, float]
    margin: float
    verdict: str
    temperature: float
    ece_before: float
    ece_after: float

    def to_json(self) -> dict:
        return asdict(self)


def repair(scores: np.ndarray, reference_scores: np.ndarray, labels: np.ndarray, ids: Sequence[str], *,
           margin: float, n_bins: int = 15, n_resamples: int = 1000, confidence: float = 0.95,
           seed: int = 0) -> Repair:
    """Is the model's miscalibration relative to the reference model (its base, the chain's first checkpoint)
    repairable by one temperature?

    The model's held-out probabilities at its cross-fitted temperature (half A at the T fitted on half B, and
    the reverse) are compared with the reference's at T = 1 on the same items by the paired bootstrap the gate
    uses for ECE: "repairable by one temperature" when the interval's upper end is within `margin`, "not
    repairable by one temperature" when its lower end is beyond it, "cannot tell" otherwise. The temperature's
    own estimation error is left out (it is fitted on the other half: the items judged never fitted it).
    """
    from calib_checks.metrics import paired_bootstrap

    scores, labels = _check(scores, labels)
    reference_scores, _ = _check(reference_scores, labels)
    fit = cross_fit(scores, labels, ids, n_bins=n_bins)
    half_a = split_halves(ids)
    repaired = np.empty_like(scores)
    for mask, temperature in ((~half_a, fit.half_temperatures[0]), (half_a, fit.half_temperatures[1])):
        repaired[mask] = np.exp(scaled_log_probs(scores[mask], temperature))
    reference = np.exp(scaled_log_probs(reference_scores, 1.0))
    boot = paired_bootstrap("ece", reference, repaired, labels, n_resamples=n_resamples, confidence=confidence,
                            seed=seed, n_bins=n_bins)
    lo, hi = boot.interval("normal")
    verdict = REPAIRS[0] if hi <= margin else REPAIRS[1] if lo > margin else REPAIRS[2]
    return Repair(gap=boot.change, interval=(lo, hi), margin=margin, verdict=verdict, temperature=fit.temperature,
                  ece_before=fit.ece_before, ece_after=fit.ece_after)

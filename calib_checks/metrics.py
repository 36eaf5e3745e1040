"""Calibration metrics on plain arrays, and a paired bootstrap for the change between two models.

Every metric takes ``probs`` of shape (N, K) (row i is a probability distribution over item i's K options)
and ``labels`` of shape (N,) (the gold option's index), and returns a Python float. Definitions follow the
reference notes, section 2 (docs/METRICS.md has the full write-up, the conventions, and where we depart from
torchmetrics, netcal and Kumar's ``uncertainty-calibration`` package):

* Equal-width bins are right-closed: a value v goes to bin ``ceil(v * B) - 1`` clipped to ``[0, B - 1]``,
  computed in float64, so bin b is ``(b/B, (b+1)/B]``, 0 goes to the first bin and 1.0 to the last. (as
  Guo et al. 2017 and Kumar's ``get_ece``; torchmetrics is left-closed with an overflow bin for exactly 1.0,
  so it disagrees only for values sitting exactly on an edge.)
* A bin's confidence is the MEAN of the values in it, never the bin's midpoint.
* Empty bins contribute nothing.

Inputs are validated (``MetricInputError``, a ``ValueError``): finite, non-negative, rows summing to 1 within
``ROW_SUM_ATOL`` (then divided by their sum, so probabilities stored in bf16 or fp16 are accepted), integer labels
in ``0..K-1``, matching non-empty shapes, ``n_bins >= 1``.

Top-label correctness is fractional on ties: ``correct_i = [y_i in T_i] / |T_i|``, T_i the options whose
probability equals the row's maximum exactly (as stored), so no metric depends on the order of the options
(torchmetrics and numpy's argmax take the lowest index instead; docs/METRICS.md).

Variable option counts: rows padded with probability 0 for absent options (``scoring.TaskScores.probs``)
leave top-label ECE/MCE/debiased ECE, Brier, NLL and accuracy unchanged, and leave SCE's per-class sums for
real classes unchanged (SCE then averages over the padded K). The squared classwise statistic
(``debiased_l2_ce(classwise=True)``) is NOT padding-invariant: padded zeros join the first bin of the absent
class. See docs/METRICS.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from calib_checks.errors import CalibChecksError

__all__ = [
    "METRICS",
    "ROW_SUM_ATOL",
    "SE_INFLATION",
    "NLL_EPS",
    "INTERVAL_METHODS",
    "BootstrapResult",
    "Metric",
    "MetricInputError",
    "ReliabilityBins",
    "accuracy",
    "brier",
    "classwise_bins",
    "debiased_l2_ce",
    "ece",
    "mce",
    "nll",
    "normal_quantile",
    "normal_sf",
    "overconfidence",
    "paired_bootstrap",
    "reliability_bins",
    "sce",
    "use_matrix_sums",
]

#: Largest accepted ``|sum_k probs[i, k] - 1|``; accepted rows are divided by their sum. Rounding each entry of a
#: row to a format with unit roundoff u moves the sum by at most u * sum_k p_k = u: u = 2^-8 for bfloat16
#: (measured: 0.0033 at most over 200,000 rows of K = 2..10, stored or computed by a bf16 softmax), 2^-11 for
#: float16, 2^-24 for float32. 2^-7 = 0.0078 is twice bf16's bound: it accepts every bf16, fp16 or fp32 row
#: and still rejects logits, percentages, unnormalised scores and rows that miss an option worth more than 2^-7
#: (a row missing less is renormalised: its missing option counts as probability 0).
ROW_SUM_ATOL = 2.0**-7

#: NLL clips the gold probability from below at this value (scikit-learn's historical ``log_loss`` eps), so an
#: underflowed probability gives a large finite loss (34.5 nats) instead of inf.
NLL_EPS = 1e-15

# Bootstrap replicates are processed in chunks of at most this many (replicate, item, column) entries, so
# the working arrays stay near cache size (about 1 MB each) whatever N and n_resamples are.
_CHUNK_ENTRIES = 1 << 17

# Groupings with at most this many non-empty columns sum replicates by a matrix product (see _Grouping). Off
# (0) by default: the product goes through BLAS, which is about 2x faster than the gather when BLAS runs
# single-threaded, but a multi-threaded OpenBLAS on a loaded machine made it 30x SLOWER (measured: 24 s
# instead of 0.7 s for ECE + SCE, 5000 items, 2000 replicates). calib_checks.simulation turns it on in its
# single-threaded worker processes (use_matrix_sums).
_DENSE_COLS = 0


def use_matrix_sums(enabled: bool) -> None:
    """Sum bootstrap replicates by matrix products (True; only with a single-threaded BLAS) or by gathers."""
    global _DENSE_COLS
    _DENSE_COLS = 512 if enabled else 0


class MetricInputError(CalibChecksError, ValueError):
    """Invalid input to a metric (NaN, bad shape, rows not summing to 1, label out of range, ...)."""


# --------------------------------------------------------------------------------------------- validation


def _validate(probs: ArrayLike, labels: ArrayLike, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """Return float64 probs (N, K) and int64 labels (N,), or raise MetricInputError naming the problem."""
    p = np.asarray(probs)
    if p.dtype.kind not in "fiu":
        raise MetricInputError(f"{name} must hold real numbers, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim != 2:
        raise MetricInputError(f"{name} must be 2-D (N items, K options), got shape {p.shape}")
    n, k = p.shape
    if n == 0:
        raise MetricInputError(f"empty input: {name} has 0 rows; metrics need at least one item")
    if k == 0:
        raise MetricInputError(f"{name} has 0 columns; every item needs at least one option")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise MetricInputError(f"labels must be 1-D (N,), got shape {y.shape}")
    if y.shape[0] != n:
        raise MetricInputError(
            f"{name} and labels disagree on the number of items: {name} has {n} rows, labels has {y.shape[0]}"
        )
    bad = ~np.isfinite(p)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MetricInputError(f"{name} holds NaN or inf (first at row {r}, column {c}: {float(p[r, c])})")
    neg = p < 0
    if neg.any():
        r, c = np.argwhere(neg)[0]
        raise MetricInputError(f"{name} holds a negative probability {float(p[r, c])!r} at row {r}, column {c}")
    # Summed in sorted order: a float sum depends on the order of its terms, and the renormalised values (their
    # bins, their ties) must not depend on the order of the options.
    sums = np.sort(p, axis=1).sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        r = int(np.argmax(off))
        raise MetricInputError(
            f"{name} row {r} sums to {float(sums[r])!r}, not 1 (tolerance {ROW_SUM_ATOL:g}, twice bfloat16's "
            "rounding); pass softmax probabilities over the options, not logits, scores or percentages"
        )
    if y.dtype.kind == "f":
        nonint = ~np.isfinite(y) | (y != np.round(y))
        if nonint.any():
            i = int(np.argmax(nonint))
            raise MetricInputError(f"labels[{i}] = {y[i].item()!r} is not an integer option index")
    elif y.dtype.kind not in "iu":
        raise MetricInputError(f"labels must be integer option indices, got dtype {y.dtype}")
    out = (y < 0) | (y >= k)
    if out.any():
        i = int(np.argmax(out))
        raise MetricInputError(f"labels[{i}] = {y[i].item()!r} is out of range for {k} options (valid: 0..{k - 1})")
    # Renormalised so that low-precision rows are distributions; equal entries stay exactly equal (ties).
    return p / sums[:, None], y.astype(np.int64)


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricInputError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


# ------------------------------------------------------------------------------------------ shared pieces
#
# Every metric is built by a "preparer" from (probs, labels, n_bins): it does the per-item work once and
# returns a function of item weights w of shape (R, N) (w[r, i] = how many times item i appears in replicate
# r) giving the metric for each of the R replicates. The plain functions pass one replicate of ones; the
# bootstrap passes resampling counts. So the bootstrap and the plain functions share one implementation, and
# a replicate's value equals the plain function on the resampled items (tested).

_Evaluate = Callable[[np.ndarray], np.ndarray]
_Prepare = Callable[[np.ndarray, np.ndarray, int], _Evaluate]


def _width_bin_ids(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Right-closed equal-width bin of each value: ceil(v * B) - 1 clipped to [0, B - 1], in float64."""
    return np.clip(np.ceil(values * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


class _Grouping:
    """Item entries grouped by column id (a bin, or class k's bin b at column k * B + b).

    ``cols`` is (N,) or (N, K) (K entries per item). Entries are sorted by column once, so the weighted
    column sums of all replicates are one gather and one ``np.add.reduceat`` along the items; with few
    columns (at most ``_DENSE_COLS`` non-empty ones: ECE's and SCE's bins; off by default, see
    ``use_matrix_sums``) each value array is instead folded once into an (N, columns) matrix and the sums of
    all replicates are one matrix product (equal to the gather path to rounding, tested).
    """

    def __init__(self, cols: np.ndarray, n_cols: int) -> None:
        flat = cols.reshape(-1)
        self._order = np.argsort(flat, kind="stable")
        self._item = self._order // (1 if cols.ndim == 1 else cols.shape[1])
        self._present, self._starts = np.unique(flat[self._order], return_index=True)
        self.n_cols = n_cols
        self._n_items = cols.shape[0]
        self._dense = self._present.size <= _DENSE_COLS
        self._matrices: dict[int, tuple[np.ndarray | None, np.ndarray]] = {}
        if self._dense:
            # the present-column index of every sorted entry
            self._entry_col = np.repeat(np.arange(self._present.size), np.diff(np.append(self._starts, flat.size)))

    def _matrix(self, v: np.ndarray | None) -> np.ndarray:
        key = 0 if v is None else id(v)
        hit = self._matrices.get(key)
        if hit is not None and hit[0] is v:
            return hit[1]
        m = np.zeros((self._n_items, self._present.size))
        np.add.at(m, (self._item, self._entry_col), 1.0 if v is None else v)
        self._matrices[key] = (v, m)
        return m

    def sort(self, values: np.ndarray) -> np.ndarray:
        """Per-entry values (same shape as cols) in the grouping's order, for ``sums``."""
        return values.reshape(-1)[self._order]

    def sums(self, w: np.ndarray, *sorted_values: np.ndarray | None) -> list[np.ndarray]:
        """For each value array v (None: counts): out[r, j] = sum over entries e in column j of w[r, item(e)] v[e]."""
        if self._dense:
            result = []
            for v in sorted_values:
                out = np.zeros((w.shape[0], self.n_cols))
                out[:, self._present] = w @ self._matrix(v)
                result.append(out)
            return result
        gathered = w[:, self._item]
        result = []
        for v in sorted_values:
            out = np.zeros((w.shape[0], self.n_cols))
            out[:, self._present] = np.add.reduceat(gathered if v is None else gathered * v, self._starts, axis=1)
            result.append(out)
        return result


def _top_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence ``conf_i = max_k p[i, k]`` and fractional correctness ``[y_i in T_i] / |T_i|``.

    T_i holds the options whose probability equals conf_i exactly. Stored bf16/fp16/fp32 values convert to
    float64 exactly and renormalising divides a row by one number, so options equal in the stored precision
    are tied and options one stored ulp apart are not. The expected correctness of a uniformly random pick
    among the tied options, it does not depend on the order of the options (an argmax would).
    """
    conf = p.max(axis=1)
    top = p == conf[:, None]
    return conf, top[np.arange(p.shape[0]), y] / top.sum(axis=1)


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    return (y[:, None] == np.arange(k)).astype(np.float64)


def _classwise_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Column id of entry (i, k): class k's own bins, k * B + bin(p[i, k])."""
    return _width_bin_ids(p, n_bins) + n_bins * np.arange(p.shape[1])


def _prepare_ece_width(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    conf, correct = _top_label(p, y)
    groups = _Grouping(_width_bin_ids(conf, n_bins), n_bins)
    gap = groups.sort(correct - conf)
    return lambda w: np.abs(groups.sums(w, gap)[0]).sum(axis=1) / w.sum(axis=1)


def _prepare_ece_mass(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    # Equal-mass bins are redrawn on every replicate: items sorted by confidence, the item of 0-based rank r
    # goes to bin floor(r * B / N); items with EQUAL confidence form one group that goes to the bin of its
    # lowest rank, so ties never straddle two bins and the result does not depend on item order.
    conf, correct = _top_label(p, y)
    values, group = np.unique(conf, return_inverse=True)
    groups = _Grouping(group, values.shape[0])  # column = group, in increasing confidence
    gap = groups.sort(correct - conf)

    def evaluate(w: np.ndarray) -> np.ndarray:
        group_w, group_gap = groups.sums(w, None, gap)
        count = np.rint(group_w).astype(np.int64)
        n = count.sum(axis=1)
        first_rank = np.cumsum(count, axis=1) - count
        # a group absent from a replicate (count 0) may sit at rank N: clip it, it adds 0 anyway
        bins = np.minimum((first_rank * n_bins) // n[:, None], n_bins - 1)
        ids = bins + n_bins * np.arange(w.shape[0])[:, None]
        per_bin = np.bincount(ids.ravel(), weights=group_gap.ravel(), minlength=w.shape[0] * n_bins)
        return np.abs(per_bin.reshape(w.shape[0], n_bins)).sum(axis=1) / n

    return evaluate


def _prepare_mce(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    conf, correct = _top_label(p, y)
    groups = _Grouping(_width_bin_ids(conf, n_bins), n_bins)
    gap = groups.sort(correct - conf)

    def evaluate(w: np.ndarray) -> np.ndarray:
        count, total_gap = groups.sums(w, None, gap)
        per_bin = np.divide(np.abs(total_gap), count, out=np.zeros_like(count), where=count > 0)
        return per_bin.max(axis=1)

    return evaluate


def _prepare_sce(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    k = p.shape[1]
    groups = _Grouping(_classwise_ids(p, n_bins), k * n_bins)
    gap = groups.sort(_one_hot(y, k) - p)
    return lambda w: np.abs(groups.sums(w, gap)[0]).sum(axis=1) / (k * w.sum(axis=1))


def _prepare_debiased(
    ids: np.ndarray, values: np.ndarray, hits: np.ndarray, n_classes: int, n_bins: int, squared: bool
) -> _Evaluate:
    """Mean over classes of D = sum_b (n_b/N)[(acc_b - conf_b)^2 - acc_b(1 - acc_b)/(n_b - 1)] (squared=True),
    or of sqrt(max(D, 0)).

    Bins with n_b < 2 contribute 0 (as Kumar's ``unbiased_square_ce``): with one item the bin's variance
    cannot be estimated, and keeping its plug-in term would re-introduce the upward bias being removed.
    """
    groups = _Grouping(ids, n_classes * n_bins)
    sorted_values, sorted_hits = groups.sort(values), groups.sort(hits)

    def evaluate(w: np.ndarray) -> np.ndarray:
        shape = (w.shape[0], n_classes, n_bins)
        count, acc, conf = (s.reshape(shape) for s in groups.sums(w, None, sorted_hits, sorted_values))
        enough = count > 1.5  # counts are whole numbers held in float64
        safe_n = np.where(enough, count, 2.0)
        acc, conf = acc / safe_n, conf / safe_n
        term = np.where(enough, count * ((acc - conf) ** 2 - acc * (1.0 - acc) / (safe_n - 1.0)), 0.0)
        d = term.sum(axis=2) / w.sum(axis=1)[:, None]
        return (d if squared else np.sqrt(np.maximum(d, 0.0))).mean(axis=1)

    return evaluate


def _prepare_debiased_top(squared: bool) -> _Prepare:
    def prepare(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
        conf, correct = _top_label(p, y)
        return _prepare_debiased(_width_bin_ids(conf, n_bins), conf, correct, 1, n_bins, squared)

    return prepare


def _prepare_debiased_classwise(squared: bool) -> _Prepare:
    def prepare(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
        return _prepare_debiased(_classwise_ids(p, n_bins), p, _one_hot(y, p.shape[1]), p.shape[1], n_bins, squared)

    return prepare


def _mean_of(per_item: np.ndarray) -> _Evaluate:
    return lambda w: (w @ per_item) / w.sum(axis=1)


def _prepare_brier(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    return _mean_of(((p - _one_hot(y, p.shape[1])) ** 2).sum(axis=1))


def _prepare_nll(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    return _mean_of(-np.log(np.maximum(p[np.arange(p.shape[0]), y], NLL_EPS)))


def _prepare_accuracy(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    return _mean_of(_top_label(p, y)[1])


def _prepare_overconfidence(p: np.ndarray, y: np.ndarray, n_bins: int) -> _Evaluate:
    conf, correct = _top_label(p, y)
    return _mean_of(conf - correct)


def _plain(prepare: _Prepare, p: np.ndarray, y: np.ndarray, n_bins: int = 1) -> float:
    return float(prepare(p, y, n_bins)(np.ones((1, p.shape[0])))[0])


# ------------------------------------------------------------------------------------------ public metrics


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, scheme: str = "width") -> float:
    """Top-label expected calibration error (Naeini et al. 2015; Guo et al. 2017).

    ``conf_i = max_k probs[i, k]``, ``correct_i = [labels[i] in T_i] / |T_i|`` with T_i the options whose
    probability equals conf_i (1 or 0 without ties), ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` where acc_b
    and conf_b are the means of correct and conf over bin b's n_b items.

    Parameters
    ----------
    probs : array of shape (N, K), rows summing to 1 (within ``ROW_SUM_ATOL``).
    labels : int array of shape (N,), values in 0..K-1.
    n_bins : number of bins B >= 1.
    scheme : ``"width"`` (default) equal-width right-closed bins ``(b/B, (b+1)/B]``, bin index
        ``ceil(conf * B) - 1`` clipped to [0, B-1] in float64 (0 in the first bin, 1.0 in the last).
        ``"mass"`` equal-mass bins (HELM's ``ece_10_bin`` idea; needs a few hundred items): items sorted by
        confidence, the item of 0-based rank r goes to bin ``floor(r * B / N)``; all items with an equal
        confidence go to the bin of the lowest rank among them (ties never split, so some bins may be empty
        and the result does not depend on item order; netcal crashes on such ties instead).

    Returns
    -------
    float in [0, 1].
    """
    p, y = _validate(probs, labels)
    b = _check_n_bins(n_bins)
    if scheme == "width":
        return _plain(_prepare_ece_width, p, y, b)
    if scheme == "mass":
        return _plain(_prepare_ece_mass, p, y, b)
    raise MetricInputError(f"scheme must be 'width' or 'mass', got {scheme!r}")


def sce(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Static calibration error (Nixon et al. 2019), the textbook classwise definition.

    For every class k separately, bin ``probs[:, k]`` (equal-width, right-closed, as ``ece``) and compare the
    mean of ``probs[:, k]`` in each bin with the frequency of ``labels == k`` there:
    ``SCE = (1/K) sum_k sum_b (n_bk / N) |freq_bk - conf_bk|``, i.e. the mean over classes of the binary
    calibration error of column k (torchmetrics ``BinaryCalibrationError`` on ``(probs[:, k], labels == k)``).

    This is NOT what the seed study (Oh & Hwang 2024) reports: its SCE values (0.4-0.78 even for
    well-calibrated models) cannot come from this definition, and the study published no code, so we
    implement Nixon et al.'s definition and do not try to reproduce those numbers.

    Zero-padded options (probability 0, never gold) add 0 to every per-class sum, so the per-class terms of
    real classes are unchanged; the mean is over all K columns, padded ones included.
    """
    p, y = _validate(probs, labels)
    return _plain(_prepare_sce, p, y, _check_n_bins(n_bins))


def mce(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Maximum calibration error: ``max over non-empty bins b of |acc_b - conf_b|`` (top-label, bins as ``ece``)."""
    p, y = _validate(probs, labels)
    return _plain(_prepare_mce, p, y, _check_n_bins(n_bins))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multiclass Brier score: ``(1/N) sum_i sum_k (probs[i, k] - [labels[i] == k])^2``, in [0, 2]."""
    p, y = _validate(probs, labels)
    return _plain(_prepare_brier, p, y)


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Negative log-likelihood in nats: ``-(1/N) sum_i log max(probs[i, labels[i]], NLL_EPS)``."""
    p, y = _validate(probs, labels)
    return _plain(_prepare_nll, p, y)


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """``(1/N) sum_i correct_i``: the share of items whose top option is the gold one, a tie of t top options
    holding the gold one counting 1/t (as ``ece``). Higher is better."""
    p, y = _validate(probs, labels)
    return _plain(_prepare_accuracy, p, y)


def overconfidence(probs: ArrayLike, labels: ArrayLike) -> float:
    """Signed over-confidence: ``(1/N) sum_i (conf_i - correct_i)``, in [-1, 1].

    ``conf_i = max_k probs[i, k]`` and the fractional ``correct_i`` of ``ece`` (1/t when the gold option is
    among t tied top options). Positive: the model is on average more confident than it is accurate (what
    alignment tuning is reported to do); negative: under-confident; 0 for a calibrated model in expectation.
    It is the one-bin signed ECE (``|overconfidence| <= ece`` for any binning), and, being a mean over items,
    its paired change (and the sum of both models' values) is a difference of means whose bootstrap and normal
    intervals are honest by the plain CLT. The gate judges the change of its absolute value (``signed``).
    """
    p, y = _validate(probs, labels)
    return _plain(_prepare_overconfidence, p, y)


def debiased_l2_ce(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, classwise: bool = False, squared: bool = False
) -> float:
    """Debiased L2 calibration error (Kumar et al. 2019, "Verified uncertainty calibration"; T-Cal's statistic).

    Top-label (default): with equal-width right-closed bins on the confidence as in ``ece``,
    ``D = sum_b (n_b / N) [ (acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1) ]`` and the result is
    ``sqrt(max(D, 0))``. The subtracted term is the unbiased estimate of the variance of acc_b, which removes
    the plug-in estimator's upward bias (a calibrated model gives about 0, not ~0.3 sqrt(B/N)).

    ``squared=True`` returns D itself, neither clipped nor square-rooted: it can be negative, and it is the
    one that is unbiased for the squared L2 error. Clipping and the square root bias the rooted value
    upwards near 0 and downwards elsewhere, so a CHANGE of the rooted value is biased at small N, and only
    the squared form's bootstrap interval covers at the nominal rate (docs/METRICS.md has the figures).

    Bins with a single item (n_b = 1) contribute 0 to the sum (their weight stays in N), as in Kumar's
    ``unbiased_square_ce``: their variance term is undefined. torchmetrics' private debias option instead keeps
    their plug-in term; the two agree whenever every non-empty bin holds at least 2 items.

    ``classwise=True``: the same statistic for every class k on ``(probs[:, k], labels == k)``, then the MEAN
    over classes of the per-class ``sqrt(max(D_k, 0))`` (parallel to SCE), or of D_k with ``squared=True``.
    Kumar's ``mode="marginal"`` instead returns ``sqrt(mean_k max(D_k, 0))``. Unlike SCE this squared
    statistic changes when rows are zero-padded: padded zeros join the first bin of the absent class.
    """
    p, y = _validate(probs, labels)
    b = _check_n_bins(n_bins)
    prepare = _prepare_debiased_classwise(squared) if classwise else _prepare_debiased_top(squared)
    return _plain(prepare, p, y, b)


# ----------------------------------------------------------------------------------------- reliability bins


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin data for a reliability diagram and a confidence histogram (equal-width, right-closed bins).

    ``edges[b] < value <= edges[b + 1]`` for bin b (0 in bin 0). ``confidence[b]`` is the mean value in bin b,
    ``accuracy[b]`` the fraction of its items that were correct (top-label) or whose label is ``target``
    (classwise); both are NaN for an empty bin. ``sum_b counts[b] / n_items * |accuracy[b] - confidence[b]|``
    over non-empty bins is the ECE (top-label) or class ``target``'s SCE term.
    """

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    n_items: int
    target: int | None = None  # None: top-label; k: class k (classwise)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; empty bins' NaN become None."""

        def clean(xs: tuple[float, ...]) -> list[float | None]:
            return [None if math.isnan(x) else x for x in xs]

        return {
            "edges": list(self.edges),
            "counts": list(self.counts),
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "n_items": self.n_items,
            "target": self.target,
        }


def _make_bins(values: np.ndarray, hits: np.ndarray, n_bins: int, target: int | None) -> ReliabilityBins:
    groups = _Grouping(_width_bin_ids(values, n_bins), n_bins)
    count, total_conf, total_hits = (
        s[0] for s in groups.sums(np.ones((1, values.shape[0])), None, groups.sort(values), groups.sort(hits))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, acc = total_conf / count, total_hits / count
    return ReliabilityBins(
        edges=tuple(b / n_bins for b in range(n_bins + 1)),
        counts=tuple(int(c) for c in count),
        confidence=tuple(float(c) for c in conf),
        accuracy=tuple(float(a) for a in acc),
        n_items=int(values.shape[0]),
        target=target,
    )


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Top-label reliability bins: per equal-width bin of the confidence, its count, mean confidence, accuracy."""
    p, y = _validate(probs, labels)
    b = _check_n_bins(n_bins)
    conf, correct = _top_label(p, y)
    return _make_bins(conf, correct, b, None)


def classwise_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> tuple[ReliabilityBins, ...]:
    """The per-class detail behind SCE: element k bins ``probs[:, k]`` against ``labels == k``.

    A zero-padded (absent) option's items sit in that class's first bin with confidence 0 and frequency 0:
    they change the bin's count and means but not its contribution to SCE.
    """
    p, y = _validate(probs, labels)
    b = _check_n_bins(n_bins)
    onehot = _one_hot(y, p.shape[1])
    return tuple(_make_bins(p[:, k], onehot[:, k], b, k) for k in range(p.shape[1]))


# ------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``function(probs, labels[, n_bins=...]) -> float``, its orientation and its bounds.

    The gate reads ``higher_is_worse`` to decide which direction of change is a regression. A ``signed``
    metric (over-confidence) is miscalibrated in both directions: its regression is a rise of its ABSOLUTE
    value, ``|aligned| - |base|``, judged by verdicts.py's sign-aware test (``higher_is_worse`` then refers
    to the absolute value); the signed value and change stay what is reported.
    """

    name: str
    function: Callable[..., float]
    higher_is_worse: bool
    display_name: str
    binned: bool  # takes n_bins
    prepare: _Prepare  # the vectorised form the plain function and the bootstrap share (see "shared pieces")
    # The largest worsening the metric can show (thresholds.max_change): ECE-like errors, accuracy and |over-
    # confidence| live in [0, 1]; SCE in [0, 2/K] (sum_k |freq - conf| <= mean_i sum_k |[y_i = k] - p_ik| <= 2),
    # so its bound is K = 2's and `per_k` scales it by 2/K; multiclass Brier in [0, 2]; NLL is clipped at
    # -log(NLL_EPS); the unclipped squared debiased errors lie in [-1/4, 1].
    max_change: float
    per_k: bool = False
    signed: bool = False  # 0 is calibrated and both signs are miscalibration: the gate judges |value|
    se_inflation: float = 1.0  # BootstrapResult.se = this x sd(D*); measured for ECE and SCE (SE_INFLATION)


#: The factor c in ``se = c x sd(D*)`` of the bias-corrected normal interval, measured for the gated binned
#: metrics by scripts/se_inflation.py (seeded; 14 min of CPU). Under equal calibration, 2 change - mean(D*)
#: scatters more than the bootstrap sd says (the bootstrap of |acc_b - conf_b| is inconsistent where the gap
#: is 0, and its bias estimate adds noise): over 6 null scenarios (equal calibration rho 0.9 and 0, over- and
#: under-confident bases, a less accurate aligned model, bf16 storage) x K = 2 / 4 / 5 x 200 / 500 / 2000
#: items, 1000 groups each, the null z = centre / sd(D*) had sd 1.03-1.18 (ECE) and 1.05-1.26 (SCE) per cell
#: and tails 2-5x nominal at Holm's 0.05/54. c is the smallest of 1.0, 1.05, 1.1, ... whose pooled rejection
#: rates (18,000 cases per metric and size) at 0.05, 0.025, 0.01 and 0.05/54 are at or below nominal at every
#: size: ECE 1.15 (then 4.1-4.5 %, 1.9-2.2 %, 0.65-0.81 %, 0.04-0.06 %); SCE 1.20 there (4.7 %, 2.2 %, 0.93 %,
#: 0.08 % at 200 items: at the limit) and 1.25 in an earlier exploratory run (500 resamples, other seeds),
#: so SCE ships the larger, 1.25 (3.2-4.2 %, 1.4-1.8 %, 0.47-0.70 %, 0.03-0.06 %). docs/GATE.md shows the
#: calibration on the simulation study's own null pairs (`python -m calib_checks simulate --full`).
#: Other metrics: 1 (means such as over-confidence need none; the ungated binned ones were not measured).
SE_INFLATION = {"ece": 1.15, "sce": 1.25}

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ece", ece, True, "ECE", True, _prepare_ece_width, 1.0, se_inflation=SE_INFLATION["ece"]),
        Metric("ece_mass", functools.partial(ece, scheme="mass"), True, "ECE (equal-mass bins)", True,
               _prepare_ece_mass, 1.0),
        Metric("sce", sce, True, "SCE", True, _prepare_sce, 1.0, per_k=True, se_inflation=SE_INFLATION["sce"]),
        Metric("mce", mce, True, "MCE", True, _prepare_mce, 1.0),
        Metric("debiased_ece", debiased_l2_ce, True, "debiased L2 ECE", True, _prepare_debiased_top(squared=False),
               1.0),
        Metric("debiased_sce", functools.partial(debiased_l2_ce, classwise=True), True,
               "debiased L2 SCE (classwise)", True, _prepare_debiased_classwise(squared=False), 1.0),
        Metric("debiased_ece_sq", functools.partial(debiased_l2_ce, squared=True), True,
               "debiased squared L2 ECE (unclipped)", True, _prepare_debiased_top(squared=True), 1.25),
        Metric("debiased_sce_sq", functools.partial(debiased_l2_ce, classwise=True, squared=True), True,
               "debiased squared L2 SCE (classwise, unclipped)", True, _prepare_debiased_classwise(squared=True),
               1.25),
        Metric("brier", brier, True, "Brier score", False, _prepare_brier, 2.0),
        Metric("nll", nll, True, "NLL", False, _prepare_nll, -math.log(NLL_EPS)),
        Metric("accuracy", accuracy, False, "accuracy", False, _prepare_accuracy, 1.0),
        Metric("overconfidence", overconfidence, True, "over-confidence", False, _prepare_overconfidence, 1.0,
               signed=True),
    )
}


# ----------------------------------------------------------------------------------------------- bootstrap


#: Interval methods of ``BootstrapResult.interval`` (``normal`` is the gate's default).
INTERVAL_METHODS = ("normal", "basic", "percentile")

#: Batches of the batch-means Monte Carlo error of the basic and percentile interval ends.
MC_BATCHES = 10


def normal_sf(x: float) -> float:
    """Standard normal upper tail 1 - Phi(x), accurate far out (1e-300 at x = 37)."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def normal_quantile(q: float) -> float:
    """Phi^{-1}(q) for 0 < q < 1."""
    return NormalDist().inv_cdf(q)


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``change = metric(aligned) - metric(base)`` on the same items.

    Three intervals at ``confidence`` (two-sided), from the same replicate changes D*_r:

    * ``percentile = (q_lo, q_hi)``, the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles (numpy's
      linear interpolation) of the replicates;
    * ``basic = (2 change - q_hi, 2 change - q_lo)`` (reverse percentile);
    * ``normal = centre -/+ z se``: a bias-corrected normal approximation, ``centre = 2 change - mean(D*)``,
      ``se = se_inflation x sd(D*)`` (ddof 1), ``z = Phi^{-1}((1 + confidence)/2)``. Unlike the replicate
      quantiles it gives p-values far below 1/n_resamples (Holm across 54 cases needs ~1e-3).
      ``se_inflation`` is the metric's ``Metric.se_inflation`` (1 for user callables): plug-in ECE and SCE
      are not smooth at a calibrated model and their bias-corrected centre varies more than sd(D*) says.

    ``replicate_mean`` and ``replicate_sd`` are mean(D*) and sd(D*); ``replicates`` holds the D*_r themselves,
    ``base_replicates`` and ``aligned_replicates`` each model's metric on the same resamples (D*_r is their
    difference; none of the three is compared or printed). ``n_clusters`` is None for the item bootstrap;
    ``n_bins`` is None for metrics without bins and for user callables. ``p_value`` and ``mc_error`` read the
    replicates. ``weights`` is (1, -1) for the change; ``contrast`` gives the same summary of any other linear
    combination of the two models' values.
    """

    change: float
    basic: tuple[float, float]
    percentile: tuple[float, float]
    n_items: int
    n_resamples: int
    confidence: float
    seed: int
    metric: str
    base_value: float
    aligned_value: float
    n_clusters: int | None = None
    n_bins: int | None = None
    normal: tuple[float, float] = (0.0, 0.0)
    replicate_mean: float = 0.0
    replicate_sd: float = 0.0
    replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    base_replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    aligned_replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    weights: tuple[float, float] = (1.0, -1.0)
    se_inflation: float = 1.0

    @property
    def se(self) -> float:
        """The normal interval's standard error, ``se_inflation x sd(D*)``."""
        return self.se_inflation * self.replicate_sd

    def contrast(self, aligned_weight: float, base_weight: float, confidence: float | None = None) -> BootstrapResult:
        """The same bootstrap summarised for ``c = aligned_weight x metric(aligned) + base_weight x metric(base)``.

        ``change`` then holds c on all items and ``replicates`` its values c*_r on the same resamples, from
        which the intervals (at ``confidence``, default this result's), ``centre``, ``p_value`` and ``mc_error``
        follow exactly as for the change (``contrast(1, -1)`` reproduces it). The sign-aware test of a signed
        metric (verdicts.py) also uses the sum, ``contrast(1, 1)``, and the negated contrasts.
        """
        wa, wb = float(aligned_weight), float(base_weight)
        level = self.confidence if confidence is None else float(confidence)
        value = wa * self.aligned_value + wb * self.base_value
        replicates = wa * self.aligned_replicates + wb * self.base_replicates
        return replace(self, weights=(wa, wb), confidence=level,
                       **_summary(value, replicates, level, self.se_inflation))

    @property
    def centre(self) -> float:
        """Bias-corrected estimate of the change, ``2 change - mean(D*)`` (the normal interval's centre)."""
        return 2.0 * self.change - self.replicate_mean

    def interval(self, method: str) -> tuple[float, float]:
        """The interval of the change by ``method`` (one of INTERVAL_METHODS)."""
        if method not in INTERVAL_METHODS:
            raise MetricInputError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
        return {"normal": self.normal, "basic": self.basic, "percentile": self.percentile}[method]

    def p_value(self, margin: float, method: str = "normal", higher_is_worse: bool = True) -> float:
        """One-sided p-value of H0 "worsening <= margin" (worsening = change, or -change when higher is better).

        With W = sign * change, W*_r = sign * D*_r, B replicates:

        * ``normal``: ``1 - Phi((W_c - margin) / se)``, ``W_c = sign * centre``, ``se`` the inflated one; with
          se = 0 (identical models) it is 0 when ``W_c > margin`` and 1 otherwise;
        * ``basic``: ``(1 + #{W*_r >= 2 W - margin}) / (B + 1)`` (the basic lower bound exceeds the margin at
          level a exactly when this is <= a, up to quantile interpolation);
        * ``percentile``: ``(1 + #{W*_r <= margin}) / (B + 1)``.

        The replicate p-values cannot go below 1/(B + 1).
        """
        sign = 1.0 if higher_is_worse else -1.0
        margin = float(margin)
        if method == "normal":
            w_c = sign * self.centre
            if not math.isfinite(w_c) or not math.isfinite(self.se):
                return math.nan
            if self.se == 0.0:
                return 0.0 if w_c > margin else 1.0
            return normal_sf((w_c - margin) / self.se)
        if method not in INTERVAL_METHODS:
            raise MetricInputError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
        w_star = sign * self.replicates
        w = sign * self.change
        hits = int((w_star >= 2.0 * w - margin).sum()) if method == "basic" else int((w_star <= margin).sum())
        return (1 + hits) / (w_star.size + 1)

    def mc_error(self, method: str = "normal") -> float:
        """Monte Carlo standard error of the interval's ends (the larger of the two), from finite B.

        ``normal``: the ends are ``2 change - mean(D*) -/+ z c sd(D*)`` (c = ``se_inflation``), so their MC
        error is ``sd * sqrt(1/B + c^2 z^2 / (2 (B - 1)))`` (the se of a mean plus that of a normal sample's sd).
        ``basic`` / ``percentile``: batch means: the end computed on each of MC_BATCHES consecutive batches of
        replicates, the batches' sd divided by sqrt(MC_BATCHES).
        """
        b = self.replicates.size
        if method == "normal":
            z = normal_quantile((1.0 + self.confidence) / 2.0)
            if b < 2:
                return math.nan
            c = self.se_inflation
            return self.replicate_sd * math.sqrt(1.0 / b + c * c * z * z / (2.0 * (b - 1)))
        if method not in INTERVAL_METHODS:
            raise MetricInputError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
        if b < 2 * MC_BATCHES:
            return math.nan
        a = 1.0 - self.confidence
        batches = np.array_split(self.replicates, MC_BATCHES)
        ends = np.array([np.quantile(x, [a / 2.0, 1.0 - a / 2.0]) for x in batches])  # (batches, 2)
        if method == "basic":
            ends = 2.0 * self.change - ends
        return float((ends.std(axis=0, ddof=1) / math.sqrt(MC_BATCHES)).max())


def check_bootstrap_arguments(n_resamples: int, confidence: float, seed: int, n_bins: int) -> int:
    """MetricInputError for a bootstrap's bad arguments (`paired_bootstrap`'s and the pooled one's); the checked
    number of bins."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise MetricInputError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not isinstance(confidence, (float, int)) or not 0.0 < confidence < 1.0:
        raise MetricInputError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MetricInputError(f"seed must be an integer >= 0, got {seed!r}")
    return _check_n_bins(n_bins)


def _resample_weights(
    rng: np.random.Generator, n_items: int, n_resamples: int, cluster_of: np.ndarray | None, chunk: int
) -> Iterator[np.ndarray]:
    """Yield (rows, N) item multiplicities, replicate after replicate.

    Replicate r takes the generator's next N uniforms u (``rng.random(N)``) and resamples the items
    ``floor(u * N)`` (with clusters: the next C uniforms pick clusters ``floor(u * C)``, each bringing all its
    items). ``Generator.random`` consumes exactly one 64-bit draw per value, so the stream, and every
    replicate, is the same whatever the chunk size, and a plain loop with the same generator reproduces it.
    """
    n_units = n_items if cluster_of is None else int(cluster_of.max()) + 1
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        picked = (rng.random((rows, n_units)) * n_units).astype(np.int64)
        picked += n_units * np.arange(rows)[:, None]
        counts = np.bincount(picked.ravel(), minlength=rows * n_units).reshape(rows, n_units).astype(np.float64)
        yield counts if cluster_of is None else counts[:, cluster_of]


def _resolve_metric(metric: str | Callable[..., float]) -> tuple[str, _Prepare | None, Callable[..., float], bool]:
    """(name, vectorised preparer or None, plain function, binned)."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise MetricInputError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
        m = METRICS[metric]
        return m.name, m.prepare, m.function, m.binned
    if not callable(metric):
        raise MetricInputError(f"metric must be a name in METRICS or a callable, got {metric!r}")
    for m in METRICS.values():
        if m.function is metric:
            return m.name, m.prepare, m.function, m.binned
    return getattr(metric, "__name__", repr(metric)), None, metric, False


def _cluster_index(clusters: ArrayLike | None, n_items: int) -> tuple[np.ndarray | None, int | None]:
    """(index of each item's cluster among the sorted distinct labels, number of clusters), or (None, None)
    without clusters; MetricInputError for a wrong shape, incomparable labels or a single cluster."""
    if clusters is None:
        return None, None
    c = np.asarray(clusters)
    if c.shape != (n_items,):
        raise MetricInputError(f"clusters must have one label per item, shape ({n_items},), got {c.shape}")
    try:
        _, cluster_of = np.unique(c, return_inverse=True)
    except TypeError as exc:
        raise MetricInputError(f"cluster labels must be mutually comparable (one type): {exc}") from None
    n_clusters = int(cluster_of.max()) + 1
    if n_clusters < 2:
        raise MetricInputError("clusters hold a single cluster; a cluster bootstrap needs at least 2")
    return cluster_of.reshape(-1), n_clusters


def paired_bootstrap(
    metric: str | Callable[..., float],
    base_probs: ArrayLike,
    aligned_probs: ArrayLike,
    labels: ArrayLike,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    n_bins: int = 15,
    clusters: ArrayLike | None = None,
) -> BootstrapResult:
    """Bootstrap interval for ``metric(aligned) - metric(base)`` when both models answered the same items.

    Each replicate resamples the N items with replacement and evaluates BOTH models on the same resampled
    items, so the noise shared by the two models cancels. Replicate r takes the next N uniforms u of
    ``np.random.default_rng(seed).random`` and picks items ``floor(u * N)``. With ``clusters`` (one label per
    item, e.g. MMLU subjects), whole clusters are resampled instead (C uniforms pick ``floor(u * C)`` among
    the sorted distinct labels), for items that are not independent.

    ``metric`` is a name in ``METRICS`` (or one of their functions), computed for all replicates at once
    (binned sums by one bincount over replicate-offset bin ids; ``n_bins`` applies to binned metrics), or any
    other callable ``f(probs, labels) -> float``, evaluated replicate by replicate (slow).

    The result holds the normal, basic and percentile intervals and the replicates (``p_value``,
    ``mc_error``). The gate uses ``normal`` (p-values below 1/n_resamples for Holm); never use ``percentile``
    for plug-in ECE: it is centred on the replicates' upward bias and under-covers badly (docs/METRICS.md has
    the measured coverage of each statistic).
    """
    base, y = _validate(base_probs, labels, "base_probs")
    aligned, _ = _validate(aligned_probs, labels, "aligned_probs")
    if base.shape != aligned.shape:
        raise MetricInputError(
            f"base_probs {base.shape} and aligned_probs {aligned.shape} must have the same shape (same items)"
        )
    n_bins = check_bootstrap_arguments(n_resamples, confidence, seed, n_bins)
    name, preparer, function, binned = _resolve_metric(metric)
    inflation = METRICS[name].se_inflation if preparer is not None else 1.0

    n_items, n_classes = base.shape
    cluster_of, n_clusters = _cluster_index(clusters, n_items)

    def prepare(probs: np.ndarray) -> _Evaluate:
        if preparer is not None:
            return preparer(probs, y, n_bins)

        def evaluate(w: np.ndarray) -> np.ndarray:
            out = np.empty(w.shape[0])
            for j, counts in enumerate(np.rint(w).astype(np.int64)):
                idx = np.repeat(np.arange(n_items), counts)
                out[j] = float(function(probs[idx], y[idx]))
            return out

        return evaluate

    on_base, on_aligned = prepare(base), prepare(aligned)
    ones = np.ones((1, n_items))
    base_value = float(on_base(ones)[0])
    aligned_value = float(on_aligned(ones)[0])

    chunk = max(1, _CHUNK_ENTRIES // (n_items * n_classes))
    rng = np.random.default_rng(int(seed))
    per_model = [(on_base(w), on_aligned(w)) for w in _resample_weights(rng, n_items, int(n_resamples), cluster_of,
                                                                        chunk)]
    base_reps = np.concatenate([b for b, _ in per_model])
    aligned_reps = np.concatenate([a for _, a in per_model])
    if not (np.isfinite(base_reps).all() and np.isfinite(aligned_reps).all()):
        raise MetricInputError(f"metric {name!r} returned a non-finite value on a bootstrap replicate")
    return BootstrapResult(
        n_items=n_items,
        n_resamples=int(n_resamples),
        confidence=float(confidence),
        seed=int(seed),
        metric=name,
        base_value=base_value,
        aligned_value=aligned_value,
        n_clusters=n_clusters,
        n_bins=n_bins if binned else None,
        base_replicates=base_reps,
        aligned_replicates=aligned_reps,
        **_summary(aligned_value - base_value, aligned_reps - base_reps, float(confidence), inflation),
    )


def _summary(value: float, replicates: np.ndarray, confidence: float, se_inflation: float) -> dict[str, Any]:
    """The BootstrapResult fields that follow from a statistic's value, its replicates and the se inflation."""
    alpha = 1.0 - confidence
    q_lo, q_hi = (float(q) for q in np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0]))
    mean = float(replicates.mean())
    sd = float(replicates.std(ddof=1)) if replicates.size > 1 else 0.0
    if sd < 1e-15 * max(1.0, abs(mean)):  # identical models: every replicate is 0 up to rounding
        sd = 0.0
    centre = 2.0 * value - mean
    z = normal_quantile(1.0 - alpha / 2.0)
    return dict(change=value, basic=(2.0 * value - q_hi, 2.0 * value - q_lo), percentile=(q_lo, q_hi),
                normal=(centre - z * se_inflation * sd, centre + z * se_inflation * sd), replicate_mean=mean,
                replicate_sd=sd, se_inflation=se_inflation,
                replicates=replicates)

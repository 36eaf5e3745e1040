"""What both views of the QA page take from one model on one task: the pair view (report.py) and the chain
view (lifecycle.py, which report.py renders) draw the same arrays, print numbers the same way and show the same
one-temperature repair. They live here, below both, so that neither view imports the other's internals.

No torch: numpy arrays from the run directory's records (results.py), recalibration.py for the repair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calib_checks.recalibration import RecalibrationError, repair
from calib_checks.records import ItemRecord


def fmt(value: Any, digits: int = 4) -> str:
    """A metric value: fixed `digits` decimals; '—' for None/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def fmt_signed(value: Any, digits: int = 4) -> str:
    """A change: explicit sign, U+2212 minus so columns align; '—' for None/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    text = f"{value:+.{digits}f}"
    return text.replace("-", "\u2212")


def fmt_pct(value: Any) -> str:
    """A relative change (a fraction) as a signed percentage; '—' where undefined (base 0)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return fmt_signed(100.0 * value, 1) + " %"


@dataclass
class ModelScores:
    """One model's records on one task, as arrays over the items both models of a pair share."""

    ids: list[str]
    labels: np.ndarray  # (N,) gold index
    probs: dict[str, np.ndarray]  # extractor -> (N, K) softmax across options, 0 for absent options
    scores: dict[str, np.ndarray]  # extractor -> (N, K) log-scores, -inf for absent options

    @classmethod
    def from_records(cls, records: dict[str, ItemRecord], ids: Sequence[str]) -> ModelScores:
        """Arrays over `ids` (in that order), padded to the largest option count (as `TaskScores.probs`)."""
        rows = [records[item_id] for item_id in ids]
        k_max = max(row.n_options for row in rows)
        probs, scores = {}, {}
        for extractor in rows[0].scores:
            p = np.zeros((len(rows), k_max))
            s = np.full((len(rows), k_max), -np.inf)
            for i, row in enumerate(rows):
                p[i, : len(row.probs[extractor])] = row.probs[extractor]
                s[i, : len(row.scores[extractor])] = row.scores[extractor]
            probs[extractor], scores[extractor] = p, s
        return cls(list(ids), np.array([row.gold for row in rows], dtype=np.int64), probs, scores)


def ece_margin(cases: Sequence[dict], pair: str, task: str, extractor: str) -> float:
    """The gate's ECE margin for this pair, task and extractor (what "back to the base" means for `repair`);
    0.01 (the shipped rule's) where the run did not judge ECE there."""
    for case in cases:
        if (case["pair"], case["task"], case["extractor"], case["metric"]) == (pair, task, extractor, "ece"):
            if case.get("margin") is not None:
                return float(case["margin"])
    return 0.01


REPAIR_CLASS = {"repairable by one temperature": "repairable", "not repairable by one temperature": "deeper",
                "cannot tell": "unknown"}


def repair_view(model: ModelScores, reference: ModelScores, extractor: str, n_bins: int, margin: float) -> dict:
    """`recalibration.repair` of `model` against `reference`, formatted (or the reason it cannot be fitted)."""
    try:
        r = repair(model.scores[extractor], reference.scores[extractor], model.labels, model.ids, margin=margin,
                   n_bins=n_bins)
    except RecalibrationError as exc:
        return {"error": str(exc)}
    return {"error": None, "verdict": r.verdict, "css": REPAIR_CLASS[r.verdict], "gap": fmt_signed(r.gap),
            "interval": f"[{r.interval[0]:+.4f}, {r.interval[1]:+.4f}]", "margin": fmt(r.margin),
            "temperature": fmt(r.temperature, 3), "before": fmt(r.ece_before), "after": fmt(r.ece_after)}

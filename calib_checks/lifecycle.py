"""The report's lifecycle view of a checkpoint chain (base -> SFT -> DPO ...): where calibration got worse.

Per task and extractor, one small chart draws ECE, SCE and over-confidence at every checkpoint of the chain, each
with its 95 % interval (the gate's normal bootstrap interval of that one model's value, `BootstrapResult.
contrast`), and shades the steps whose comparison failed a gated case there. Under each checkpoint: its accuracy
and, from the second on, whether its miscalibration relative to the chain's first checkpoint is repairable by one
temperature (`recalibration.repair`, on held-out items, with its interval). One sentence per chain names the
step where calibration got worse (`summary.chain_finding`, the same sentence as results.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calib_checks import metrics
from calib_checks.modelview import ModelScores, ece_margin, fmt, repair_view

#: The metrics drawn, with the CSS class of their line.
SHOWN = (("ece", "m-ece"), ("sce", "m-sce"), ("overconfidence", "m-oc"))
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 300.0, 180.0, 44.0, 12.0, 10.0, 34.0
_RESAMPLES = 1000


@dataclass
class Mark:
    x: float
    y: float
    lo: float
    hi: float
    tip: str


@dataclass
class Line:
    metric: str
    css: str
    path: str
    marks: list[Mark]


@dataclass
class Chart:
    """Everything the `lifecycle` macro draws; coordinates in SVG user units."""

    width: float
    height: float
    frame: dict[str, float]
    y_ticks: list[dict[str, Any]]
    x_labels: list[dict[str, Any]]
    lines: list[Line]
    failed: list[dict[str, Any]] = field(default_factory=list)  # shaded steps: x, w, tip


def _interval(metric: str, probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[float, float, float]:
    """(value, lower, upper) of one model's metric: the gate's normal interval of that value."""
    boot = metrics.paired_bootstrap(metric, probs, probs, labels, n_resamples=_RESAMPLES, n_bins=n_bins)
    alone = boot.contrast(1.0, 0.0)
    lo, hi = alone.interval("normal")
    return alone.change, lo, hi


def chart(labels: Sequence[str], values: dict[str, list[tuple[float, float, float]]],
          failed_steps: dict[int, str]) -> Chart:
    """Geometry of one chart: `values[metric][k]` = (value, lower, upper) at checkpoint k; `failed_steps`:
    step index i (checkpoint i -> i + 1, 0-based) -> what failed there."""
    n = len(labels)
    lows = [lo for series in values.values() for _, lo, _ in series]
    highs = [hi for series in values.values() for _, _, hi in series]
    y_min, y_max = min(0.0, min(lows)), max(0.05, max(highs))
    pad = 0.05 * (y_max - y_min)
    y_min, y_max = y_min - pad, y_max + pad
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(k: int) -> float:
        return round(_LEFT + plot_w * (k + 0.5) / n, 2)

    def sy(v: float) -> float:
        return round(_TOP + plot_h * (y_max - v) / (y_max - y_min), 2)

    lines = []
    for metric, css in SHOWN:
        marks = [Mark(sx(k), sy(v), sy(lo), sy(hi),
                      f"{metrics.METRICS[metric].display_name} at {labels[k]}: {v:.4f} [{lo:.4f}, {hi:.4f}]")
                 for k, (v, lo, hi) in enumerate(values[metric])]
        path = " ".join(("M" if k == 0 else "L") + f"{m.x},{m.y}" for k, m in enumerate(marks))
        lines.append(Line(metrics.METRICS[metric].display_name, css, path, marks))
    step = plot_w / n
    failed = [{"x": round(_LEFT + step * (i + 0.5), 2), "w": round(step, 2), "tip": tip}
              for i, tip in sorted(failed_steps.items())]
    ticks = np.linspace(y_min + pad, y_max - pad, 4)
    return Chart(_W, _H, {"x": _LEFT, "y": _TOP, "w": plot_w, "h": plot_h},
                 [{"pos": sy(float(t)), "label": f"{t:.2f}"} for t in ticks],
                 [{"pos": sx(k), "label": short, "title": label, "y": _H - _BOTTOM + 14}
                  for k, (label, short) in enumerate(zip(labels, tick_labels(labels, step)))],
                 lines, failed)


def tick_labels(labels: Sequence[str], width: float) -> list[str]:
    """Each checkpoint's number and what sets its label apart from the others' (their common prefix cut back to
    a separator: ``SmolLM2…@fp32``, ``SmolLM2…@T0.8@fp32`` -> ``1 fp32``, ``2 T0.8@fp32``), shortened with an
    ellipsis to fit `width` SVG units (about 6 per character at the ticks' font size); the full label is the
    tick's tooltip."""
    prefix = os.path.commonprefix(list(labels)) if len(set(labels)) > 1 else ""
    cut = max(prefix.rfind(sep) for sep in "@-_./:") + 1
    room = max(4, int(width // 6))
    texts = [f"{k + 1} {label[cut:] or label}" for k, label in enumerate(labels)]
    return [text if len(text) <= room else text[: room - 1] + "…" for text in texts]


def chain_view(chain: dict[str, Any], pairs: Sequence[dict[str, Any]], cases: Sequence[dict[str, Any]],
               tasks: Sequence[str], extractors: Sequence[str],
               scores_of: Callable[[str, str], ModelScores | None], n_bins_of: Callable[[str, str], int]) -> dict:
    """The view of one chain (see the module docstring). `scores_of(label, task)`: a checkpoint's records as
    arrays (None where absent); `n_bins_of(task, extractor)`: the gate's bins there."""
    from calib_checks.summary import chain_finding, whole_chain

    checkpoints = list(chain["checkpoints"])
    comparisons = {p["name"]: p for p in pairs if p["name"] in chain["comparisons"]}
    steps = {tuple(p["steps"]): name for name, p in comparisons.items()}
    whole = whole_chain(comparisons)
    panels = []
    for task in tasks:
        loaded = [scores_of(label, task) for label in checkpoints]
        if any(s is None for s in loaded):
            continue
        others = [set(s.ids) for s in loaded[1:]]
        ids = [i for i in loaded[0].ids if all(i in ids_of for ids_of in others)]
        for extractor in extractors:
            if not all(extractor in s.probs for s in loaded):
                continue
            n_bins = n_bins_of(task, extractor)
            models = [_restrict(s, ids) for s in loaded]
            values = {m: [_interval(m, s.probs[extractor], s.labels, n_bins) for s in models] for m, _ in SHOWN}
            failed_steps = {}
            for i in range(len(checkpoints) - 1):
                name = steps.get((i + 1, i + 2))
                failing = sorted(c["metric"] for c in cases if c["pair"] == name and c["task"] == task
                                 and c["extractor"] == extractor and c["verdict"] == "fail")
                if failing:
                    failed_steps[i] = f"step {i + 1} -> {i + 2} failed: {', '.join(failing)}"
            margin = ece_margin(cases, whole, task, extractor)
            below = [{"label": label, "accuracy": fmt(float(metrics.accuracy(s.probs[extractor], s.labels))),
                      "repair": None if k == 0 else repair_view(s, models[0], extractor, n_bins, margin)}
                     for k, (label, s) in enumerate(zip(checkpoints, models))]
            panels.append({"task": task, "extractor": extractor, "n_items": len(ids),
                           "chart": chart(checkpoints, values, failed_steps), "below": below})
    return {"name": chain["name"], "checkpoints": checkpoints, "finding": chain_finding(chain, pairs, cases),
            "panels": panels}


def _restrict(scores: ModelScores, ids: Sequence[str]) -> ModelScores:
    """The model's arrays on `ids`, in that order (every checkpoint of a chain on the same items)."""
    where = {item: i for i, item in enumerate(scores.ids)}
    rows = np.array([where[i] for i in ids], dtype=np.int64)
    return ModelScores(list(ids), scores.labels[rows], {e: p[rows] for e, p in scores.probs.items()},
                       {e: s[rows] for e, s in scores.scores.items()})

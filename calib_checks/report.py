"""The QA page: one self-contained `report.html` per run, rendered from `results.json` and the records.

No inference and no torch: everything on the page is read from the run directory (results.py) and
recomputed with numpy (metrics.py, recalibration.py). The page is one file with inline CSS and inline SVG,
no script and no network, so CI can keep it as an artifact and anyone can open it offline.

Data set text is hostile input. jinja2 renders with autoescape ON and no `|safe` anywhere: every string from
the data, the records or results.json (item text, model labels, task names, rule sources) is escaped,
inside SVG too. The SVG charts are drawn by template macros from numbers computed here (small geometry
helpers below), never by pasting strings together in Python.

`python -m calib_checks report RUN_DIR [--out FILE]` re-renders the page (see `run_cli`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from calib_checks import metrics
from calib_checks.fileio import atomic_write_text
from calib_checks.lifecycle import chain_view
from calib_checks.modelview import ModelScores, ece_margin, fmt, fmt_pct, fmt_signed, repair_view
from calib_checks.recalibration import RecalibrationError, TemperatureFit, cross_fit
from calib_checks.records import LETTER_MASS_FLOOR, ItemRecord, SelfCheck, letter_mass_summary
from calib_checks.results import (
    REPORT_FILE,
    ResultsError,
    load_items,
    load_records,
    load_results,
    resolve_run_dir,
)
from calib_checks.selection import POOLED_TASK
from calib_checks.tasks import LETTERS
from calib_checks.thresholds import Rule
from calib_checks.verdicts import VERDICTS


DEFAULT_BINS = 15
N_WRONG = 8
"""How many of the aligned model's most confident mistakes the page lists per task and extractor."""

# Display order of metrics: the registry's; anything else follows in order of first appearance.
_METRIC_ORDER = tuple(metrics.METRICS)
_RANKED_METRICS = ("ece", "sce")
_TEMPLATES = Path(__file__).parent / "templates"

# Plot geometry (SVG user units). Reliability diagram: square plot area of _PLOT x _PLOT.
_PLOT = 250.0
_LEFT, _TOP, _RIGHT, _BOTTOM = 46.0, 14.0, 12.0, 40.0
_HIST_H = 90.0


# ----------------------------------------------------------------------------------------------- numbers


def _rule(rule: dict) -> Rule:
    try:
        return Rule(**rule)
    except TypeError as exc:
        raise ResultsError(f"a case's rule {rule!r} is not a thresholds rule ({exc}): results.json was edited "
                           f"or written by another calib-checks version") from None


def fmt_rule(rule: dict, metric: str) -> tuple[str, str]:
    """(short text for the matrix, the rule's full sentence) of a case's rule (`thresholds.Rule.to_json`)."""
    if not rule:
        return "—", ""
    parsed = _rule(rule)
    sentence = parsed.describe(metric)
    if not parsed.gate:
        return "report only", f"not gated (gate = false); would {sentence}"
    short = f"≤ {parsed.max_increase:g}" + (" × 2/K" if parsed.scale == "2/K" else "")
    if parsed.max_relative_increase is not None:
        short += f" or ≤ {parsed.max_relative_increase:g}×|base|"
    return short, f"{sentence}; gated from {parsed.min_items} items"


# ----------------------------------------------------------------------------------------------- records


def _load_model_records(run_dir: Path, model: str, task: str) -> dict[str, ItemRecord] | None:
    """The model's records on the task by id, checked by `ItemRecord.from_json` (RecordError if malformed)."""
    rows = load_records(run_dir, model, task)
    return None if rows is None else {record.id: record for record in map(ItemRecord.from_json, rows)}


# ----------------------------------------------------------------------------------------------- geometry


@dataclass
class Point:
    x: float
    y: float
    r: float
    tip: str


@dataclass
class Rect:
    x: float
    y: float
    w: float
    h: float
    kind: str
    tip: str


@dataclass
class Series:
    label: str
    kind: str  # "base" | "aligned": the CSS class that colours it
    path: str
    points: list[Point]


@dataclass
class ReliabilityPlot:
    """Everything the `reliability` macro draws; coordinates in SVG user units."""

    width: float
    height: float
    frame: Rect
    ticks: list[dict]
    diagonal: tuple[float, float, float, float]
    over_region: str  # polygon points of the triangle below the diagonal (over-confident)
    zone_label: tuple[float, float]  # the point of the diagonal the zone names sit beside
    gaps: list[Rect]  # aligned model: bin accuracy to bin confidence, red when over-confident
    series: list[Series]


@dataclass
class Histogram:
    width: float
    height: float
    frame: Rect
    ticks: list[dict]
    bars: list[Rect]
    y_max_label: str


def _sx(v: float) -> float:
    return round(_LEFT + _PLOT * v, 2)


def _sy(v: float) -> float:
    return round(_TOP + _PLOT * (1.0 - v), 2)


def _ticks(y_axis: bool = True) -> list[dict]:
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = [{"axis": "x", "pos": _sx(v), "label": f"{v:.1f}"} for v in values]
    if y_axis:
        ticks += [{"axis": "y", "pos": _sy(v), "label": f"{v:.1f}"} for v in values]
    return ticks


def reliability_plot(bins: dict[str, Any], labels: dict[str, str], n_items: int) -> ReliabilityPlot:
    """Geometry of a reliability diagram with base and aligned overlaid.

    bins: {"base": ..., "aligned": ...} reliability bins (count, confidence, accuracy per bin). Each
    non-empty bin is a point at (mean confidence, accuracy) whose area grows with its share of the items;
    the aligned model's gap to the diagonal is a bar, red below the diagonal (accuracy < confidence:
    over-confident) and blue above it.
    """
    series, gaps = [], []
    for kind in ("base", "aligned"):
        if kind not in bins:
            continue
        points = []
        for count, conf, acc, lo, hi in _bin_rows(bins[kind]):
            tip = (
                f"{labels[kind]}: confidence in ({lo:.2f}, {hi:.2f}], {count} items, "
                f"mean confidence {conf:.3f}, accuracy {acc:.3f}, gap {acc - conf:+.3f}"
            )
            points.append(Point(_sx(conf), _sy(acc), round(2.0 + 7.0 * math.sqrt(count / max(n_items, 1)), 2), tip))
            if kind == "aligned":
                top, bottom = max(acc, conf), min(acc, conf)
                width = max(_PLOT * (hi - lo) * 0.55, 2.0)
                gaps.append(
                    Rect(
                        round(_sx(conf) - width / 2, 2), _sy(top), round(width, 2),
                        round(_PLOT * (top - bottom), 2), "over" if acc < conf else "under", tip,
                    )
                )
        path = " ".join(f"{'M' if i == 0 else 'L'}{p.x},{p.y}" for i, p in enumerate(points))
        series.append(Series(labels[kind], kind, path, points))
    over = f"{_sx(0)},{_sy(0)} {_sx(1)},{_sy(0)} {_sx(1)},{_sy(1)}"
    return ReliabilityPlot(
        width=_LEFT + _PLOT + _RIGHT,
        height=_TOP + _PLOT + _BOTTOM,
        frame=Rect(_LEFT, _TOP, _PLOT, _PLOT, "frame", ""),
        ticks=_ticks(),
        diagonal=(_sx(0), _sy(0), _sx(1), _sy(1)),
        over_region=over,
        zone_label=(_sx(0.2), _sy(0.2)),
        gaps=gaps,
        series=series,
    )


def confidence_histogram(bins: dict[str, Any], labels: dict[str, str]) -> Histogram:
    """Geometry of the top-label confidence histograms of base and aligned, side by side in each bin.

    Bar height is the share of the model's items in the bin, on a common scale for both models.
    """
    shares = {}
    for kind in ("base", "aligned"):
        if kind in bins:
            rows = _all_bin_rows(bins[kind])
            total = sum(row[0] for row in rows) or 1
            shares[kind] = [(count / total, lo, hi, count) for count, lo, hi in rows]
    top = max((share for rows in shares.values() for share, *_ in rows), default=1.0) or 1.0
    scale = _HIST_H / top
    bars = []
    offsets = {"base": 0.0, "aligned": 0.5}
    for kind, rows in shares.items():
        for share, lo, hi, count in rows:
            if count == 0:
                continue
            width = _PLOT * (hi - lo) / 2
            height = share * scale
            bars.append(
                Rect(
                    round(_sx(lo) + offsets[kind] * _PLOT * (hi - lo), 2),
                    round(_TOP + _HIST_H - height, 2),
                    round(max(width - 0.6, 0.8), 2),
                    round(height, 2),
                    kind,
                    f"{labels[kind]}: confidence in ({lo:.2f}, {hi:.2f}]: {count} items ({100 * share:.1f} %)",
                )
            )
    return Histogram(
        width=_LEFT + _PLOT + _RIGHT,
        height=_TOP + _HIST_H + 34.0,
        frame=Rect(_LEFT, _TOP, _PLOT, _HIST_H, "frame", ""),
        ticks=[{**tick, "y": _TOP + _HIST_H} for tick in _ticks(y_axis=False)],
        bars=bars,
        y_max_label=f"{100 * top:.0f} %",
    )


def _bin_rows(bins: Any) -> list[tuple[int, float, float, float, float]]:
    """(count, mean confidence, accuracy, lower edge, upper edge) of each non-empty bin."""
    return [
        (int(c), float(conf), float(acc), float(lo), float(hi))
        for c, conf, acc, lo, hi in zip(bins.counts, bins.confidence, bins.accuracy, bins.edges[:-1], bins.edges[1:])
        if c > 0
    ]


def _binned_error(bins: metrics.ReliabilityBins) -> float:
    """sum_b (n_b / N) |accuracy_b - confidence_b| over non-empty bins: ECE, or one class's SCE term."""
    return sum(count / bins.n_items * abs(acc - conf) for count, conf, acc, _, _ in _bin_rows(bins))


def _all_bin_rows(bins: Any) -> list[tuple[int, float, float]]:
    """(count, lower edge, upper edge) of every bin, empty ones included."""
    return [(int(c), float(lo), float(hi)) for c, lo, hi in zip(bins.counts, bins.edges[:-1], bins.edges[1:])]


# ----------------------------------------------------------------------------------------------- views


@dataclass
class CaseRow:
    task: str
    extractor: str
    metric: str
    metric_name: str
    base: str
    aligned: str
    change: str
    interval: str
    relative: str
    rule: str
    rule_sentence: str
    rule_source: str
    verdict: str
    message: str
    why: str  # one short line: the compared worsening against the limit, or the error
    p_value: str  # one-sided raw p-value of "worsening <= margin"
    p_adjusted: str  # after the family correction (thresholds.toml [gate])
    n_items: int
    tone: str  # "worse" | "better" | "": the direction of the change for this metric


@dataclass
class WrongItem:
    id: str
    question: str
    gold: str
    picked: str
    confidence: str
    base_pick: str
    base_confidence: str
    base_right: bool


@dataclass
class ExtractorView:
    name: str
    n_bins: int
    accuracy: tuple[str, str, str]  # base, aligned, change
    ece: tuple[str, str, str]
    reliability: ReliabilityPlot
    histogram: Histogram
    classwise: list[dict]
    sce: tuple[str, str, str]
    temperature: dict | None
    wrong: list[WrongItem]
    has_text: bool


@dataclass
class PairTaskView:
    task: str
    n_items: int
    note: str
    extractors: list[ExtractorView] = field(default_factory=list)


@dataclass
class PairView:
    name: str
    base: str
    aligned: str
    counts: dict[str, int]
    overview: dict
    matrix: list[CaseRow]
    tasks: list[PairTaskView]
    ended: str  # where its sequential looks ended and why (`summary.sequence_line`)


def _case_row(case: dict) -> CaseRow:
    low, high = case.get("ci_low"), case.get("ci_high")
    interval = "—"
    if low is not None and high is not None:
        level = case.get("confidence")
        prefix = f"{100 * level:.0f} % " if isinstance(level, (int, float)) else ""
        interval = f"{prefix}[{fmt_signed(low)}, {fmt_signed(high)}]"
        if case.get("ci_method"):
            interval += f" {case['ci_method']}"
    metric = metrics.METRICS.get(case["metric"])
    rule_text, rule_sentence = fmt_rule(case.get("rule") or {}, case["metric"])
    change = case.get("change")
    tone = ""
    if metric is not None and isinstance(change, (int, float)) and change != 0:
        tone = "worse" if (change > 0) == metric.higher_is_worse else "better"
    why = ""
    if case["verdict"] == "error":
        why = case.get("message") or ""
    elif case.get("margin") is not None and case.get("ci_high") is not None:
        margin = case["margin"]
        if case["verdict"] == "fail":
            why = f"worsening clearly above {margin:g} (adjusted p {fmt(case.get('p_adjusted'))})"
        elif case["verdict"] == "pass":
            why = f"interval within {margin:g}"
        elif case["verdict"] == "inconclusive":
            why = (f"neither: these items could detect a worsening of {fmt(case.get('detectable'))} or more, "
                   f"not {margin:g}")
    return CaseRow(
        task=case["task"],
        extractor=case["extractor"],
        metric=case["metric"],
        metric_name=metric.display_name if metric is not None else case["metric"],
        base=fmt(case.get("base_value")),
        aligned=fmt(case.get("aligned_value")),
        change=fmt_signed(case.get("change")),
        interval=interval,
        relative=fmt_pct(case.get("relative_change")),
        rule=rule_text,
        rule_sentence=rule_sentence,
        rule_source=case.get("rule_source") or "",
        verdict=case["verdict"],
        message=case.get("message") or "",
        why=why,
        p_value=fmt(case.get("p_value")),
        p_adjusted=fmt(case.get("p_adjusted")),
        n_items=int(case.get("n_items") or 0),
        tone=tone,
    )


def _order(values: list[str], preferred: Sequence[str] = ()) -> list[str]:
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _n_bins(cases: list[dict], task: str, extractor: str) -> int:
    """Bins of the gate's ECE rule for this task/extractor (the page must draw what the gate measured)."""
    for case in cases:
        if case["task"] == task and case["extractor"] == extractor and case["metric"] == "ece":
            value = (case.get("rule") or {}).get("n_bins")
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_BINS


def _option(items: dict | None, item_id: str, index: int) -> str:
    options = (items or {}).get(item_id, {}).get("options") or ()  # sides from score files know no texts
    if index < len(options):
        return f"{LETTERS[index]}. {options[index]}"
    return LETTERS[index]


def _wrong_items(
    base: ModelScores, aligned: ModelScores, extractor: str, items: dict | None
) -> list[WrongItem]:
    probs = aligned.probs[extractor]
    picked = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(picked != aligned.labels)
    # Most confident first; ties by id so the list is the same in every rendering.
    order = sorted(wrong, key=lambda i: (-confidence[i], aligned.ids[i]))[:N_WRONG]
    base_probs = base.probs[extractor]
    rows = []
    for i in order:
        item_id = aligned.ids[i]
        question = (items or {}).get(item_id, {}).get("context") or ""
        base_pick = int(base_probs[i].argmax())
        rows.append(
            WrongItem(
                id=item_id,
                question=question,
                gold=_option(items, item_id, int(aligned.labels[i])),
                picked=_option(items, item_id, int(picked[i])),
                confidence=fmt(float(confidence[i]), 3),
                base_pick=_option(items, item_id, base_pick),
                base_confidence=fmt(float(base_probs[i].max()), 3),
                base_right=base_pick == int(aligned.labels[i]),
            )
        )
    return rows


def _temperature_view(
    base: ModelScores, aligned: ModelScores, extractor: str, n_bins: int, margin: float
) -> dict | None:
    try:
        fits: dict[str, TemperatureFit] = {
            kind: cross_fit(scores.scores[extractor], scores.labels, scores.ids, n_bins=n_bins)
            for kind, scores in (("base", base), ("aligned", aligned))
        }
    except RecalibrationError as exc:
        return {"error": str(exc)}
    return {
        "error": None,
        "fits": {
            kind: {
                "temperature": fmt(fit.temperature, 3),
                "halves": f"{fit.half_temperatures[0]:.3f} / {fit.half_temperatures[1]:.3f}",
                "before": fmt(fit.ece_before),
                "after": fmt(fit.ece_after),
                "reading": "over-confident" if fit.temperature > 1.0 else "under-confident",
                "at_bound": fit.at_bound,
            }
            for kind, fit in fits.items()
        },
        "repair": repair_view(aligned, base, extractor, n_bins, margin),
    }


def _extractor_view(
    name: str, base: ModelScores, aligned: ModelScores, labels: dict[str, str], n_bins: int,
    margin: float, items: dict | None,
) -> ExtractorView:
    models = {"base": base, "aligned": aligned}
    probs = {kind: m.probs[name] for kind, m in models.items()}
    bins = {kind: metrics.reliability_bins(probs[kind], models[kind].labels, n_bins=n_bins) for kind in models}
    acc = {kind: float(metrics.accuracy(probs[kind], models[kind].labels)) for kind in models}
    ece = {kind: float(metrics.ece(probs[kind], models[kind].labels, n_bins=n_bins)) for kind in models}
    per_class = {
        kind: np.array(
            [_binned_error(b) for b in metrics.classwise_bins(probs[kind], models[kind].labels, n_bins=n_bins)]
        )
        for kind in models
    }
    classwise = [
        {
            "cls": LETTERS[k],
            "gold_share": fmt(float(np.mean(base.labels == k)), 3),
            "base": fmt(float(per_class["base"][k])),
            "aligned": fmt(float(per_class["aligned"][k])),
            "change": fmt_signed(float(per_class["aligned"][k] - per_class["base"][k])),
            "worse": per_class["aligned"][k] > per_class["base"][k],
        }
        for k in range(len(per_class["base"]))
    ]
    sce = {kind: float(np.mean(per_class[kind])) for kind in models}
    return ExtractorView(
        name=name,
        n_bins=n_bins,
        accuracy=(fmt(acc["base"]), fmt(acc["aligned"]), fmt_signed(acc["aligned"] - acc["base"])),
        ece=(fmt(ece["base"]), fmt(ece["aligned"]), fmt_signed(ece["aligned"] - ece["base"])),
        reliability=reliability_plot(bins, labels, len(base.ids)),
        histogram=confidence_histogram(bins, labels),
        classwise=classwise,
        sce=(fmt(sce["base"]), fmt(sce["aligned"]), fmt_signed(sce["aligned"] - sce["base"])),
        temperature=_temperature_view(base, aligned, name, n_bins, margin),
        wrong=_wrong_items(base, aligned, name, items),
        has_text=items is not None,
    )


def _pair_task_view(
    run_dir: Path, pair: dict, task: str, cases: list[dict], extractor_order: list[str]
) -> PairTaskView:
    base_records = _load_model_records(run_dir, pair["base"], task)
    aligned_records = _load_model_records(run_dir, pair["aligned"], task)
    missing = [label for label, recs in ((pair["base"], base_records), (pair["aligned"], aligned_records)) if not recs]
    if missing:
        return PairTaskView(task, 0, f"no per-item records for {', '.join(missing)}: diagrams unavailable")
    ids = [item_id for item_id in base_records if item_id in aligned_records]
    clash = [item_id for item_id in ids if base_records[item_id].gold != aligned_records[item_id].gold]
    if clash:
        return PairTaskView(
            task, 0, f"the two models' records disagree on the gold option of {len(clash)} item(s) (first: "
            f"{clash[0]}): they were scored on different data; diagrams unavailable, re-run the gate"
        )
    note = ""
    if len(ids) != len(base_records) or len(ids) != len(aligned_records):
        note = (
            f"the two models' records cover different items ({len(base_records)} vs {len(aligned_records)}); "
            f"diagrams use the {len(ids)} shared ones"
        )
    if not ids:
        return PairTaskView(task, 0, "the two models' records share no item: diagrams unavailable")
    base, aligned = ModelScores.from_records(base_records, ids), ModelScores.from_records(aligned_records, ids)
    items = load_items(run_dir, task)
    labels = {"base": pair["base"], "aligned": pair["aligned"]}
    view = PairTaskView(task, len(ids), note)
    for extractor in _order(list(base.probs), extractor_order):
        if extractor not in aligned.probs:
            continue
        view.extractors.append(
            _extractor_view(
                extractor, base, aligned, labels, _n_bins(cases, task, extractor),
                ece_margin(cases, pair["name"], task, extractor), items,
            )
        )
    return view


def _ranking(results: dict, tasks: list[str], extractors: list[str]) -> list[dict]:
    """Per (metric, extractor): pairs ranked by change on each task (rank 1 = largest increase, the worst),
    ordered by their mean rank over tasks, as in the seed study's Table 1 (which ranks by change rate)."""
    tables = []
    metric_names = _order([c["metric"] for c in results["cases"]], _METRIC_ORDER)
    for metric in [m for m in metric_names if m in _RANKED_METRICS]:
        for extractor in extractors:
            cells: dict[str, dict[str, dict]] = {}
            for case in results["cases"]:
                if case["metric"] == metric and case["extractor"] == extractor and case.get("change") is not None:
                    cells.setdefault(case["pair"], {})[case["task"]] = case
            if len(cells) < 2:
                continue
            columns = [task for task in tasks if any(task in row for row in cells.values())]
            ranks: dict[str, dict[str, int]] = {pair: {} for pair in cells}
            for task in columns:
                ordered = sorted((p for p in cells if task in cells[p]), key=lambda p: -cells[p][task]["change"])
                for rank, pair in enumerate(ordered, start=1):
                    ranks[pair][task] = rank
            rows = []
            for pair, by_task in cells.items():
                mean_rank = float(np.mean(list(ranks[pair].values())))
                rows.append(
                    {
                        "pair": pair,
                        "mean_rank": f"{mean_rank:.2f}",
                        "sort": mean_rank,
                        "cells": [
                            {
                                "change": fmt_signed(by_task[t]["change"]),
                                "relative": fmt_pct(by_task[t].get("relative_change")),
                                "rank": ranks[pair][t],
                                "verdict": by_task[t]["verdict"],
                            }
                            if t in by_task
                            else None
                            for t in columns
                        ],
                    }
                )
            rows.sort(key=lambda row: (row["sort"], row["pair"]))
            tables.append({"metric": metric, "extractor": extractor, "tasks": columns, "rows": rows})
    return tables


def _overview(pair_cases: list[dict], tasks: list[str], extractors: list[str], metric_names: list[str]) -> dict:
    """The at-a-glance grid of one pair: task rows x (extractor, metric) columns, each cell a change."""
    index = {(c["task"], c["extractor"], c["metric"]): c for c in pair_cases}
    columns = [(e, m) for e in extractors for m in metric_names if any(k[1:] == (e, m) for k in index)]
    groups = [(e, sum(1 for col in columns if col[0] == e)) for e in extractors]
    rows = []
    for task in tasks:
        if not any(k[0] == task for k in index):
            continue
        cells = []
        for extractor, metric in columns:
            case = index.get((task, extractor, metric))
            cells.append(
                None if case is None else {
                    "change": fmt_signed(case.get("change")),
                    "verdict": case["verdict"],
                    "tip": f"{metric}: {fmt(case.get('base_value'))} → {fmt(case.get('aligned_value'))}; "
                    f"{case['verdict']}",
                }
            )
        rows.append({"task": task, "cells": cells})
    return {
        "groups": [g for g in groups if g[1]],
        "metrics": [metrics.METRICS[m].display_name if m in metrics.METRICS else m for _, m in columns],
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------- letter mass


def _letter_mass_rows(run_dir: Path, models: Sequence[str], tasks: Sequence[str]) -> list[dict]:
    """Per model, per task: the mean letter mass of its records (scoring.letter_mass_summary), flagged ``low``
    below `LETTER_MASS_FLOOR`, where the choice extractor's numbers describe the model poorly. A cell is None
    where the model has no records on the task or they predate letter mass."""
    rows = []
    for model in models:
        cells = []
        for task in tasks:
            records = _load_model_records(run_dir, model, task)
            summary = letter_mass_summary(list(records.values())) if records else None
            cells.append(
                None if summary is None else {
                    "mean": f"{summary['mean']:.3f}",
                    "low": summary["mean"] < LETTER_MASS_FLOOR,
                    "tip": f"least {summary['min']:.3g}; {summary['below_floor']:.0%} of {len(records)} items "
                    f"below {LETTER_MASS_FLOOR}",
                }
            )
        if any(cells):
            rows.append({"model": model, "cells": cells})
    return rows


def _scoring_paths(models: dict) -> dict[str, list[str]]:
    """Per model label, the path its scores were computed with and how far it was from the engine's plain
    reference, one line per model load (results.json's ``models.<label>.self_check``); a line saying why where
    there is none."""
    out = {}
    for label, model in models.items():
        checks = model.get("self_check") or []
        if checks:
            out[label] = [SelfCheck.from_json(check).describe() for check in checks]
        elif model.get("stack"):
            out[label] = ["not recorded: scored before the engine checked its path (re-score with --calib-no-cache)"]
        else:
            out[label] = ["read from files: not scored by this engine"]
    return out


_RUN_SHOWN = ("started_at", "finished_at", "duration_s", "argv", "dtype", "device", "thresholds", "versions")


def _run_extra(run: dict) -> list[dict]:
    """The caller's other identity keys (seed, limit, data source, ...) as compact JSON text, long ones folded."""
    rows = []
    for key, value in run.items():
        if key in _RUN_SHOWN:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        rows.append({"key": key, "text": text, "long": len(text) > 160})
    return rows


def build_context(run_dir: Path, results: dict) -> dict:
    """Everything the template shows, as plain values (strings already formatted)."""
    cases = results["cases"]
    # The pooled cases (over all tasks) are the release's headline: first.
    tasks = _order(list(results["tasks"]) + [c["task"] for c in cases], [POOLED_TASK])
    extractors = _order([c["extractor"] for c in cases])
    metric_names = _order([c["metric"] for c in cases], _METRIC_ORDER)
    sort_key = {
        "task": {t: i for i, t in enumerate(tasks)},
        "extractor": {e: i for i, e in enumerate(extractors)},
        "metric": {m: i for i, m in enumerate(metric_names)},
    }

    def case_key(case: dict) -> tuple:
        return tuple(sort_key[k][case[k]] for k in ("task", "extractor", "metric"))

    from calib_checks.summary import sequence_line

    sequences = (results.get("run", {}).get("sequential") or {}).get("comparisons") or {}
    pairs = []
    for pair in results["pairs"]:
        pair_cases = sorted((c for c in cases if c["pair"] == pair["name"]), key=case_key)
        pair_tasks = _order([c["task"] for c in pair_cases], tasks) or tasks
        pairs.append(
            PairView(
                name=pair["name"],
                base=pair["base"],
                aligned=pair["aligned"],
                counts={v: sum(c["verdict"] == v for c in pair_cases) for v in VERDICTS},
                overview=_overview(pair_cases, pair_tasks, extractors, metric_names),
                matrix=[_case_row(c) for c in pair_cases],
                tasks=[_pair_task_view(run_dir, pair, task, cases, extractors) for task in pair_tasks],
                ended=sequence_line(sequences.get(pair["name"])),
            )
        )
    flagged = [
        {"pair": c["pair"], **vars(_case_row(c))}
        for c in sorted(cases, key=lambda c: (c["pair"], *case_key(c)))
        if c["verdict"] in ("fail", "error")
    ]
    def scores_of(label: str, task: str) -> ModelScores | None:
        records = _load_model_records(run_dir, label, task)
        return None if not records else ModelScores.from_records(records, list(records))

    chains = [chain_view(chain, results["pairs"], cases, tasks, extractors, scores_of,
                         lambda task, extractor: _n_bins(cases, task, extractor))
              for chain in results.get("chains", [])]
    return {
        "r": results,
        "run": results["run"],
        "run_extra": _run_extra(results["run"]),
        "chains": chains,
        "pairs": pairs,
        "flagged": flagged,
        "ranking": _ranking(results, tasks, extractors) if len(results["pairs"]) > 1 else [],
        "tasks": tasks,
        "letter_mass": _letter_mass_rows(run_dir, list(results["models"]), tasks),
        "scoring_paths": _scoring_paths(results["models"]),
        "letter_mass_floor": LETTER_MASS_FLOOR,
    }


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,  # every template, whatever its extension: data text is hostile
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render `report.html` of a run directory (or to `out`) from its results.json and records; return the path."""
    run_dir = resolve_run_dir(run_dir)
    results = load_results(run_dir)
    html = _environment().get_template("report.html.j2").render(**build_context(run_dir, results))
    return atomic_write_text(Path(out) if out is not None else run_dir / REPORT_FILE, html)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m calib_checks report`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (reports/<run-id>), or reports/latest")
    parser.add_argument(
        "--out", metavar="FILE", default=None, help="write the page here instead of RUN_DIR/report.html"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Re-render the page from the saved run; print its path."""
    path = render_report(args.run_dir, args.out)
    print(path)
    return 0

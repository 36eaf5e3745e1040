"""`python -m calib_checks plan`: what a run's items can show, before the run (issue #24).

From one model's scores (any source: the base's cached scores are the natural input, and a cache hit loads no
weights) it prints, per task, extractor and gated metric:

- the smallest worsening the items at hand detect with 80 % power at the level the gate tests a pair's case
  (``detectable``, the gate's own formula: ``margin + (z_{1 - a/m} + z_0.8) se``, with m the gated cases of a pair
  and a the rate the last sequential look spends);
- the items per task needed to detect a given worsening (``--worsening``), and to make an equally calibrated pair
  PASS its margin with 80 % probability (upper end ``W + z se`` within the margin: ``se <= margin / (z + z_0.8)``).

The standard errors are the gate's: the bootstrap of the model's own value (the gate's resampling, bins and se
inflation), turned into the se of a pair's change by the aligned model's correlation with the base, `rho`:
``se_change = se_model sqrt(2 (1 - rho))`` for ECE and SCE; for over-confidence, whose sign-aware test is bound by
the SUM of both values when the base is near calibrated (|value| < 2 se), ``se_model sqrt(2 (1 + rho))``. The
default rho = 0 (independent errors) is conservative for a fine-tune of the base, whose errors correlate; a
previous gate run of the same pair (`--from-run`) gives the se it measured instead, which is exact for that pair.
Every se scales as 1 / sqrt(items).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calib_checks.errors import CalibChecksError

if TYPE_CHECKING:
    from calib_checks.selection import Selection
    from calib_checks.sources import Source

POWER = 0.8


class PlanError(CalibChecksError):
    """The plan cannot be made as asked (one line)."""


@dataclass(frozen=True)
class PlanRow:
    """One case's plan: `se` is the se of a pair's change at `n_items` items per task."""

    task: str
    extractor: str
    metric: str
    n_items: int
    margin: float
    se: float
    detectable: float
    items_for_worsening: float  # math.inf when the worsening is within the margin
    items_to_pass: float


def _z(q: float) -> float:
    from calib_checks.metrics import normal_quantile

    return normal_quantile(q)


def plan_row(task: str, extractor: str, metric: str, n_items: int, se: float, margin: float, confidence: float,
             alpha: float, family_size: int, worsening: float) -> PlanRow:
    """The plan of one case from the se of a pair's change at `n_items` items (module docstring's formulas)."""
    z_fail = _z(1.0 - alpha / max(family_size, 1)) + _z(POWER)
    z_pass = _z((1.0 + confidence) / 2.0) + _z(POWER)
    detectable = margin + z_fail * se
    for_worsening = math.inf if worsening <= margin else n_items * (z_fail * se / (worsening - margin)) ** 2
    return PlanRow(task, extractor, metric, n_items, margin, se, detectable, for_worsening,
                   n_items * (z_pass * se / margin) ** 2 if margin > 0 else math.inf)


def model_se(metric: str, probs, labels, n_bins: int, n_resamples: int, seed: int) -> tuple[float, float]:
    """(the model's value, its bootstrap se) as the gate resamples it (se inflation included)."""
    from calib_checks.metrics import paired_bootstrap

    boot = paired_bootstrap(metric, probs, probs, labels, n_resamples=n_resamples, seed=seed, n_bins=n_bins)
    alone = boot.contrast(1.0, 0.0)
    return alone.change, alone.se


def change_se(metric: str, value: float, se: float, rho: float) -> float:
    """The se of a pair's change from one model's se (module docstring)."""
    from calib_checks.metrics import METRICS

    if METRICS[metric].signed and abs(value) < 2.0 * se:
        return se * math.sqrt(2.0 * (1.0 + rho))
    return se * math.sqrt(2.0 * (1.0 - rho))


def format_plan(rows: Sequence[PlanRow], worsening: float, how: str) -> str:
    def items(n: float) -> str:
        return "never (within the margin)" if math.isinf(n) else f"{math.ceil(n):,}"

    lines = [f"calib-checks plan ({how})",
             f"| task | extractor | metric | items | margin | se of a pair's change | detects (80 % power) | items to "
             f"detect {worsening:+.3f} | items for an equal pair to pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.extractor} | {r.metric} | {r.n_items} | {r.margin:.4g} | {r.se:.4f} | "
                     f"{r.detectable:+.4f} | {items(r.items_for_worsening)} | {items(r.items_to_pass)} |")
    return "\n".join(lines)


def plan_from_run(run_dir: str | Path, worsening: float) -> list[PlanRow]:
    """The plan from a previous gate run's own measured standard errors (its gated, judged cases)."""
    from calib_checks.results import load_results

    rows = []
    for case in load_results(run_dir)["cases"]:
        if case["verdict"] in ("pass", "fail", "inconclusive") and case.get("se") is not None:
            rows.append(plan_row(case["task"], case["extractor"], case["metric"], case["n_items"], case["se"],
                                 case["margin"], case["confidence"], case["alpha"], case["family_size"], worsening))
    if not rows:
        raise PlanError(f"{run_dir}: no judged gated case holds a standard error to plan from")
    return rows


def plan_from_scores(side: str, options: argparse.Namespace) -> list[PlanRow]:
    """The plan from one side's scores (module docstring)."""
    from calib_checks.cache import ScoreCache
    from calib_checks.selection import GateOptions, select
    from calib_checks.sources import SourceContext
    from calib_checks.sources.registry import open_source

    selection = select(GateOptions(pairs=(f"{side},{side}",), tasks=tuple(options.tasks.split(",")),
                                   extractors=tuple(options.extractors.split(",")),
                                   metrics=tuple(options.metrics.split(",")), thresholds=options.thresholds,
                                   limit=options.limit, seed=options.seed, data_source=options.data_source,
                                   device=options.device, dtype=options.dtype,
                                   task_files=tuple(options.task_file)))
    o = selection.options
    context = SourceContext(device=o.device, dtype=o.dtype, progress=True, limit=o.limit, seed=o.seed,
                            data_source=o.data_source, tasks=selection.tasks,
                            cache=None if options.no_cache else ScoreCache())
    source = open_source(side, context)
    try:
        return _plan_rows(source, side, selection, options)
    finally:
        source.close()


def _plan_rows(source: Source, side: str, selection: Selection, options: argparse.Namespace) -> list[PlanRow]:
    from calib_checks.data import load_task, sample_ids
    from calib_checks.verdicts import look_alpha, look_sizes

    o = selection.options
    gated = [(t, e, m) for (t, e, m), rule in selection.rules.items() if rule.gate]
    rows = []
    for task in o.tasks:
        data = source.items(task) if source.fixes_items else (
            load_task(selection.tasks[task], source=o.data_source, limit=o.limit, seed=o.seed)
            if source.needs_items else None)
        scores = source.scores(task, data)
        if data is None:
            scores = scores.select(sample_ids(scores.ids, o.limit, o.seed))
        n = len(scores.records)
        looks = len(look_sizes(100, n))  # the gate's default looks (--calib-first-look 100)
        alpha = look_alpha(selection.policy.alpha, looks - 1, looks)
        for t, extractor, metric in gated:
            if t != task:
                continue
            rule = selection.rules[(t, extractor, metric)]
            if scores.lacking(extractor):
                raise PlanError(f"{side} gives no {extractor} scores on {task}; drop it from --extractors")
            probs = scores.probs(extractor)
            value, se = model_se(metric, probs, scores.labels(), rule.n_bins, rule.n_resamples, o.seed)
            rows.append(plan_row(task, extractor, metric, n, change_se(metric, value, se, options.correlation),
                                 rule.margin(probs.shape[1], value), rule.confidence, alpha, len(gated), options.worsening))
    return rows


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from calib_checks.selection import DEFAULT_EXTRACTORS, DEFAULT_METRICS, DEFAULT_TASKS

    parser.add_argument("side", nargs="?", metavar="SIDE",
                        help="one model's scores: a checkpoint, scores:DIR or lm-eval:PATH (the base, usually)")
    parser.add_argument("--from-run", metavar="RUN_DIR", default=None,
                        help="plan from a previous gate run's measured standard errors instead (e.g. reports/latest)")
    parser.add_argument("--worsening", type=float, default=0.02, help="the worsening to plan for (default 0.02)")
    parser.add_argument("--correlation", type=float, default=0.0,
                        help="the aligned model's correlation with the base, in [0, 1) (default 0: conservative)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--extractors", default=",".join(DEFAULT_EXTRACTORS))
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="the gated ones are planned")
    parser.add_argument("--thresholds", default=str(Path(__file__).resolve().parent.parent / "thresholds.toml"))
    parser.add_argument("--task-file", action="append", default=[], metavar="PATH")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-source", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="score afresh (default: the score cache)")


def run_cli(args: argparse.Namespace) -> int:
    if (args.side is None) == (args.from_run is None):
        raise PlanError("give one model's scores (SIDE) or --from-run RUN_DIR, not both and not neither")
    if not 0.0 <= args.correlation < 1.0:
        raise PlanError(f"--correlation must be in [0, 1), got {args.correlation}")
    if not (math.isfinite(args.worsening) and args.worsening > 0):
        raise PlanError(f"--worsening must be a positive number (e.g. 0.02), got {args.worsening}")
    if args.from_run is not None:
        rows, how = plan_from_run(args.from_run, args.worsening), f"the standard errors measured in {args.from_run}"
    else:
        rows = plan_from_scores(args.side, args)
        how = (f"{args.side}'s own bootstrap, the aligned model's correlation with it taken as {args.correlation:g}; "
               "the level of a pair's case at the last sequential look")
    print(format_plan(rows, args.worsening, how))
    return 0

"""`python -m calib_checks plan`: what a run's items can show, before the run (issue #24).

From one model's scores (any source: the base's cached scores are the natural input, and a cache hit loads no
weights) it prints, per task, extractor and gated metric:

- the smallest worsening the items at hand detect with 80 % power at the level the gate tests the case
  (``detectable``, the gate's own formula `verdicts.detectable_worsening`: ``margin + (z_{1 - a/m} + z_0.8) se``);
- the items per task needed to detect a given worsening (``--worsening``), and to make an equally calibrated pair
  PASS its margin with 80 % probability (upper end ``W + z_q se`` within the margin: ``se <= margin / (z_q +
  z_0.8)``, q the quantile of the upper end the gate passes a case on, `verdicts.upper_end_quantile`: (1 + c) / 2
  at the rule's confidence c, and 1 - (1 - c) / 4 for over-confidence, whose sign-aware test bounds each of its
  two contrasts at half that tail).

The level is the gate's (calib_checks/family.py): each case's initial weight in its family's graph (the pooled
cases, one per extractor x metric over all tasks, share ``[gate] pooled_weight`` of alpha and are planned first;
the per-task cases the rest, by ``metric_weights``), the family being a pair's cases, or all the comparisons of a
chain of ``--chain N`` checkpoints together (``family = "case"``: each case alone, weight 1), that rate spent
over the looks `sampling.look_sizes(--first-look, budget)` by the O'Brien-Fleming-type function, the budget being
the family's largest task (one look with ``--full``): the plan uses the last look's nominal level. The items a
worsening needs set the looks too. A pooled row's items are per task (its se scales the same way).

The standard errors are the gate's: the bootstrap of the model's own value (the gate's resampling, bins and se
inflation), turned into the se of a pair's change by the aligned model's correlation with the base, `rho`:
``se_change = se_model sqrt(2 (1 - rho))`` for ECE and SCE; for over-confidence, whose sign-aware test is bound by
the SUM of both values when the base is near calibrated (|value| < 2 se), ``se_model sqrt(2 (1 + rho))``. The
default rho = 0 (independent errors) is conservative for a fine-tune of the base, whose errors correlate; a
previous gate run of the same pair (`--from-run`) gives the se it measured instead, which is exact for that pair,
and each case's own level (the rate its last look spent, its family's size).
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
from calib_checks.metrics import METRICS, normal_quantile, paired_bootstrap
from calib_checks.sampling import look_sizes
from calib_checks.spending import look_levels
from calib_checks.verdicts import POWER, detectable_worsening, upper_end_quantile

if TYPE_CHECKING:
    from calib_checks.selection import Selection
    from calib_checks.sources import Source


class PlanError(CalibChecksError):
    """The plan cannot be made as asked (one line)."""


@dataclass(frozen=True)
class Level:
    """The level at which the gate tests a case (`Gate.judge`, calib_checks/family.py): the case's `weight` of the
    family-wise `alpha` (its initial share in the family's graph: the strictest it is tested at, as `detectable`),
    spent over the looks `sampling.look_sizes(first_look, budget)` by the O'Brien-Fleming-type function
    (`first_look` None: one look); `family_size` is the family's number of gated cases."""

    alpha: float
    weight: float
    family_size: int
    first_look: int | None = None

    def at(self, budget: int) -> float:
        """The nominal level of the case at the last look of a family whose largest task has `budget` items."""
        looks = [max(budget, 1)] if self.first_look is None else look_sizes(self.first_look, max(budget, 1))
        return look_levels(looks, self.weight * self.alpha)[-1]


@dataclass(frozen=True)
class PlanRow:
    """One case's plan: `se` is the se of a pair's change at `n_items` items per task; `alpha` the rate the gate
    spends on it at the run's last look (its weight's share, calib_checks/family.py), in a family of `family_size`
    gated cases."""

    task: str
    extractor: str
    metric: str
    n_items: int
    margin: float
    se: float
    alpha: float
    family_size: int
    detectable: float
    items_for_worsening: float  # math.inf when the worsening is within the margin
    items_to_pass: float


def plan_row(task: str, extractor: str, metric: str, n_items: int, se: float, margin: float, confidence: float,
             level: Level, worsening: float, budget: int | None = None) -> PlanRow:
    """The plan of one case from the se of a pair's change at `n_items` items (module docstring's formulas);
    `budget`: the items of the family's largest task, which set its looks (default `n_items`)."""
    budget = n_items if budget is None else budget
    alpha = level.at(budget)

    def z_fail(items: int) -> float:  # the gate's detectable worsening with margin 0 and se 1: its two z's
        return detectable_worsening(0.0, 1.0, level.at(items), 1)

    def for_worsening(items: int) -> float:
        return n_items * (z_fail(items) * se / (worsening - margin)) ** 2

    # The items a worsening needs set the looks, and so the rate of the last: sized at one look's whole rate first,
    # then at the rate of the looks that many items make (the same when they fit in the first look).
    needed = math.inf if worsening <= margin else for_worsening(math.ceil(for_worsening(1)))
    z_pass = normal_quantile(upper_end_quantile(confidence, METRICS[metric].signed)) + normal_quantile(POWER)
    return PlanRow(task, extractor, metric, n_items, margin, se, alpha, level.family_size,
                   detectable_worsening(margin, se, alpha, 1), needed,
                   n_items * (z_pass * se / margin) ** 2 if margin > 0 else math.inf)


def model_se(metric: str, probs, labels, n_bins: int, n_resamples: int, seed: int) -> tuple[float, float]:
    """(the model's value, its bootstrap se) as the gate resamples it (se inflation included)."""
    boot = paired_bootstrap(metric, probs, probs, labels, n_resamples=n_resamples, seed=seed, n_bins=n_bins)
    alone = boot.contrast(1.0, 0.0)
    return alone.change, alone.se


def change_se(metric: str, value: float, se: float, rho: float) -> float:
    """The se of a pair's change from one model's se (module docstring)."""
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
    """The plan from a previous gate run's own measured standard errors and levels (its gated, judged cases)."""
    from calib_checks.results import load_results

    rows = []
    for case in load_results(run_dir)["cases"]:
        if case["verdict"] in ("pass", "fail", "inconclusive") and case.get("se") is not None:
            rows.append(plan_row(case["task"], case["extractor"], case["metric"], case["n_items"], case["se"],
                                 case["margin"], case["confidence"],
                                 Level(case.get("level") or case["alpha"], 1.0, case["family_size"]), worsening))
    if not rows:
        raise PlanError(f"{run_dir}: no judged gated case holds a standard error to plan from")
    return rows


def plan_from_scores(side: str, options: argparse.Namespace) -> list[PlanRow]:
    """The plan from one side's scores (module docstring), for a pair or a chain of `options.chain` checkpoints."""
    from dataclasses import replace

    from calib_checks.cache import ScoreCache
    from calib_checks.selection import Family, GateOptions, select
    from calib_checks.sources import SourceContext
    from calib_checks.sources.registry import open_source

    if options.chain < 2:
        raise PlanError(f"--chain must be 2 (a pair) or more checkpoints, got {options.chain}")
    selection = select(GateOptions(pairs=(f"{side},{side}",), tasks=tuple(options.tasks.split(",")),
                                   extractors=tuple(options.extractors.split(",")),
                                   metrics=tuple(options.metrics.split(",")), thresholds=options.thresholds,
                                   limit=options.limit, seed=options.seed, data_source=options.data_source,
                                   device=options.device, dtype=options.dtype,
                                   task_files=tuple(options.task_file), sequential=not options.full,
                                   first_look=options.first_look))
    # The family planned for, expanded into comparisons and cases as the gate expands a pair or a chain (the
    # side stands for every checkpoint: only their number matters here).
    family = Family("plan", (side,) * options.chain, "chain" if options.chain > 2 else "pair")
    selection = replace(selection, families=[family])
    selection.name_comparisons({})
    o = selection.options
    context = SourceContext(device=o.device, dtype=o.dtype, progress=True, data_source=o.data_source,
                            tasks=selection.tasks,
                            cache=None if options.no_cache else ScoreCache())
    source = open_source(side, context)
    try:
        return _plan_rows(source, side, selection, options)
    finally:
        source.close()


def _plan_rows(source: Source, side: str, selection: Selection, options: argparse.Namespace) -> list[PlanRow]:
    from calib_checks.collect import decide_items
    from calib_checks.data import load_task
    from calib_checks.graphical import pooled_design
    from calib_checks.pooled import Group, pooled_bootstrap, pooled_margin
    from calib_checks.selection import POOLED_TASK

    o = selection.options
    policy = selection.policy
    cases = [c for c in selection.cases() if selection.rules[(c.task, c.extractor, c.metric)].gate]
    # Each case's initial weight in its family, as the gate's family correction sets it (calib_checks/family.py).
    graph = pooled_design([(c.pair, c.task, c.extractor, c.metric) for c in cases], policy.pooled_weight,
                          pooled_task=POOLED_TASK, metric_weights=policy.metric_weights)
    weights = {(c.task, c.extractor, c.metric): (1.0 if policy.family == "case" else float(w))
               for c, w in zip(cases, graph.weights) if c.pair == cases[0].pair}
    family_size = 1 if policy.family == "case" else len(cases)
    scored = {}
    for task in o.tasks:
        # The items the gate would judge this side on, chosen by the gate's own rule.
        items = decide_items(task, [(side, source)], lambda: load_task(selection.tasks[task],
                                                                       source=o.data_source), o.limit, o.seed)
        scored[task] = source.scores(task, items.data, items.ids)
    budget = max(len(scores.records) for scores in scored.values())  # the family's looks follow its largest task
    rows = []
    for (task, extractor, metric), weight in weights.items():
        level = Level(policy.alpha, weight, family_size, o.first_look if o.sequential else None)
        rule = selection.rules[(task, extractor, metric)]
        tasks = list(o.tasks) if task == POOLED_TASK else [task]
        for t in tasks:
            if scored[t].lacking(extractor):
                raise PlanError(f"{side} gives no {extractor} scores on {t}; drop it from --extractors")
        if task == POOLED_TASK:  # its se from the same stratified bootstrap the gate runs, the model alone
            groups = [Group(t, scored[t].probs(extractor), scored[t].probs(extractor), scored[t].labels())
                      for t in tasks]
            alone = pooled_bootstrap(metric, groups, rule.n_resamples, rule.confidence, o.seed,
                                     n_bins=rule.n_bins).contrast(1.0, 0.0)
            value, se = alone.change, alone.se
            task_rules = [selection.rules[(t, extractor, metric)] for t in tasks]
            margin, n = pooled_margin(metric, groups, task_rules)[0], budget
        else:
            probs = scored[task].probs(extractor)
            value, se = model_se(metric, probs, scored[task].labels(), rule.n_bins, rule.n_resamples, o.seed)
            margin, n = rule.margin(probs.shape[1], value), len(scored[task].records)
        rows.append(plan_row(task, extractor, metric, n, change_se(metric, value, se, options.correlation), margin,
                             rule.confidence, level, options.worsening, budget))
    return rows


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from calib_checks.selection import DEFAULT_EXTRACTORS, DEFAULT_METRICS, DEFAULT_TASKS, GateOptions

    parser.add_argument("side", nargs="?", metavar="SIDE",
                        help="one model's scores: a checkpoint, scores:DIR or lm-eval:PATH (the base, usually)")
    parser.add_argument("--from-run", metavar="RUN_DIR", default=None,
                        help="plan from a previous gate run's measured standard errors instead (e.g. reports/latest)")
    parser.add_argument("--worsening", type=float, default=0.02, help="the worsening to plan for (default 0.02)")
    parser.add_argument("--correlation", type=float, default=0.0,
                        help="the aligned model's correlation with the base, in [0, 1) (default 0: conservative)")
    parser.add_argument("--chain", type=int, default=2, metavar="N",
                        help="checkpoints in the family to plan for: 2 (default) a pair, more a --model-chain, whose "
                             "steps and whole chain are one Holm family")
    parser.add_argument("--first-look", type=int, default=GateOptions.first_look, metavar="N",
                        help=f"items per task at the gate's first look, as --calib-first-look (default "
                             f"{GateOptions.first_look})")
    parser.add_argument("--full", action="store_true", help="plan for a gate run with --calib-full (one look)")
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
        family = "a pair" if args.chain == 2 else f"a chain of {args.chain} checkpoints"
        how = (f"{args.side}'s own bootstrap, the aligned model's correlation with it taken as {args.correlation:g}; "
               f"each case at its level at the gate's last look: its weight of the family's alpha in a "
               f"family of {rows[0].family_size} gated cases of {family}, pooled cases first, spent over the looks")
    print(format_plan(rows, args.worsening, how))
    return 0

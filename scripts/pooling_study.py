"""Pick the pooled-case design (issue 30) by measurement: per-pair failure rates of candidate designs.

Each simulated pair is calib_checks.simulation's (6 tasks x 3 extractors, aligned noise correlated 0.9, exactly
calibrated Gaussian-signal posteriors), judged in the gate's looks (`verdicts.look_sizes`: 100, 200, 400, ...
items per task, then the budget). At every look every case gets its one-sided p-value from the REAL decision
code: `verdicts.judge_arrays` for the 54 per-task cases (task x extractor x ECE/SCE/over-confidence, shipped
thresholds.toml) and `pooled.judge_pooled` for the 9 pooled ones (extractor x metric over all six tasks). The
p-values are computed once per pair; every design is then applied to the same p-values:

* ``shipped``: the gate today: Holm over the 54 per-task cases at each look, the family's rate split over looks
  by `verdicts.look_alpha` (20 % over the interim looks, 80 % at the last);
* ``w=W/RULE``: the graphical procedure (`graphical.pooled_design`: the 9 pooled cases share W of alpha, the 54
  per-task cases 1 - W; RULE = how a rejected case passes its weight on) in its group-sequential form
  (`graphical.sequential_graphical_test`: each case's local rate spent over the looks by the Lan-DeMets
  O'Brien-Fleming-type function, `spending.look_levels`), stopping at the first look with a rejection.
  W = 0 is per-task Holm with O'Brien-Fleming spending; W = 1 the pooled cases alone.

Whether a pair fails, and at which look, depends on the initial weights only (graphical.py); the passing rule
changes how many cases fail at the stopping look, which the second table shows.

    PYTHONPATH=. python scripts/pooling_study.py --jobs 2 [--quick] [--out /tmp/pooling_study.json]
    PYTHONPATH=. python scripts/pooling_study.py --reanalyse /tmp/pooling_study.json

The gate's own bootstrap settings are used (2000 resamples, normal intervals). Seeded: pair r of a scenario at a
budget draws its items from seed ``seed * 1_000_003 + budget * 1009 + 7919 * c + r``, c the scenario's place in
the plan, so ``--scenarios`` / ``--budgets`` runs of parts of the plan draw the same pairs as the whole plan.
The "-noSCE" designs keep only the pooled ECE and over-confidence cases in the family (see NO_SCE).
"""

from __future__ import annotations

import argparse
import math
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib_checks.graphical import PASSING, holm_graph, pooled_design, sequential_graphical_test
from calib_checks.metrics import use_matrix_sums
from calib_checks.pooled import POOLED_TASK, Group, judge_pooled
from calib_checks.simulation import (EXTRACTORS, SCENARIOS, SHIPPED, TASK_OPTIONS, Scenario, _map_in_workers,
                                     clopper_pearson, gated_metrics, generate_group)
from calib_checks.thresholds import load_thresholds
from calib_checks.sampling import look_sizes
from calib_checks.verdicts import judge_arrays


def holm(p_values):
    """The previous round's family correction (the "shipped" column): Holm's step-down adjusted p-values."""
    p = np.array([0.0 if math.isnan(x) else x for x in p_values], dtype=np.float64)
    order = np.argsort(p, kind="stable")
    out = np.empty(p.size)
    out[order] = np.minimum(1.0, np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]))
    return [float(x) for x in out]


def look_alpha(alpha, look, n_looks):
    """The previous round's spending across looks (the "shipped" column): 20 % over the interim looks, 80 % last."""
    if n_looks <= 1:
        return alpha
    return alpha * 0.8 if look >= n_looks - 1 else alpha * 0.2 / (n_looks - 1)

ALPHA = 0.05
FIRST_LOOK = 100
STUDY_SCENARIOS = {
    **SCENARIOS,
    "T0.8": Scenario("T0.8", "sharpened T=0.8, rho 0.9", "damage", 1.0, 0.8),
}
#: (scenario, budget) -> pairs. Order: what the issue's targets name first; a scenario's place in this table is
#: part of its pairs' seeds (so a run of a subset, --scenarios, draws the same pairs). Sized for about 2 hours of
#: CPU (3.7 s per pair at 500 items, 15 s at 2000, on this 2-core machine).
FULL_PLAN: dict[str, dict[int, int]] = {
    "T0.85": {500: 60, 2000: 30},
    "T0.8": {500: 40},
    "T0.7": {500: 30},
    "one-task": {500: 50, 2000: 12},
    "T1.4": {500: 30},
    "under-to-cal": {500: 30, 2000: 8},
    "over-to-cal": {500: 30, 2000: 8},
    "equal-rho0.9": {500: 60, 2000: 16},
    "over-base": {500: 30, 2000: 8},
    "acc-loss": {500: 30, 2000: 8},
}
QUICK_PLAN: dict[str, dict[int, int]] = {"T0.85": {500: 4}, "one-task": {500: 2}, "equal-rho0.9": {500: 4}}
WEIGHTS = (0.0, 0.3, 0.5, 0.7, 1.0)
#: Pooled shares of the "-noSCE" designs (smaller ones: one-task damage needs the per-task cases' share).
NO_SCE_WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclass
class PairP:
    """One simulated pair: its looks and the (looks, cases) one-sided p-values; cases are `keys`."""

    scenario: str
    budget: int
    seed: int
    sizes: tuple[int, ...]
    keys: tuple[tuple[str, str, str], ...]
    p: np.ndarray
    seconds: float

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "budget": self.budget, "seed": self.seed, "sizes": list(self.sizes),
                "keys": [list(k) for k in self.keys], "p": self.p.tolist(), "seconds": self.seconds}

    @classmethod
    def from_json(cls, row: dict) -> PairP:
        return cls(row["scenario"], row["budget"], row["seed"], tuple(row["sizes"]), tuple(map(tuple, row["keys"])),
                   np.asarray(row["p"], dtype=np.float64), row["seconds"])


def case_keys(metrics: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    pooled = [(POOLED_TASK, e, m) for e in EXTRACTORS for m in metrics]
    per_task = [(t, e, m) for t in TASK_OPTIONS for e in EXTRACTORS for m in metrics]
    return tuple(pooled + per_task)


def judge_pair_looks(args: tuple[str, int, int, str]) -> PairP:
    """Every case's p-value at every look of one simulated pair (runs in a worker)."""
    name, budget, seed, path = args
    use_matrix_sums(True)  # the workers' BLAS is single-threaded (simulation._map_in_workers)
    start = time.process_time()
    thresholds = load_thresholds(path)
    metrics = gated_metrics(thresholds)
    scenario = STUDY_SCENARIOS[name]
    rng = np.random.default_rng(seed)
    data = {(t, e): generate_group(rng, budget, t, scenario) for t in TASK_OPTIONS for e in EXTRACTORS}
    keys = case_keys(metrics)
    sizes = tuple(look_sizes(FIRST_LOOK, budget))
    p = np.empty((len(sizes), len(keys)))
    boot_seed = seed % 2**31
    for j, n in enumerate(sizes):
        for i, (task, extractor, metric) in enumerate(keys):
            if task == POOLED_TASK:
                groups = [Group(t, data[(t, extractor)][0][:n], data[(t, extractor)][1][:n], data[(t, extractor)][2][:n])
                          for t in TASK_OPTIONS]
                rules = {t: thresholds.rule_for(t, extractor, metric) for t in TASK_OPTIONS}
                d = judge_pooled(groups, metric, rules, seed=boot_seed, alpha=ALPHA)
            else:
                base, aligned, labels = data[(task, extractor)]
                d = judge_arrays(base[:n], aligned[:n], labels[:n], metric, thresholds.rule_for(task, extractor, metric),
                                 seed=boot_seed, alpha=ALPHA)
            p[j, i] = 0.0 if d.problem else d.p_value  # a case that cannot be judged fails (never happens here)
    return PairP(name, budget, seed, sizes, keys, p, time.process_time() - start)


# ------------------------------------------------------------------------------------------------ designs


@dataclass(frozen=True)
class Outcome:
    failed: bool
    look: int  # 0-based look the pair ended at
    n_failing: int  # cases failing at that look
    pooled_first: bool  # a pooled case was among them


def shipped(pair: PairP) -> Outcome:
    """Holm over the per-task cases at each look, at verdicts.look_alpha's share of alpha."""
    cols = [i for i, k in enumerate(pair.keys) if k[0] != POOLED_TASK]
    k = len(pair.sizes)
    for j in range(k):
        level = look_alpha(ALPHA, j, k)
        n_fail = sum(x <= level for x in holm(list(pair.p[j, cols])))
        if n_fail:
            return Outcome(True, j, int(n_fail), False)
    return Outcome(False, k - 1, 0, False)


def graphical(pair: PairP, weight: float, passing: str, pooled_metrics: tuple[str, ...] | None = None) -> Outcome:
    """The graphical design with pooled share `weight`; `pooled_metrics` keeps only those metrics' pooled cases in
    the family (default: all)."""
    def keep(key: tuple[str, str, str]) -> bool:
        if key[0] != POOLED_TASK:
            return weight < 1.0
        return weight > 0.0 and (pooled_metrics is None or key[2] in pooled_metrics)

    cols = [i for i, k in enumerate(pair.keys) if keep(k)]
    keys = [pair.keys[i] for i in cols]
    graph = holm_graph(len(cols)) if weight in (0.0, 1.0) else pooled_design(keys, weight, passing,
                                                                             pooled_task=POOLED_TASK)
    res = sequential_graphical_test(pair.p[:, cols], graph, ALPHA, pair.sizes)
    pooled = any(keys[i][0] == POOLED_TASK for i in np.flatnonzero(res.rejected))
    return Outcome(bool(res.rejected.any()), res.stopped_at, int(res.rejected.sum()), pooled)


#: The pooled metrics of the "-noSCE" variants: pooled SCE (a mean of per-task plug-in SCEs) barely moves under a
#: T = 0.85 sharpening (median p 0.5 at 500 items), so its share of the pooled weight is better spent elsewhere.
NO_SCE = ("ece", "overconfidence")


def designs() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("shipped", shipped)]
    for w in WEIGHTS:
        rules = PASSING if 0.0 < w < 1.0 else ("holm",)
        for rule in rules:
            label = f"w={w:g}" + (f"/{rule}" if 0.0 < w < 1.0 else "")
            out.append((label, lambda pair, w=w, rule=rule: graphical(pair, w, rule)))
    for w in NO_SCE_WEIGHTS:
        out.append((f"w={w:g}-noSCE", lambda pair, w=w: graphical(pair, w, "holm", NO_SCE)))
    return out


# ------------------------------------------------------------------------------------------------ output


def _ci(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def report(pairs: list[PairP], only: list[str] | None = None) -> str:
    cells: dict[tuple[str, int], list[PairP]] = {}
    for pair in pairs:
        cells.setdefault((pair.scenario, pair.budget), []).append(pair)
    ds = designs()
    outcomes = {key: {name: [f(p) for p in ps] for name, f in ds} for key, ps in cells.items()}
    main = [name for name, _ in ds if "/matched" not in name and (not only or name.replace("/holm", "") in only)]
    lines = [f"per-pair share failing, % [95 % Clopper-Pearson], alpha {ALPHA}, looks {FIRST_LOOK}, doubling, budget; "
             "pairs in the last column (pair-level results of /holm and /matched are identical: initial weights decide)",
             "| scenario | kind | items | " + " | ".join(n.replace("/holm", "") for n in main) + " | pairs |",
             "|---|---|---|" + "---|" * len(main) + "---|"]
    for (name, budget), ps in cells.items():
        sc = STUDY_SCENARIOS[name]
        row = [_ci(sum(o.failed for o in outcomes[(name, budget)][d]), len(ps)) for d in main]
        lines.append(f"| {sc.label} | {sc.kind} | {budget} | " + " | ".join(row) + f" | {len(ps)} |")
    lines += ["", "damage scenarios: mean share of the budget used / share of failing pairs where a pooled case failed "
              "/ mean cases failing at the stopping look (of failing pairs), per passing rule",
              "| scenario | items | design | budget used | pooled among failures | cases failing (holm / matched) |",
              "|---|---|---|---|---|---|"]
    for (name, budget), ps in cells.items():
        if STUDY_SCENARIOS[name].kind != "damage":
            continue
        for d in main:
            outs = outcomes[(name, budget)][d]
            used = np.mean([ps[i].sizes[o.look] / budget for i, o in enumerate(outs)])
            failing = [o for o in outs if o.failed]
            pooled = f"{100 * np.mean([o.pooled_first for o in failing]):.0f} %" if failing else "-"
            counts = f"{np.mean([o.n_failing for o in failing]):.1f}" if failing else "-"
            if "/holm" in d:
                alt = [o for o in outcomes[(name, budget)][d.replace("/holm", "/matched")] if o.failed]
                counts += f" / {np.mean([o.n_failing for o in alt]):.1f}" if alt else " / -"
            lines.append(f"| {name} | {budget} | {d.replace('/holm', '')} | {100 * used:.0f} % | {pooled} | {counts} |")
    cpu = sum(p.seconds for p in pairs)
    lines.append(f"\n{len(pairs)} pairs, {cpu:.0f} s of CPU ({cpu / max(len(pairs), 1):.1f} s per pair)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument("--out", default="/tmp/pooling_study.json", help="where the p-values are kept (JSON)")
    parser.add_argument("--reanalyse", metavar="PKL", nargs="+", help="print the tables from saved runs, computing "
                        "nothing")
    parser.add_argument("--scenarios", nargs="+", help="run only these scenarios of the plan (same seeds as in the "
                        "whole plan)")
    parser.add_argument("--budgets", nargs="+", type=int, help="run only these budgets of the plan")
    parser.add_argument("--designs", nargs="+", help="show only these designs (e.g. shipped w=0 w=0.3-noSCE)")
    parser.add_argument("--thresholds", default=str(SHIPPED))
    args = parser.parse_args(argv)
    if args.reanalyse:
        loaded: list[PairP] = []
        for path in args.reanalyse:
            loaded += [PairP.from_json(row) for row in json.loads(Path(path).read_text())]
        print(report(loaded, args.designs))
        return 0
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    pairs: list[PairP] = []
    start = time.time()
    for c, (name, budgets) in enumerate(plan.items()):
        if args.scenarios and name not in args.scenarios:
            continue
        for budget, reps in budgets.items():
            if args.budgets and budget not in args.budgets:
                continue
            tasks = [(name, budget, args.seed * 1_000_003 + budget * 1009 + 7919 * c + r, args.thresholds)
                     for r in range(reps)]
            cell_start = time.time()
            pairs += _map_in_workers(judge_pair_looks, tasks, args.jobs)
            Path(args.out).write_text(json.dumps([pair.to_json() for pair in pairs]))
            print(f"[{time.time() - start:6.0f} s] {name} at {budget}: {reps} pairs in {time.time() - cell_start:.0f} s",
                  flush=True)
    print(report(pairs, args.designs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The gate's decision rule measured by simulation: false alarms per pair, power per case and per pair.

A simulated PAIR is what the gate judges for one base/aligned pair with the default selection: 6 tasks x 3
extractors = 18 (task, extractor) groups of items, each judged on the gated metrics of ``thresholds.toml``
(ECE, SCE, over-confidence: 54 cases) through ``verdicts.judge_arrays`` and ``verdicts.apply_family``, the
gate's own code, with the shipped rules and policy. Groups are independent draws (own items, own noise).

Items (reference notes, section 7): gold y uniform over the item's K options, a model sees
``z = 1.2 e_y + eps``, eps ~ N(0, I), and outputs ``softmax(1.2 z / T)``: at T = 1 the exact posterior
(perfectly calibrated, ~62 % accuracy at K = 4), T < 1 sharper (over-confident), T > 1 under-confident.
The aligned model's noise is ``rho eps_base + sqrt(1 - rho^2) eta`` (rho = 0.9 stands in for a fine-tune of
the same base). Each group's K follows its task: PIQA 2, HellaSwag / MedMCQA / MMLU 4, ARC-Easy a mix of
4-option items and 10 % 5-option items, padded to 5 with probability 0 as ``scoring.TaskScores.probs`` does
(so SCE averages over K = 5 columns there).

Scenarios: nulls (the aligned model is exactly as calibrated as the base, in distribution): equal
calibration with independent and 0.9-correlated noise, an over-confident (T = 0.7) and an under-confident
(T = 1.4) base with the aligned model equally miscalibrated; alternatives: the calibrated base sharpened at
T = 0.7 and T = 0.85 on every task (rho = 0.9).

``python -m calib_checks simulate [--full]`` prints the figures that docs/GATE.md and thresholds.toml quote;
tests/test_threshold_simulation.py runs a smaller study and asserts the targets.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calib_checks.metrics import METRICS, normal_quantile, normal_sf
from calib_checks.thresholds import GatePolicy, Thresholds, load_thresholds
from calib_checks.verdicts import CaseResult, apply_family, case_from_decision, judge_arrays

__all__ = ["ALTERNATIVES", "NULLS", "SCENARIOS", "SIZES", "TASK_OPTIONS", "Scenario", "Study", "clopper_pearson", "format_study",
           "generate_group", "judge_pair", "main", "run_study", "true_changes"]

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"
BETA = 1.2
EXTRACTORS = ("continuation-sum", "continuation-min", "choice")
SIZES = (200, 500, 1000, 2000)
#: Task -> (option counts, their shares); the largest is the padded K.
TASK_OPTIONS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "arc_easy": ((4, 5), (0.9, 0.1)),
    "hellaswag": ((4,), (1.0,)),
    "medmcqa": ((4,), (1.0,)),
    "mmlu_stem": ((4,), (1.0,)),
    "mmlu_humanities": ((4,), (1.0,)),
    "piqa": ((2,), (1.0,)),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    null: bool
    base_temperature: float = 1.0
    aligned_temperature: float = 1.0
    rho: float = 0.9
    tasks: tuple[str, ...] = tuple(TASK_OPTIONS)  # the tasks whose aligned model gets aligned_temperature


NULLS = (
    Scenario("equal-indep", "equal calibration, independent noise", True, rho=0.0),
    Scenario("equal-rho0.9", "equal calibration, noise correlated 0.9", True),
    Scenario("over-base", "over-confident base (T=0.7), aligned equally", True, 0.7, 0.7),
    Scenario("under-base", "under-confident base (T=1.4), aligned equally", True, 1.4, 1.4),
)
ALTERNATIVES = (
    Scenario("T0.7", "sharpened T=0.7, rho 0.9", False, 1.0, 0.7),
    Scenario("T0.85", "sharpened T=0.85, rho 0.9", False, 1.0, 0.85),
)
SCENARIOS = {s.name: s for s in NULLS + ALTERNATIVES}


def _softmax_masked(logits: np.ndarray, present: np.ndarray) -> np.ndarray:
    z = np.where(present, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.where(present, np.exp(z), 0.0)
    return e / e.sum(axis=1, keepdims=True)


def generate_group(rng: np.random.Generator, n_items: int, task: str, scenario: Scenario
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base probs, aligned probs, labels) of one simulated (task, extractor) group; probs (N, K_max)."""
    counts, shares = TASK_OPTIONS[task]
    k_max = max(counts)
    k_item = rng.choice(np.array(counts), size=n_items, p=np.array(shares)) if len(counts) > 1 else \
        np.full(n_items, counts[0])
    present = np.arange(k_max)[None, :] < k_item[:, None]
    labels = np.floor(rng.random(n_items) * k_item).astype(np.int64)
    signal = BETA * (labels[:, None] == np.arange(k_max)[None, :])
    eps = rng.standard_normal((n_items, k_max))
    eta = rng.standard_normal((n_items, k_max))
    eps_aligned = scenario.rho * eps + math.sqrt(1.0 - scenario.rho**2) * eta
    t_aligned = scenario.aligned_temperature if task in scenario.tasks else scenario.base_temperature
    base = _softmax_masked(BETA * (signal + eps) / scenario.base_temperature, present)
    aligned = _softmax_masked(BETA * (signal + eps_aligned) / t_aligned, present)
    return base, aligned, labels


#: The metrics the gate selects by default and thresholds.toml gates (the others are reported only).
DEFAULT_GATED = ("ece", "sce", "overconfidence")


def gated_metrics(thresholds: Thresholds, selected: Sequence[str] = DEFAULT_GATED) -> tuple[str, ...]:
    """The `selected` metrics that thresholds.toml gates on every task and extractor of the simulated pair."""
    return tuple(m for m in selected
                 if all(thresholds.rule_for(t, e, m).gate for t in TASK_OPTIONS for e in EXTRACTORS))


def judge_pair(scenario: Scenario, n_items: int, thresholds: Thresholds, seed: int,
               policy: GatePolicy | None = None) -> list[CaseResult]:
    """All gated cases of one simulated pair, judged and family-corrected exactly as the gate does."""
    rng = np.random.default_rng(seed)
    cases = []
    for task in TASK_OPTIONS:
        for extractor in EXTRACTORS:
            base, aligned, labels = generate_group(rng, n_items, task, scenario)
            for metric in gated_metrics(thresholds):
                rule = thresholds.rule_for(task, extractor, metric)
                policy_alpha = (policy or thresholds.policy).alpha
                d = judge_arrays(base, aligned, labels, metric, rule, seed=seed % 2**31, alpha=policy_alpha)
                cases.append(case_from_decision(d, pair="sim", base="base", aligned="aligned", task=task,
                                                extractor=extractor, metric=metric, rule=rule, seed=seed))
    return apply_family(cases, policy or thresholds.policy)


# ------------------------------------------------------------------------------------------------ figures


def _binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial proportion k/n (bisection on the binomial CDF)."""
    a = (1.0 - confidence) / 2.0

    def solve(target: float, kk: int) -> float:  # p with P(X <= kk; p) = target (decreasing in p)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2.0
            if _binom_cdf(kk, n, mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2.0

    lower = 0.0 if k == 0 else solve(1.0 - a, k - 1)
    upper = 1.0 if k == n else solve(a, k)
    return lower, upper


@dataclass
class Cell:
    """The cases of `reps` simulated pairs of one scenario at one size."""

    scenario: Scenario
    n_items: int
    reps: int
    records: list[tuple] = field(default_factory=list)  # (rep, task, extractor, metric, K, verdict, p, p_adj, w, se, upper, margin)
    seconds: float = 0.0

    def pairs_failing(self) -> int:
        return len({r[0] for r in self.records if r[5] == "fail"})

    def share(self, verdict: str, metric: str | None = None) -> float:
        rows = [r for r in self.records if metric is None or r[3] == metric]
        return sum(r[5] == verdict for r in rows) / max(len(rows), 1)


@dataclass
class Study:
    cells: dict[tuple[str, int], Cell]
    metrics: tuple[str, ...]
    policy: GatePolicy
    truths: dict[tuple[str, str, str], float]

    def cell(self, scenario: str, n: int) -> Cell:
        return self.cells[(scenario, n)]


def true_changes(scenario: Scenario, metrics: Sequence[str], n_items: int = 400_000, seed: int = 7
                 ) -> dict[tuple[str, str], float]:
    """(task, metric) -> the population change (plug-in on `n_items` items, rho = 0; 15 bins)."""
    out = {}
    flat = Scenario(scenario.name, scenario.label, scenario.null, scenario.base_temperature,
                    scenario.aligned_temperature, 0.0, scenario.tasks)
    for task in ("arc_easy", "hellaswag", "piqa"):
        base, aligned, labels = generate_group(np.random.default_rng(seed), n_items, task, flat)
        for metric in metrics:
            f = METRICS[metric]
            kw = {"n_bins": 15} if f.binned else {}
            out[(task, metric)] = f.function(aligned, labels, **kw) - f.function(base, labels, **kw)
    for task in TASK_OPTIONS:
        if task not in ("arc_easy", "hellaswag", "piqa"):
            for metric in metrics:
                out[(task, metric)] = out[("hellaswag", metric)]
    return out


_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_cell(args: tuple[Scenario, int, int, int, str]) -> Cell:
    from calib_checks.metrics import use_matrix_sums

    scenario, n, reps, seed, path = args
    use_matrix_sums(True)  # this worker's BLAS is single-threaded (run_study)
    thresholds = load_thresholds(path)
    start = time.process_time()
    cell = Cell(scenario, n, reps)
    for rep in range(reps):
        for c in judge_pair(scenario, n, thresholds, seed=seed * 1_000_003 + n * 1009 + rep):
            cell.records.append((rep, c.task, c.extractor, c.metric, c.n_options, c.verdict, c.p_value, c.p_adjusted,
                                 c.worsening, c.se, c.compared, c.margin))
    cell.seconds = time.process_time() - start
    return cell


def run_study(plan: dict[str, dict[int, int]], thresholds_path: str | Path = SHIPPED, seed: int = 0, jobs: int = 1,
              truth_items: int = 400_000) -> Study:
    """Simulate `plan` = {scenario name: {items per task: repetitions}} through the shipped rules."""
    thresholds = load_thresholds(thresholds_path)
    metrics = gated_metrics(thresholds)
    tasks = [(SCENARIOS[name], n, reps, seed + i, str(thresholds_path))
             for i, (name, sizes) in enumerate(plan.items()) for n, reps in sizes.items()]
    # Fresh worker processes with single-threaded BLAS: the bootstrap's small matrix products are 5x slower
    # in CPU time when OpenBLAS spreads them over threads (and they would crowd a shared machine).
    import multiprocessing
    import os

    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        with multiprocessing.get_context("spawn").Pool(max(1, jobs)) as pool:
            cells = pool.map(_run_cell, tasks, chunksize=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    truth: dict[tuple[str, str, str], float] = {}
    if truth_items:
        for name in plan:
            for (task, metric), v in true_changes(SCENARIOS[name], metrics, truth_items).items():
                truth[(name, task, metric)] = v
    return Study({(c.scenario.name, c.n_items): c for c in cells}, metrics, thresholds.policy, truth)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def format_study(study: Study) -> str:
    """The tables docs/GATE.md quotes."""
    lines = []
    sizes = sorted({n for _, n in study.cells})
    names = list(dict.fromkeys(s for s, _ in study.cells))
    m = len(study.metrics) * len(TASK_OPTIONS) * len(EXTRACTORS)
    lines.append(f"policy: {study.policy.to_json()}; {m} gated cases per pair ({', '.join(study.metrics)} x "
                 f"{len(TASK_OPTIONS)} tasks x {len(EXTRACTORS)} extractors)")
    lines.append("")
    lines.append("per-pair rate of failing ANY case (false alarm for nulls, power for alternatives), with its 95 % "
                 "Clopper-Pearson interval; pairs simulated in brackets")
    lines.append("| scenario | " + " | ".join(f"{n} items" for n in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for name in names:
        cells = []
        for n in sizes:
            c = study.cells.get((name, n))
            cells.append("" if c is None else f"{_ci(c.pairs_failing(), c.reps)} ({c.reps})")
        lines.append(f"| {SCENARIOS[name].label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("per-case outcome shares pass / inconclusive / fail, by metric")
    lines.append("| scenario | metric | " + " | ".join(f"{n} items" for n in sizes) + " |")
    lines.append("|---|---|" + "---|" * len(sizes))
    for name in names:
        for metric in study.metrics:
            cells = []
            for n in sizes:
                c = study.cells.get((name, n))
                cells.append("" if c is None else " / ".join(
                    f"{100 * c.share(v, metric):.0f}" for v in ("pass", "inconclusive", "fail")))
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("per-case power (share of cases failing) by metric and K, alternatives")
    lines.append("| scenario | metric | K | " + " | ".join(f"{n} items" for n in sizes) + " |")
    lines.append("|---|---|---|" + "---|" * len(sizes))
    for name in names:
        if SCENARIOS[name].null:
            continue
        for metric in study.metrics:
            for k in (2, 4, 5):
                cells = []
                for n in sizes:
                    c = study.cells.get((name, n))
                    rows = [] if c is None else [r for r in c.records if r[3] == metric and r[4] == k]
                    cells.append("" if not rows else _pct(sum(r[5] == "fail" for r in rows) / len(rows)))
                lines.append(f"| {name} | {metric} | {k} | " + " | ".join(cells) + " |")
    lines.append("")
    level = study.policy.alpha / m
    lines.append(f"calibration of the one-sided normal p-value against the TRUE change (margin set to it): share of "
                 f"cases with p <= 0.025 and p <= alpha/m = {level:.1e} (nominal: those levels), and coverage of the "
                 "upper end of the 95 % interval (nominal 97.5 %)")
    lines.append("| scenario | metric | items | p <= 0.025 | p <= alpha/m | upper end >= truth | mean se |")
    lines.append("|---|---|---|---|---|---|---|")
    for name in names:
        for metric in study.metrics:
            for n in sizes:
                c = study.cells.get((name, n))
                if c is None or not study.truths:
                    continue
                truth = np.array([study.truths[(name, r[1], metric)] for r in c.records if r[3] == metric])
                w = np.array([r[8] for r in c.records if r[3] == metric])
                se = np.array([r[9] for r in c.records if r[3] == metric])
                upper = np.array([r[10] for r in c.records if r[3] == metric])
                with np.errstate(divide="ignore", invalid="ignore"):
                    p = np.array([normal_sf(x) if math.isfinite(x) else (0.0 if x > 0 else 1.0)
                                  for x in (w - truth) / se])
                lines.append(f"| {name} | {metric} | {n} | {_pct(np.mean(p <= 0.025))} | {_pct(np.mean(p <= level))}"
                             f" | {_pct(np.mean(upper >= truth))} | {se.mean():.4f} |")
    lines.append("")
    null_cells = [c for c in study.cells.values() if c.scenario.null]
    if null_cells and study.truths:
        lines.append(f"max over a pair's {m} cases of z = (worsening - true change) / se, null pairs: 95th percentile "
                     f"(Bonferroni critical value z_(1-alpha/m) = {normal_quantile(1 - level):.2f})")
        for c in null_cells:
            zmax = {}
            for r in c.records:
                z = (r[8] - study.truths[(c.scenario.name, r[1], r[3])]) / r[9] if r[9] else -math.inf
                zmax[r[0]] = max(zmax.get(r[0], -math.inf), z)
            vals = np.array(list(zmax.values()))
            lines.append(f"  {c.scenario.name} n={c.n_items}: {np.quantile(vals, 0.95):.2f} over {vals.size} pairs")
    total = sum(c.seconds for c in study.cells.values())
    lines.append(f"CPU time: {total:.0f} s")
    return "\n".join(lines)


QUICK_PLAN: dict[str, dict[int, int]] = {
    "equal-indep": {200: 12},
    "equal-rho0.9": {200: 25, 500: 12},
    "over-base": {200: 10},
    "under-base": {200: 10},
    "T0.7": {200: 6, 500: 10},
    "T0.85": {500: 6},
}
FULL_PLAN: dict[str, dict[int, int]] = {
    "equal-indep": {200: 200, 500: 100, 1000: 50, 2000: 25},
    "equal-rho0.9": {200: 300, 500: 200, 1000: 100, 2000: 50},
    "over-base": {200: 100, 500: 50, 1000: 25},
    "under-base": {200: 100, 500: 50, 1000: 25},
    "T0.7": {200: 60, 500: 60, 1000: 30, 2000: 15},
    "T0.85": {200: 40, 500: 40, 1000: 30, 2000: 15},
}

CLI_HELP = "reprint the measured false-alarm and power figures of the decision rule"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="the full study docs/GATE.md quotes (about 15 minutes "
                        "of CPU); default: the quick study of the test suite")
    parser.add_argument("--thresholds", default=str(SHIPPED), help="rules file (default: the shipped thresholds.toml)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole study (default 0)")


def run_cli(args: argparse.Namespace) -> int:
    study = run_study(FULL_PLAN if args.full else QUICK_PLAN, args.thresholds, args.seed, args.jobs)
    print(format_study(study))
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calib_checks simulate", description=CLI_HELP)
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

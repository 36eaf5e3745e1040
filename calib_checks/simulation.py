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

Scenarios (``SCENARIOS``), by kind (``KINDS``: what a failing pair means):

* null, a failing pair is a false alarm: equal calibration with independent and 0.9-correlated noise, an
  over-confident (T = 0.7) and an under-confident (T = 1.4) base with the aligned model equally miscalibrated,
  an aligned model that lost accuracy (signal 1.0 instead of 1.2) but is as calibrated (exactly), and equal
  calibration with both models' probabilities stored in bf16 (rows sum to 1 +- 2^-8; top options tie);
* improvement, a failing pair blocks a better calibrated release: an under-confident (T = 1.4) or
  over-confident (T = 0.7) base whose aligned model is calibrated, and an under-confident base (T = 1.2)
  whose aligned model overshoots to a smaller over-confidence (T = 0.85; |over-confidence|, ECE and SCE all
  fall);
* damage, a failing pair is a detection: the calibrated base sharpened at T = 0.7 and T = 0.85 on every task,
  made under-confident (T = 1.4), and sharpened at T = 0.7 on one task only (MMLU STEM).

``python -m calib_checks simulate [--full]`` prints the figures that docs/GATE.md and thresholds.toml quote;
tests/test_threshold_simulation.py checks, on fixed seeds, the properties of the rule that hold with
overwhelming probability at small sizes.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from calib_checks.errors import CalibChecksError
from calib_checks.metrics import METRICS, normal_quantile, normal_sf
from calib_checks.sampling import FIRST_LOOK, look_sizes
from calib_checks.selection import DEFAULT_EXTRACTORS, DEFAULT_METRICS, POOLED_TASK, Case
from calib_checks.pooled import Group, judge_pooled
from calib_checks.sequential import Ending, judge_in_looks
from calib_checks.thresholds import GatePolicy, Thresholds, load_thresholds, pooled_rule
from calib_checks.verdicts import CaseResult, case_from_decision, judge_arrays

__all__ = ["ALTERNATIVES", "IMPROVEMENTS", "KINDS", "NULLS", "SCENARIOS", "SIZES", "TASK_OPTIONS", "CaseRecord", "Cell",
           "Scenario", "Study", "clopper_pearson", "format_study", "generate_group", "judge_pair",
           "round_bf16", "run_study", "true_worsening"]

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"
BETA = 1.2
EXTRACTORS = DEFAULT_EXTRACTORS  # the gate's default selection
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


#: Scenario kinds: what a failing pair means.
KINDS = {
    "null": "false alarm (the aligned model is as well calibrated as the base)",
    "improvement": "blocked improvement (the aligned model is better calibrated)",
    "damage": "detection (the aligned model is worse calibrated)",
}


@dataclass(frozen=True)
class Scenario:
    """One kind of simulated pair. `kind` is a key of KINDS; the aligned model differs from the base by its
    temperature on `tasks`, its signal strength (< BETA: less accurate, still calibrated at T = 1) and its noise
    correlation `rho`; `storage = "bfloat16"` rounds both models' probabilities to bf16, as a scores file
    written in that precision holds them (rows then sum to 1 +- 2^-8, and top options tie)."""

    name: str
    label: str
    kind: str
    base_temperature: float = 1.0
    aligned_temperature: float = 1.0
    rho: float = 0.9
    tasks: tuple[str, ...] = tuple(TASK_OPTIONS)  # the tasks whose aligned model gets aligned_temperature
    aligned_signal: float = BETA
    storage: str = "float64"

    @property
    def null(self) -> bool:
        return self.kind == "null"


NULLS = (
    Scenario("equal-indep", "equal calibration, independent noise", "null", rho=0.0),
    Scenario("equal-rho0.9", "equal calibration, noise correlated 0.9", "null"),
    Scenario("over-base", "over-confident base (T=0.7), aligned equally", "null", 0.7, 0.7),
    Scenario("under-base", "under-confident base (T=1.4), aligned equally", "null", 1.4, 1.4),
    Scenario("acc-loss", "aligned less accurate (signal 1.0 vs 1.2), both calibrated", "null", aligned_signal=1.0),
    Scenario("bf16", "equal calibration, probabilities stored in bf16", "null", storage="bfloat16"),
)
IMPROVEMENTS = (
    Scenario("under-to-cal", "under-confident base (T=1.4) -> calibrated aligned", "improvement", 1.4, 1.0),
    Scenario("over-to-cal", "over-confident base (T=0.7) -> calibrated aligned", "improvement", 0.7, 1.0),
    Scenario("overshoot", "under-confident base (T=1.2) -> less over-confident aligned (T=0.85)", "improvement",
             1.2, 0.85),
)
ALTERNATIVES = (
    Scenario("T0.5", "sharpened T=0.5, rho 0.9", "damage", 1.0, 0.5),
    Scenario("T0.7", "sharpened T=0.7, rho 0.9", "damage", 1.0, 0.7),
    Scenario("T0.8", "sharpened T=0.8, rho 0.9", "damage", 1.0, 0.8),
    Scenario("T0.85", "sharpened T=0.85, rho 0.9", "damage", 1.0, 0.85),
    Scenario("T1.4", "calibrated base -> under-confident aligned (T=1.4)", "damage", 1.0, 1.4),
    Scenario("one-task", "sharpened T=0.7 on mmlu_stem only", "damage", 1.0, 0.7, tasks=("mmlu_stem",)),
)
SCENARIOS = {s.name: s for s in NULLS + IMPROVEMENTS + ALTERNATIVES}


def round_bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest bfloat16 (ties to even), returned as float64 (finite, non-negative inputs)."""
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32).astype(np.float64)


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
    onehot = (labels[:, None] == np.arange(k_max)[None, :]).astype(np.float64)
    eps = rng.standard_normal((n_items, k_max))
    eta = rng.standard_normal((n_items, k_max))
    eps_aligned = scenario.rho * eps + math.sqrt(1.0 - scenario.rho**2) * eta
    changed = task in scenario.tasks
    t_aligned = scenario.aligned_temperature if changed else scenario.base_temperature
    s_aligned = scenario.aligned_signal if changed else BETA
    base = _softmax_masked(BETA * (BETA * onehot + eps) / scenario.base_temperature, present)
    aligned = _softmax_masked(s_aligned * (s_aligned * onehot + eps_aligned) / t_aligned, present)
    if scenario.storage == "bfloat16":
        return round_bf16(base), round_bf16(aligned), labels
    return base, aligned, labels


def gated_metrics(thresholds: Thresholds, selected: Sequence[str] = DEFAULT_METRICS) -> tuple[str, ...]:
    """The `selected` metrics (default: the gate's default selection) that thresholds.toml gates on every task
    and extractor of the simulated pair."""
    return tuple(m for m in selected
                 if all(thresholds.rule_for(t, e, m).gate for t in TASK_OPTIONS for e in EXTRACTORS))


class SimulatedPair:
    """One simulated pair's items (drawn once at `budget` per group, in random order, so the first n items are a
    random sample as the gate's seeded order is), its expected cases (the gate's: pooled cases first when the
    policy gives them weight, then task x extractor x gated metric) and `judge(case, n)`, the case judged alone
    on the first n items by the gate's own code (`verdicts.judge_arrays`, `pooled.judge_pooled`)."""

    def __init__(self, scenario: Scenario, budget: int, thresholds: Thresholds, seed: int,
                 policy: GatePolicy | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.thresholds, self.seed = thresholds, seed
        self.policy = policy or thresholds.policy
        self.groups = {(task, extractor): generate_group(rng, budget, task, scenario)
                       for task in TASK_OPTIONS for extractor in EXTRACTORS}
        metrics = gated_metrics(thresholds)
        pooled = [Case("sim", POOLED_TASK, e, m) for e in EXTRACTORS for m in metrics
                  if m in self.policy.pooled_metrics] if self.policy.pooled_weight > 0 else []
        self.cases = pooled + [Case("sim", task, extractor, metric) for task, extractor in self.groups
                               for metric in metrics]

    def judge(self, case: Case, n: int) -> CaseResult:
        tasks = tuple(TASK_OPTIONS) if case.task == POOLED_TASK else (case.task,)
        rules = [self.thresholds.rule_for(t, case.extractor, case.metric) for t in tasks]
        seed = self.seed % 2**31
        if case.task == POOLED_TASK:
            groups = [Group(t, *(a[:n] for a in self.groups[(t, case.extractor)])) for t in tasks]
            d, rule = judge_pooled(groups, case.metric, rules, seed), pooled_rule(rules)
        else:
            base, aligned, labels = self.groups[(case.task, case.extractor)]
            d, rule = judge_arrays(base[:n], aligned[:n], labels[:n], case.metric, rules[0], seed), rules[0]
        return case_from_decision(d, pair="sim", base="base", aligned="aligned", task=case.task,
                                  extractor=case.extractor, metric=case.metric, rule=rule, seed=self.seed)

    def run(self, looks: list[int]) -> tuple[dict[Case, CaseResult], Ending]:
        """Every case judged by the gate's loop (`sequential.judge_in_looks`) at these looks."""
        final, endings = judge_in_looks(self.cases, {"sim": "sim"}, {"sim": looks}, self.judge, self.policy)
        return final, endings["sim"]


def judge_pair(scenario: Scenario, n_items: int, thresholds: Thresholds, seed: int,
               policy: GatePolicy | None = None) -> list[CaseResult]:
    """All gated cases of one simulated pair judged at once on `n_items` per group, family-corrected exactly as
    the gate does."""
    pair = SimulatedPair(scenario, n_items, thresholds, seed, policy)
    final, _ = pair.run([n_items])
    return [final[c] for c in pair.cases]


@dataclass(frozen=True)
class SequentialPair:
    """One simulated pair judged in looks as the gate does (`Gate.judge`), and by the fixed-size rule on the same
    items: whether each failed, the look the sequential judgement ended at and the items per task it used."""

    failed: bool
    fixed_failed: bool
    stopped_at: int
    n_looks: int
    items: int


def judge_pair_sequential(scenario: Scenario, budget: int, thresholds: Thresholds, seed: int,
                          first_look: int = FIRST_LOOK, policy: GatePolicy | None = None) -> SequentialPair:
    """A pair judged by the gate's own loop in looks of `sampling.look_sizes` items, and by the fixed-size rule
    (one look of every item) on the same items (`SimulatedPair`)."""
    pair = SimulatedPair(scenario, budget, thresholds, seed, policy)
    looks = look_sizes(first_look, budget)
    final, ending = pair.run(looks)
    fixed, _ = pair.run([budget])
    return SequentialPair(any(r.verdict == "fail" for r in final.values()),
                          any(r.verdict == "fail" for r in fixed.values()), ending.stopped_at, len(looks), ending.items)


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


class CaseRecord(NamedTuple):
    """What the study keeps of one judged case (CaseResult's fields of the same names)."""

    rep: int
    task: str
    extractor: str
    metric: str
    n_options: int
    verdict: str
    p_value: float
    p_adjusted: float
    worsening: float
    se: float
    compared: float
    margin: float
    change: float
    sign_test: str | None


@dataclass
class Cell:
    """The cases of `reps` simulated pairs of one scenario at one size."""

    scenario: Scenario
    n_items: int
    reps: int
    records: list[CaseRecord] = field(default_factory=list)
    seconds: float = 0.0

    def pairs_failing(self, metric: str | None = None) -> int:
        """Pairs with a failing case (of `metric`, if given)."""
        return len({r.rep for r in self.records if r.verdict == "fail" and metric in (None, r.metric)})

    def share(self, verdict: str, metric: str | None = None) -> float:
        rows = [r for r in self.records if metric in (None, r.metric)]
        return sum(r.verdict == verdict for r in rows) / max(len(rows), 1)


@dataclass
class Study:
    cells: dict[tuple[str, int], Cell]
    metrics: tuple[str, ...]
    policy: GatePolicy
    truths: dict[tuple[str, str, str], float]  # (scenario, task, metric) -> the true worsening

    def cell(self, scenario: str, n: int) -> Cell:
        return self.cells[(scenario, n)]


def true_worsening(scenario: Scenario, metrics: Sequence[str], n_items: int = 400_000, seed: int = 7
                   ) -> dict[tuple[str, str], float]:
    """(task, metric) -> the population worsening the gate judges (plug-in on `n_items` items, 15 bins):
    ``metric(aligned) - metric(base)``, ``|aligned| - |base|`` for a signed metric, negated for accuracy."""
    # The noise correlation changes no population value; with rho = 1 both models see the same items and
    # noise, so a task the scenario leaves alone has a worsening of exactly 0 and the others less noise.
    same_noise = replace(scenario, rho=1.0)
    out: dict[tuple[str, str], float] = {}
    computed: dict[tuple[tuple[tuple[int, ...], tuple[float, ...]], bool], dict[str, float]] = {}
    for task, options in TASK_OPTIONS.items():
        key = (options, task in scenario.tasks)  # tasks alike in options and in the change share their values
        if key not in computed:
            base, aligned, labels = generate_group(np.random.default_rng(seed), n_items, task, same_noise)
            computed[key] = {}
            for metric in metrics:
                spec = METRICS[metric]
                kw = {"n_bins": 15} if spec.binned else {}
                b, a = spec.function(base, labels, **kw), spec.function(aligned, labels, **kw)
                w = abs(a) - abs(b) if spec.signed else a - b
                computed[key][metric] = w if spec.higher_is_worse else -w
        for metric in metrics:
            out[(task, metric)] = computed[key][metric]
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
            cell.records.append(CaseRecord(rep, c.task, c.extractor, c.metric, c.n_options, c.verdict, c.p_value,
                                           c.p_adjusted, c.worsening, c.se, c.compared, c.margin, c.change,
                                           c.sign_test))
    cell.seconds = time.process_time() - start
    return cell


def _map_in_workers(func: Callable[[Any], Any], tasks: list, jobs: int) -> list:
    """`func` over `tasks` in `jobs` fresh worker processes with single-threaded BLAS: the bootstrap's small matrix
    products are 5x slower in CPU time when OpenBLAS spreads them over threads (and they would crowd a shared
    machine)."""
    import multiprocessing
    import os

    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        with multiprocessing.get_context("spawn").Pool(max(1, jobs)) as pool:
            return pool.map(func, tasks, chunksize=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_study(plan: dict[str, dict[int, int]], thresholds_path: str | Path = SHIPPED, seed: int = 0, jobs: int = 1,
              truth_items: int = 400_000) -> Study:
    """Simulate `plan` = {scenario name: {items per task: repetitions}} through the shipped rules."""
    thresholds = load_thresholds(thresholds_path)
    metrics = gated_metrics(thresholds)
    tasks = [(SCENARIOS[name], n, reps, seed + i, str(thresholds_path))
             for i, (name, sizes) in enumerate(plan.items()) for n, reps in sizes.items()]
    cells = _map_in_workers(_run_cell, tasks, jobs)
    truth: dict[tuple[str, str, str], float] = {}
    if truth_items:
        for name in plan:
            for (task, metric), v in true_worsening(SCENARIOS[name], metrics, truth_items).items():
                truth[(name, task, metric)] = v
    return Study({(c.scenario.name, c.n_items): c for c in cells}, metrics, thresholds.policy, truth)


def _run_sequential_cell(args: tuple[Scenario, int, int, int, str]) -> tuple[str, int, list[SequentialPair], float]:
    from calib_checks.metrics import use_matrix_sums

    scenario, budget, reps, seed, path = args
    use_matrix_sums(True)  # this worker's BLAS is single-threaded (run_study)
    thresholds = load_thresholds(path)
    start = time.process_time()
    pairs = [judge_pair_sequential(scenario, budget, thresholds, seed=seed * 1_000_003 + budget * 1013 + rep)
             for rep in range(reps)]
    return scenario.name, budget, pairs, time.process_time() - start


def run_sequential_study(plan: dict[str, dict[int, int]], thresholds_path: str | Path = SHIPPED, seed: int = 0,
                         jobs: int = 1) -> dict[tuple[str, int], tuple[list[SequentialPair], float]]:
    """Simulate `plan` = {scenario: {budget per task: repetitions}} judged in looks and by the fixed-size rule."""
    # a scenario's seed depends on its name only, so a part of the plan (--scenarios) draws the same pairs
    tasks = [(SCENARIOS[name], n, reps, seed + 101 + sorted(SCENARIOS).index(name), str(thresholds_path))
             for name, sizes in plan.items() for n, reps in sizes.items()]
    cells = _map_in_workers(_run_sequential_cell, tasks, jobs)
    return {(name, budget): (pairs, seconds) for name, budget, pairs, seconds in cells}


def format_sequential(cells: dict[tuple[str, int], tuple[list[SequentialPair], float]]) -> str:
    """The sequential looks' table docs/GATE.md quotes: per scenario and budget, the share of pairs failing when
    judged in looks and by the fixed-size rule on the same pairs, and the share of the budget the looks used."""
    lines = ["sequential looks (first look 100 items per task, doubling, O'Brien-Fleming-type spending of each "
             "case's share of alpha across looks) vs the fixed-size rule, same simulated pairs",
             "| scenario | real releases of that size (notes, section 10) | items per task (budget) | pairs failing, "
             "in looks | pairs failing, fixed rule | mean share of the budget used | pairs ended by look 1 / 2 / 3 |",
             "|---|---|---|---|---|---|---|"]
    seconds = 0.0
    for (name, budget), (pairs, cpu) in cells.items():
        seconds += cpu
        n = len(pairs)
        looks = [sum(p.stopped_at <= k for p in pairs) / n for k in (1, 2, 3)]
        lines.append(f"| {SCENARIOS[name].label} | {RELEASES.get(name, '')} | {budget} | "
                     f"{_ci(sum(p.failed for p in pairs), n)} | "
                     f"{_ci(sum(p.fixed_failed for p in pairs), n)} | "
                     f"{100 * sum(p.items / budget for p in pairs) / n:.0f} % | "
                     + " / ".join(f"{100 * x:.0f} %" for x in looks) + f" | ({n} pairs)")
    lines.append(f"CPU time: {seconds:.0f} s")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


#: Levels at which the study reports the share of null cases with p <= level (and 0.05/m, m gated cases).
LEVELS = (0.05, 0.025, 0.01)


def _null_z(study: Study, cell: Cell, record: CaseRecord) -> float:
    """(worsening - true worsening) / se of an unsigned metric's case: its normal p-value at the truth is sf(z)."""
    truth = study.truths[(cell.scenario.name, record.task, record.metric)]
    if record.se == 0.0:
        return 0.0 if record.worsening == truth else math.copysign(math.inf, record.worsening - truth)
    return (record.worsening - truth) / record.se


def format_study(study: Study) -> str:
    """The tables docs/GATE.md quotes."""
    lines = []
    sizes = sorted({n for _, n in study.cells})
    names = list(dict.fromkeys(s for s, _ in study.cells))
    m = len(study.metrics) * len(TASK_OPTIONS) * len(EXTRACTORS)
    level_m = study.policy.alpha / m
    lines.append(f"policy: {study.policy.to_json()}; {m} gated cases per pair ({', '.join(study.metrics)} x "
                 f"{len(TASK_OPTIONS)} tasks x {len(EXTRACTORS)} extractors)")
    lines.append("")
    lines.append("per-pair rate of failing ANY case, with its 95 % Clopper-Pearson interval; pairs simulated in "
                 "brackets; in braces the share of pairs with a failing over-confidence case")
    lines.append("| scenario | a failing pair is | " + " | ".join(f"{n} items" for n in sizes) + " |")
    lines.append("|---|---|" + "---|" * len(sizes))
    signed = [x for x in study.metrics if METRICS[x].signed]
    for name in names:
        cells = []
        for n in sizes:
            c = study.cells.get((name, n))
            by_signed = "".join(f" {{{100 * c.pairs_failing(x) / c.reps:.0f} %}}" for x in signed) if c else ""
            cells.append("" if c is None else f"{_ci(c.pairs_failing(), c.reps)} ({c.reps}){by_signed}")
        scenario = SCENARIOS[name]
        lines.append(f"| {scenario.label} | {KINDS[scenario.kind].split(' (')[0]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("per-case outcome shares pass / inconclusive / fail (%), by metric")
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
    lines.append("per-case power (share of the changed tasks' cases failing) by metric and K, damage scenarios")
    lines.append("| scenario | metric | K | " + " | ".join(f"{n} items" for n in sizes) + " |")
    lines.append("|---|---|---|" + "---|" * len(sizes))
    for name in names:
        scenario = SCENARIOS[name]
        if scenario.kind != "damage":
            continue
        for metric in study.metrics:
            for k in (2, 4, 5, None):
                cells = []
                for n in sizes:
                    c = study.cells.get((name, n))
                    rows = [] if c is None else [r for r in c.records if r.metric == metric and r.task in scenario.tasks
                                                 and k in (None, r.n_options)]
                    cells.append("" if not rows else _pct(sum(r.verdict == "fail" for r in rows) / len(rows)))
                if any(cells):
                    lines.append(f"| {name} | {metric} | {k or 'all'} | " + " | ".join(cells) + " |")
    lines.append("")
    null_cells = [c for c in study.cells.values() if c.scenario.null]
    if null_cells and study.truths:
        lines.append("calibration of the raw one-sided p-values on the null scenarios, pooled over them and over K: "
                     "share of cases with p <= level (nominal: the level), the count in brackets. ECE/SCE: the normal "
                     "p-value at the TRUE worsening, sf((worsening - truth) / se); signed metrics: the sign-aware "
                     "test's own p-value at the shipped margin (conservative by design)")
        heads = [f"{x:g}" for x in LEVELS] + [f"alpha/m = {level_m:.1e}"]
        lines.append("| metric | items | cases | " + " | ".join(f"p <= {h}" for h in heads) + " |")
        lines.append("|---|---|---|" + "---|" * len(heads))
        for metric in study.metrics:
            for n in sizes:
                p = []
                for c in null_cells:
                    if c.n_items != n:
                        continue
                    for r in c.records:
                        if r.metric == metric:
                            p.append(r.p_value if METRICS[metric].signed else normal_sf(_null_z(study, c, r)))
                if not p:
                    continue
                arr = np.array(p)
                rates = [f"{_pct(np.mean(arr <= x))} ({int((arr <= x).sum())})" for x in (*LEVELS, level_m)]
                lines.append(f"| {metric} | {n} | {arr.size} | " + " | ".join(rates) + " |")
        lines.append("")
        unsigned = [x for x in study.metrics if not METRICS[x].signed]
        lines.append(f"max over a pair's {len(unsigned) * len(TASK_OPTIONS) * len(EXTRACTORS)} {'/'.join(unsigned)} "
                     f"cases of z = (worsening - true worsening) / se, null pairs: 95th percentile (the first Holm / "
                     f"Bonferroni critical value z_(1-alpha/m) = {normal_quantile(1 - level_m):.2f})")
        for c in null_cells:
            zmax: dict[int, float] = {}
            for r in c.records:
                if r.metric in unsigned:
                    zmax[r.rep] = max(zmax.get(r.rep, -math.inf), _null_z(study, c, r))
            vals = np.array(list(zmax.values()))
            lines.append(f"  {c.scenario.name} n={c.n_items}: {np.quantile(vals, 0.95):.2f} over {vals.size} pairs")
    total = sum(c.seconds for c in study.cells.values())
    lines.append(f"CPU time: {total:.0f} s")
    return "\n".join(lines)


#: `simulate` without --full: about a minute of CPU, one cell per claim of the decision rule.
QUICK_PLAN: dict[str, dict[int, int]] = {
    "equal-rho0.9": {200: 20, 500: 10},
    "over-base": {200: 10},
    "acc-loss": {200: 10},
    "bf16": {200: 10},
    "under-to-cal": {500: 6},
    "over-to-cal": {500: 6},
    "T0.7": {500: 10},
    "T1.4": {500: 10},
    "one-task": {500: 5},
}
#: `simulate --full`: every figure docs/GATE.md, thresholds.toml and the README quote (about 30 minutes of CPU).
FULL_PLAN: dict[str, dict[int, int]] = {
    "equal-indep": {200: 200, 500: 100, 1000: 50, 2000: 25},
    "equal-rho0.9": {200: 300, 500: 200, 1000: 100, 2000: 50},
    "over-base": {200: 100, 500: 50, 1000: 25, 2000: 25},
    "under-base": {200: 100, 500: 50, 1000: 25, 2000: 25},
    "acc-loss": {200: 100, 500: 50, 1000: 25, 2000: 25},
    "bf16": {200: 100, 500: 50, 2000: 25},
    "under-to-cal": {200: 40, 500: 60, 2000: 30},
    "over-to-cal": {200: 40, 500: 60, 2000: 30},
    "overshoot": {500: 40, 2000: 20},
    "T0.7": {200: 40, 500: 100, 1000: 30, 2000: 15},
    "T0.85": {200: 40, 500: 60, 1000: 30, 2000: 30},
    "T1.4": {500: 100, 2000: 20},
    "one-task": {500: 40, 2000: 15},
}

#: The sequential looks' study: nulls and damage at the budgets the issue's targets name.
SEQUENTIAL_QUICK_PLAN: dict[str, dict[int, int]] = {"equal-rho0.9": {500: 4}, "T0.5": {2000: 2}, "T0.7": {500: 3}}
SEQUENTIAL_FULL_PLAN: dict[str, dict[int, int]] = {
    "equal-rho0.9": {200: 40, 500: 60, 2000: 20},
    "over-base": {500: 30},
    "acc-loss": {500: 30},
    "under-to-cal": {500: 30, 2000: 10},
    "over-to-cal": {500: 30, 2000: 10},
    "T0.5": {2000: 10},
    "T0.7": {500: 30},
    "T0.8": {500: 30},
    "T0.85": {500: 40, 2000: 15},
    "T1.4": {500: 30},
    "one-task": {500: 40, 2000: 10},
}

#: Which real releases a scenario's effect covers (reference notes, section 10: on a calibrated base, logits / T
#: moves ECE and over-confidence by about +0.04 at T = 0.85, +0.07-0.09 at 0.7, +0.13-0.16 at 0.5).
RELEASES = {
    "T0.5": "7-8B class (Llama-2-7B chat +0.33, Llama-3-8B Instruct +0.15 ECE)",
    "T0.7": "between: Llama-3-70B Instruct +0.08 ECE on MMLU-STEM",
    "T0.8": "GPT-4 after RLHF (+0.07 ECE on MMLU)",
    "T0.85": "70B class: Qwen2-72B Instruct +0.04 ECE",
    "one-task": "a regression on one task only",
}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="the full study docs/GATE.md quotes (about 30 minutes "
                        "of CPU); default: a quick study of about a minute")
    parser.add_argument("--thresholds", default=str(SHIPPED), help="rules file (default: the shipped thresholds.toml)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole study (default 0)")
    parser.add_argument("--sequential", action="store_true", help="the sequential study instead: pooled cases, "
                        "the spending across looks, early stops (with --full: the one docs/GATE.md quotes)")
    parser.add_argument("--scenarios", default=None, help="with --sequential: only these scenarios of its plan "
                        "(comma-separated names, e.g. T0.85,one-task): a part of the study, same seeds")


def run_cli(args: argparse.Namespace) -> int:
    if args.sequential:
        plan = SEQUENTIAL_FULL_PLAN if args.full else SEQUENTIAL_QUICK_PLAN
        if args.scenarios:
            chosen = args.scenarios.split(",")
            unknown = [n for n in chosen if n not in plan]
            if unknown:
                raise CalibChecksError(f"--scenarios: {unknown[0]!r} is not in the plan; choose from {', '.join(plan)}")
            plan = {n: sizes for n, sizes in plan.items() if n in chosen}
        cells = run_sequential_study(plan, args.thresholds, args.seed, args.jobs)
        print(format_sequential(cells))
        return 0
    study = run_study(FULL_PLAN if args.full else QUICK_PLAN, args.thresholds, args.seed, args.jobs,
                      truth_items=400_000 if args.full else 100_000)
    print(format_study(study))
    return 0

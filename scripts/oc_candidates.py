"""The over-confidence statistics considered for issue #21, measured through the gate's own code.

Prints, for each candidate and scenario, the share of simulated pairs failing ANY of their 54 cases, the share
failing through an over-confidence case, and the over-confidence cases' own failure rate: the comparison
docs/GATE.md quotes ("Why the over-confidence case is sign-aware"). A pair is calib_checks.simulation's (6 tasks
x 3 extractors, ECE, SCE and over-confidence under the shipped thresholds.toml, judged by
verdicts.judge_arrays and corrected by verdicts.apply_family); only the over-confidence decision differs
between candidates (each is swapped in for verdicts._sign_aware_test):

* signed   the previous rule: fail when OC_a - OC_b > margin is shown (OC = mean(conf - correct));
* abs      the change of |OC| (HELM's ece_1_bin), W = |OC_a| - |OC_b|, bootstrapped as is;
* iut_pos  fail when OC_a - OC_b > margin AND OC_a > 0 are both shown (p = max of the two);
* shipped  the shipped sign-aware test: |OC_a| - |OC_b| > margin as an intersection-union of the signed change
           and the sum on the over- or the under-confident side.

Scenarios beyond calib_checks.simulation's: `mirror`, an under-confident base (T = 1.2) against an aligned
model about as over-confident as the base is under-confident (T = 0.82): |OC| and ECE change by -0.001
(PIQA) to +0.005 (4-option tasks), within the margin, so a failing pair is a false alarm.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python scripts/oc_candidates.py [--items 500] [--pairs 30] [--seed 0]

About 10 s of CPU per pair at 500 items, 40 s at 2000.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from calib_checks import verdicts
from calib_checks.metrics import normal_quantile, normal_sf, use_matrix_sums
from calib_checks.simulation import EXTRACTORS, SCENARIOS, SHIPPED, TASK_OPTIONS, Scenario, generate_group
from calib_checks.thresholds import load_thresholds
from calib_checks.verdicts import _directed_test, _sign_aware_test, _Test, apply_family, case_from_decision, \
    judge_arrays


def signed(boot, margin, rule) -> _Test:
    return _directed_test(boot, margin, rule, True)


def abs_change(boot, margin, rule) -> _Test:
    w = abs(boot.aligned_value) - abs(boot.base_value)
    reps = np.abs(boot.aligned_replicates) - np.abs(boot.base_replicates)
    centre, se = 2.0 * w - reps.mean(), reps.std(ddof=1)
    return _Test(worsening=centre, compared=centre + normal_quantile((1 + rule.confidence) / 2) * se, se=se,
                 p_value=normal_sf((centre - margin) / se))


def iut_positive(boot, margin, rule) -> _Test:
    change = _directed_test(boot, margin, rule, True)
    return _Test(worsening=change.worsening, compared=change.compared, se=change.se,
                 p_value=max(change.p_value, boot.contrast(1, 0).p_value(0.0)))


CANDIDATES = {"signed": signed, "abs": abs_change, "iut_pos": iut_positive, "shipped": _sign_aware_test}
EXTRA = {"mirror": Scenario("mirror", "under-confident base (T=1.2) -> over-confident by about as much (T=0.82)",
                            "null", 1.2, 0.82)}
PLAN = ("under-to-cal", "over-to-cal", "overshoot", "mirror", "T1.4", "T0.7", "T0.85", "equal-rho0.9", "over-base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default=",".join(PLAN))
    args = parser.parse_args()
    use_matrix_sums(True)
    thresholds = load_thresholds(SHIPPED)
    scenarios = {**SCENARIOS, **EXTRA}
    start = time.process_time()
    print(f"{args.items} items per task, {args.pairs} pairs per scenario: pairs failing % (through an "
          "over-confidence case %) / over-confidence cases failing %")
    print("| scenario | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---|" * len(CANDIDATES))
    for name in args.scenarios.split(","):
        pairs, through_oc, oc_fail, oc_cases = defaultdict(int), defaultdict(int), defaultdict(int), 0
        for rep in range(args.pairs):
            seed = args.seed * 1_000_003 + rep
            rng = np.random.default_rng([seed, args.items, *map(ord, name)])
            shared, groups = [], []
            for task in TASK_OPTIONS:
                for extractor in EXTRACTORS:
                    base, aligned, labels = generate_group(rng, args.items, task, scenarios[name])
                    groups.append((task, extractor, base, aligned, labels))
                    for metric in ("ece", "sce"):
                        rule = thresholds.rule_for(task, extractor, metric)
                        d = judge_arrays(base, aligned, labels, metric, rule, seed=seed)
                        shared.append(case_from_decision(d, pair="p", base="b", aligned="a", task=task,
                                                         extractor=extractor, metric=metric, rule=rule))
            oc_cases += len(groups)
            for candidate, test in CANDIDATES.items():
                verdicts._sign_aware_test = test
                try:
                    cases = list(shared)
                    for task, extractor, base, aligned, labels in groups:
                        rule = thresholds.rule_for(task, extractor, "overconfidence")
                        d = judge_arrays(base, aligned, labels, "overconfidence", rule, seed=seed)
                        cases.append(case_from_decision(d, pair="p", base="b", aligned="a", task=task,
                                                        extractor=extractor, metric="overconfidence", rule=rule))
                finally:
                    verdicts._sign_aware_test = _sign_aware_test
                failing = [c for c in apply_family(cases, thresholds.policy) if c.verdict == "fail"]
                pairs[candidate] += bool(failing)
                through_oc[candidate] += any(c.metric == "overconfidence" for c in failing)
                oc_fail[candidate] += sum(c.metric == "overconfidence" for c in failing)
        cells = [f"{100 * pairs[c] / args.pairs:.0f} ({100 * through_oc[c] / args.pairs:.0f}) / "
                 f"{100 * oc_fail[c] / oc_cases:.0f}" for c in CANDIDATES]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"CPU time: {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()

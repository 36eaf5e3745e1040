"""Pick the family design ([gate] pooled_weight, metric_weights) by measurement, through the gate's own loop.

    .venv/bin/python scripts/design_study.py --pairs 30 --budget 500 --scenarios one-task,T0.85,equal-rho0.9

Each design judges the SAME simulated pairs (`simulation.judge_pair_sequential`, default looks) and prints the
share of pairs failing with 95 % Clopper-Pearson intervals. Seeded; modest by default.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from calib_checks.simulation import SCENARIOS, SHIPPED, _map_in_workers, clopper_pearson, judge_pair_sequential
from calib_checks.thresholds import load_thresholds

DESIGNS = {
    "w0.3": {"pooled_weight": 0.3, "metric_weights": {}},
    "w0.3-oc2": {"pooled_weight": 0.3, "metric_weights": {"overconfidence": 2.0}},
    "w0.5-oc2": {"pooled_weight": 0.5, "metric_weights": {"overconfidence": 2.0}},
    "w0.3-oc3": {"pooled_weight": 0.3, "metric_weights": {"overconfidence": 3.0}},
}


def _one(args: tuple[str, str, int, int]) -> tuple[str, str, bool]:
    from calib_checks.metrics import use_matrix_sums

    use_matrix_sums(True)
    design, scenario, budget, seed = args
    thresholds = load_thresholds(SHIPPED)
    policy = replace(thresholds.policy, **DESIGNS[design])
    return design, scenario, judge_pair_sequential(SCENARIOS[scenario], budget, thresholds, seed, policy=policy).failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--scenarios", default="one-task,T0.85,equal-rho0.9")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    tasks = [(d, s, args.budget, 1000 + i) for s in args.scenarios.split(",") for i in range(args.pairs)
             for d in args.designs.split(",")]
    results = _map_in_workers(_one, tasks, args.jobs)
    table: dict[tuple[str, str], list[bool]] = {}
    for design, scenario, failed in results:
        table.setdefault((design, scenario), []).append(failed)
    for (design, scenario), fails in sorted(table.items()):
        k, n = sum(fails), len(fails)
        lo, hi = clopper_pearson(k, n)
        print(json.dumps({"design": design, "scenario": scenario, "budget": args.budget, "failed": k, "pairs": n,
                          "share": round(k / n, 3), "ci": [round(lo, 3), round(hi, 3)]}))


if __name__ == "__main__":
    main()

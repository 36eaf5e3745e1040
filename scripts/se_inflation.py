"""The measurement that sets metrics.SE_INFLATION: null z-statistics of the ECE and SCE changes.

For each null scenario of calib_checks.simulation (the aligned model exactly as calibrated as the base, so
the true change is 0), each option count (HellaSwag K = 4, PIQA K = 2, ARC 4/5 options padded to 5) and
size, it draws independent (task, extractor) groups and bootstraps the change of ECE and SCE as the gate does
(metrics.paired_bootstrap, 15 bins), keeping z = centre / sd(D*) (centre = 2 change - mean(D*), the normal
interval's bias-corrected centre). It prints

* per cell: the sd of z and the share of |z| beyond the one-sided critical values of 0.05, 0.025, 0.01 and
  Holm's first step 0.05/54;
* pooled over scenarios and K, per size: the shares of z / c beyond them for c = 1.0, 1.05, ..., 1.4, and the
  smallest c (a multiple of 0.05) whose pooled shares are at or below nominal at every size and level.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python scripts/se_inflation.py [--groups 1000] [--resamples 500]

500 resamples per group (the z-statistic's distribution does not depend on B beyond the sd's own noise of
about 3 %): about 15 minutes of CPU with the defaults. --power also compares the per-case power, at
0.05/54, of the inflated bias-corrected centre and of the plug-in change without inflation, against
T = 0.7 and T = 1.4.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from calib_checks.metrics import METRICS, normal_quantile, normal_sf, paired_bootstrap, use_matrix_sums
from calib_checks.simulation import SCENARIOS, generate_group

LEVELS = (0.05, 0.025, 0.01, 0.05 / 54)
TASKS = {"hellaswag": 4, "piqa": 2, "arc_easy": 5}
METRIC_NAMES = ("ece", "sce")


def null_z(groups: int, sizes: list[int], resamples: int) -> dict[tuple[str, str, int, str], np.ndarray]:
    out = {}
    nulls = [s for s in SCENARIOS.values() if s.kind == "null"]
    for i, scenario in enumerate(nulls):
        for j, task in enumerate(TASKS):
            for n in sizes:
                rng = np.random.default_rng([i, j, n])
                z = {m: np.empty(groups) for m in METRIC_NAMES}
                for g in range(groups):
                    base, aligned, labels = generate_group(rng, n, task, scenario)
                    for m in METRIC_NAMES:
                        boot = paired_bootstrap(m, base, aligned, labels, n_resamples=resamples, seed=g)
                        z[m][g] = boot.centre / boot.replicate_sd if boot.replicate_sd > 0 else 0.0
                for m in METRIC_NAMES:
                    out[(scenario.name, task, n, m)] = z[m]
    return out


def power(groups: int, sizes: list[int], resamples: int) -> None:
    print("per-case power at 0.05/54 (no Holm), margin 0.01 (SCE: x 2/K): inflated bias-corrected centre vs "
          "plug-in change without inflation")
    level = 0.05 / 54
    for name in ("T0.7", "T1.4"):
        for n in sizes:
            for task, k in (("hellaswag", 4), ("piqa", 2)):
                rng = np.random.default_rng([n, k])
                hits = {m: [0, 0] for m in METRIC_NAMES}
                for g in range(groups):
                    base, aligned, labels = generate_group(rng, n, task, SCENARIOS[name])
                    for m in METRIC_NAMES:
                        boot = paired_bootstrap(m, base, aligned, labels, n_resamples=resamples, seed=g)
                        margin = 0.01 * (2 / k if m == "sce" else 1)
                        hits[m][0] += boot.p_value(margin) <= level
                        hits[m][1] += normal_sf((boot.change - margin) / boot.replicate_sd) <= level
                print(f"  {name} n={n} K={k}: " + "; ".join(
                    f"{m} inflated {100 * h[0] / groups:.1f} %, plug-in {100 * h[1] / groups:.1f} %"
                    for m, h in hits.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=1000, help="groups per scenario, K and size")
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--sizes", default="200,500,2000")
    parser.add_argument("--power", action="store_true")
    args = parser.parse_args()
    use_matrix_sums(True)
    sizes = [int(x) for x in args.sizes.split(",")]
    start = time.process_time()
    if args.power:
        power(args.groups, sizes, args.resamples)
        print(f"CPU time: {time.process_time() - start:.0f} s")
        return
    z = null_z(args.groups, sizes, args.resamples)
    crit = [normal_quantile(1 - a) for a in LEVELS]
    heads = " ".join(f"{a:.2g}" for a in LEVELS)
    print(f"per cell ({args.groups} groups): sd(z) and % of z beyond the critical values of {heads}")
    for (scenario, task, n, m), v in z.items():
        print(f"  {m} {scenario} {task} n={n}: sd {v.std():.3f}; " + " ".join(f"{100 * np.mean(v > c):.2f}"
                                                                           for c in crit))
    print(f"pooled over the null scenarios and K: % beyond the critical values of {heads} for z / c")
    for m in METRIC_NAMES:
        chosen = None
        for c in np.arange(1.0, 1.41, 0.05):
            ok, rows = True, []
            for n in sizes:
                v = np.concatenate([x for (_, _, size, name), x in z.items() if size == n and name == m]) / c
                rates = [np.mean(v > cr) for cr in crit]
                ok &= all(r <= a for r, a in zip(rates, LEVELS))
                rows.append(f"n={n} ({v.size}): " + " ".join(f"{100 * r:.2f}" for r in rates))
            print(f"  {m} c={c:.2f}: " + " | ".join(rows))
            if ok and chosen is None:
                chosen = c
        print(f"  {m}: smallest c at or below nominal everywhere: {chosen:.2f} (shipped: "
              f"{METRICS[m].se_inflation})")
    print(f"CPU time: {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()

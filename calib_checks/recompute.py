"""Every verdict of a saved run judged again from its run directory alone: `python -m calib_checks recompute RUN`.

A run directory keeps what its verdicts used (calib_checks/results.py): each side's records of every item any
look judged (`records/<label>/<task>.jsonl`, merged, never overwritten), the ids each comparison family was judged
on (`items/families/<family>/<task>.json`), and in results.json the rules, the policy, the seed and where each
comparison's looks ended. `recompute_run` runs the gate's own sequential loop (`sequential.judge_in_looks`) on
those files with the gate's own case judgement (`verdicts.judge_case`), and compares every case with results.json:
its verdict, item count, change, interval and p-values. Nothing is loaded or scored; torch is never imported.

Exit status: 0 when every case agrees, 1 when any differs (each difference printed), 2 when the run directory
cannot be read.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calib_checks.errors import CalibChecksError

if TYPE_CHECKING:
    from calib_checks.verdicts import CaseResult

#: The numbers compared, and how closely: the records are read back exactly (JSON keeps every float), so only
#: summation order could move them.
COMPARED = ("change", "ci_low", "ci_high", "p_value", "p_adjusted")
RTOL = 1e-9


class RecomputeError(CalibChecksError):
    """A run directory that lacks what a recomputation needs (one line: what is missing)."""


@dataclass(frozen=True)
class Difference:
    """One case whose recomputed result differs from results.json: its id, the field, saved and recomputed."""

    case: str
    field: str
    saved: Any
    recomputed: Any


def _differs(saved: Any, recomputed: Any) -> bool:
    if isinstance(saved, (int, float)) and isinstance(recomputed, (int, float)):
        if math.isnan(saved) or math.isnan(recomputed):
            return not (math.isnan(saved) and math.isnan(recomputed))
        return not math.isclose(saved, recomputed, rel_tol=RTOL, abs_tol=1e-12)
    return saved != recomputed


def recompute_run(run_dir: str | Path) -> tuple[int, list[Difference]]:
    """(cases recomputed, differences) of the run at `run_dir` (module docstring)."""
    import json

    from calib_checks.records import ItemRecord, TaskScores
    from calib_checks.results import load_records, load_results, resolve_run_dir, safe_name
    from calib_checks.sampling import sample_ids
    from calib_checks.selection import Case
    from calib_checks.sequential import judge_in_looks
    from calib_checks.thresholds import GatePolicy, Rule
    from calib_checks.pooled import judge_pooled_scores
    from calib_checks.selection import POOLED_TASK
    from calib_checks.verdicts import error_case, judge_case

    run_dir = resolve_run_dir(run_dir)
    results = load_results(run_dir)
    run = results["run"]
    seed = int(run["seed"])
    selected_tasks = list(run["selection"]["tasks"])
    policy = GatePolicy(**run["policy"])
    comparisons = {p["name"]: p for p in results["pairs"]}
    endings = (run.get("sequential") or {}).get("comparisons") or {}
    saved = {Case(c["pair"], c["task"], c["extractor"], c["metric"]): c for c in results["cases"]
             if c["pair"] in endings}  # a comparison without a record of its looks was never judged
    if not saved:
        raise RecomputeError(f"{run_dir}: no judged comparison to recompute (results.json records no looks)")
    family_of = {name: comparisons[name]["family"] for name in endings}
    looks = {endings[name]["family"]: list(endings[name]["looks"]) for name in endings}
    item_sets: dict[tuple[str, str], list[str] | None] = {}
    records: dict[tuple[str, str], dict[str, ItemRecord] | None] = {}

    def ids(family: str, task: str) -> list[str] | None:
        if (family, task) not in item_sets:
            path = run_dir / "items" / "families" / safe_name(family, "family") / f"{safe_name(task, 'task')}.json"
            item_sets[(family, task)] = json.loads(path.read_text())["ids"] if path.is_file() else None
        return item_sets[(family, task)]

    def side(label: str, task: str) -> dict[str, ItemRecord] | None:
        if (label, task) not in records:
            rows = load_records(run_dir, label, task)
            records[(label, task)] = None if rows is None else {r["id"]: ItemRecord.from_json(r) for r in rows}
        return records[(label, task)]

    def scores(case: Case, task: str, n: int) -> tuple[TaskScores, TaskScores] | str:
        """Both sides' records of the look's items of `task`, or what the run directory lacks for them."""
        pair = comparisons[case.pair]
        chosen = ids(pair["family"], task)
        if chosen is None:
            return f"the item ids of family {pair['family']} on {task}"
        look = sample_ids(chosen, n, seed)
        found = []
        for role in ("base", "aligned"):
            held = side(pair[role], task)
            lacking = len(look) if held is None else sum(i not in held for i in look)
            if lacking:
                return f"{lacking} records of {pair[role]} on {task}"
            found.append(TaskScores(model_label=pair[role], model_identity={}, task=task, data_fingerprint="",
                                    records=[held[i] for i in look]))  # type: ignore[index]
        return found[0], found[1]

    def judge(case: Case, n: int) -> CaseResult:
        pair = comparisons[case.pair]
        tasks = selected_tasks if case.task == POOLED_TASK else [case.task]
        rules = [Rule(**saved[replace(case, task=t)]["rule"]) for t in tasks]
        pairs = [scores(case, t, n) for t in tasks]
        missing = next((p for p in pairs if isinstance(p, str)), None)
        if missing is not None:
            result = error_case(pair=case.pair, base=pair["base"], aligned=pair["aligned"], task=case.task,
                                extractor=case.extractor, metric=case.metric, rule=rules[0], seed=seed,
                                message=f"the run directory lacks {missing}")
        elif case.task == POOLED_TASK:
            result = judge_pooled_scores(pairs, case.extractor, case.metric, rules, seed, pair=case.pair)
        else:
            result = judge_case(*pairs[0], case.extractor, case.metric, rules[0], seed, pair=case.pair)
        return replace(result, chain=saved[case].get("chain"))

    final, _ = judge_in_looks(list(saved), family_of, looks, judge, policy)
    differences = []
    for case, old in saved.items():
        new = final[case].to_json()
        for name in ("verdict", "n_items", *COMPARED):
            if _differs(old.get(name), new.get(name)):
                differences.append(Difference(case.id, name, old.get(name), new.get(name)))
    return len(saved), differences


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory (reports/<run-id>), its results.json, or "
                                                      "reports/latest")


def run_cli(args: argparse.Namespace) -> int:
    n, differences = recompute_run(args.run_dir)
    for d in differences:
        print(f"DIFFERS {d.case} {d.field}: results.json {d.saved!r}, recomputed {d.recomputed!r}")
    if differences:
        print(f"{len({d.case for d in differences})} of {n} case(s) differ from results.json")
        return 1
    print(f"all {n} case(s) recomputed from {args.run_dir} agree with results.json")
    return 0

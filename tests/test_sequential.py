"""Sequential looks (issue #24): a pair is judged on 100, 200, 400, ... items per task and stops as soon as a case
fails; an equally calibrated pair runs to the end and ships; the spending of the false-alarm rate adds up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib_checks.gate import Gate, run_gate
from calib_checks.sequential import spent
from tests.test_gate import REPO, TASKS, correlated, draw, options, score_dirs, write_scores  # noqa: F401 (fixture)

pytest_plugins = ["pytester"]

N = 2000


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sequential")
    rng = np.random.default_rng(11)
    labels, noise = draw(rng, N)
    twin = correlated(noise, 0.9, rng)
    return {"base": write_scores(root / "base", labels, noise),
            "equal": write_scores(root / "equal", labels, twin),
            "hot": write_scores(root / "hot", labels, twin, temperature=0.5)}


def test_the_spending_reaches_alpha_at_the_last_look_and_spends_little_before() -> None:
    for plan in ([2000], [100, 200, 400, 800, 1600, 2000], [100, 130]):
        shares = [spent(0.05, plan, j) for j in range(len(plan))]
        assert shares == sorted(shares) and shares[-1] == pytest.approx(0.05)
    # O'Brien-Fleming: almost nothing at a twentieth of the items, a fraction of alpha at half of them.
    assert spent(0.05, [100, 2000], 0) < 1e-6 and spent(0.05, [1000, 2000], 0) < 0.01


def test_a_clear_regression_stops_early_and_an_equal_pair_runs_to_the_end(folders, tmp_path) -> None:
    d = folders
    outcome = run_gate(options(tmp_path, f"hot=scores:{d['base']},scores:{d['hot']}",
                               f"equal=scores:{d['base']},scores:{d['equal']}", metrics=("ece", "overconfidence"),
                               sequential=True))
    assert outcome.verdict == "regression"
    hot = [c for c in outcome.cases if c.pair == "hot" and c.task != "pooled"]
    equal = [c for c in outcome.cases if c.pair == "equal" and c.task != "pooled"]
    # O'Brien-Fleming spending keeps nearly all of alpha for the last look, so even T = 0.5 needs some items
    assert max(c.n_items for c in hot) < N and any(c.verdict == "fail" for c in outcome.cases if c.pair == "hot")
    assert all("stopped early" in c.message for c in hot) and not any(c.verdict == "error" for c in hot)
    assert {c.n_items for c in equal} == {N} and {c.verdict for c in equal} <= {"pass", "inconclusive"}
    sequence = json.loads(outcome.results_path.read_text())["run"]["sequential"]["comparisons"]
    assert sequence["equal"]["looks"] == [100, 200, 400, 800, 1600, 2000]
    assert sequence["equal"]["stopped_at"] == 6 and "every item judged" in sequence["equal"]["reason"]
    assert sequence["hot"]["stopped_at"] < 6 and "the regression is certain" in sequence["hot"]["reason"]
    assert sequence["equal"]["alpha"] == pytest.approx(0.05)  # by the last look the whole rate is spent
    summary = (outcome.results_path.parent / "results.md").read_text()
    assert "**FAIL**" in summary
    # results.md and the report say where each pair's looks ended, on how many items and why.
    hot_line = f"ended at look {sequence['hot']['stopped_at']} of 6 ({sequence['hot']['items']} items per task): " \
               f"{sequence['hot']['reason']}"
    assert f"- `hot` {hot_line}" in summary
    assert "- `equal` ended at look 6 of 6 (every item, at most 2000 per task): every item judged (look 6 of 6)" in summary
    page = (outcome.results_path.parent / "report.html").read_text()
    assert f"Sequential looks: {hot_line}" in page and "Sequential looks: ended at look 6 of 6 (every item, at most 2000 per task)" in page


def test_full_scores_every_item(folders, tmp_path) -> None:
    d = folders
    gate = Gate(options(tmp_path, f"hot=scores:{d['base']},scores:{d['hot']}", metrics=("overconfidence",)))
    judged = gate.judge(gate.cases())
    per_task = [c for c in judged.values() if c.task != "pooled"]
    assert {c.n_items for c in per_task} == {N} and gate.sequence["hot"]["looks"] == [N]
    assert {c.n_items for c in judged.values() if c.task == "pooled"} == {N * len(TASKS)}  # every task's items


def test_xdist_workers_stop_where_a_single_process_stops(folders, tmp_path, pytester: pytest.Pytester) -> None:
    """Every worker runs the same looks, but each case's judgement is made once over both workers (the others read
    it) and the scoring once (the cache): the run stops each pair where a single process does, and results.json
    says where, although the controller judged nothing."""
    d = folders
    pairs = [f"hot=scores:{d['base']},scores:{d['hot']}", f"equal=scores:{d['base']},scores:{d['equal']}"]
    serial = run_gate(options(tmp_path / "serial", *pairs, metrics=("overconfidence",), sequential=True))
    args = [str(REPO / "tests_models"), "-p", "no:cacheprovider", "-n", "2", "--calib-tasks", ",".join(TASKS),
            "--calib-metrics", "overconfidence", "--calib-thresholds", str(REPO / "thresholds.toml"),
            "--calib-report-dir", str(tmp_path / "xdist")]
    result = pytester.runpytest_subprocess(*args, *[part for p in pairs for part in ("--model-pair", p)])
    assert result.ret == 1
    # The terminal says it too, from the workers' records (the controller judged nothing).
    result.stdout.fnmatch_lines(["pair hot:*", "  ended at look * of 6 (* items per task): a case failed at look*",
                                 "pair equal:*", "  ended at look 6 of 6 (every item, at most 2000 per task): every item judged*"])
    run = json.loads((tmp_path / "xdist" / "latest" / "results.json").read_text())
    assert run["run"]["sequential"]["comparisons"] == json.loads(serial.results_path.read_text())["run"]["sequential"][
        "comparisons"]
    assert {(c["pair"], c["task"], c["extractor"], c["n_items"], c["verdict"]) for c in run["cases"]} == {
        (c.pair, c.task, c.extractor, c.n_items, c.verdict) for c in serial.cases}
    # Each judgement once over the two workers: as many as the serial run made, none twice.
    endings = run["run"]["sequential"]["comparisons"]
    judgements = sum(endings[c.pair]["stopped_at"] for c in serial.cases)
    assert json.loads(serial.results_path.read_text())["run"]["judged"] == {"main": judgements}
    assert set(run["run"]["judged"]) == {"gw0", "gw1"} and sum(run["run"]["judged"].values()) == judgements


def test_workers_that_disagree_make_the_run_an_error(folders, tmp_path) -> None:
    """The controller checks the workers' records against each other: two views of where a comparison ended
    cannot both be right, so the run is an error, never one of them picked silently."""
    from calib_checks.plugin import _SessionHooks

    d = folders
    gate = Gate(options(tmp_path, f"equal=scores:{d['base']},scores:{d['equal']}", metrics=("overconfidence",)))
    hooks = _SessionHooks(gate, worker=False)
    ending = {"family": "equal", "looks": [100, 200], "stopped_at": 2, "reason": "r", "alpha": 0.04, "items": 200}
    hooks._add_process({"process": "gw0", "sequence": {"equal": ending}, "judged": 3})
    hooks._add_process({"process": "gw1", "sequence": {"equal": ending}, "judged": 4})
    assert hooks.disagreement is None and hooks.judged == {"gw0": 3, "gw1": 4}
    hooks._add_process({"process": "gw2", "sequence": {"equal": {**ending, "stopped_at": 1}}, "judged": 0})
    assert "disagree on comparison equal" in hooks.disagreement
    cases = gate.judge(gate.cases())
    verdict, reason, *_ = gate.verdict(list(cases.values()), problem=hooks.disagreement)
    assert verdict == "error" and "disagree" in reason


def test_a_comparison_whose_gated_cases_all_pass_stops_early(score_dirs, tmp_path) -> None:
    """An aligned model that is its base to within noise: every gated over-confidence case passes at the first look
    (750 of 1500 items), so the comparison stops there, says why, and ships; the passes are the first look's
    numbers. (ECE rarely passes this early: its plug-in bias needs thousands of items, docs/GATE.md.)"""
    from tests.test_gate import N_ITEMS

    d = score_dirs
    outcome = run_gate(options(tmp_path, f"twin=scores:{d['base']},scores:{d['twin']}", sequential=True,
                               first_look=750, metrics=("overconfidence", "accuracy")))
    assert outcome.verdict == "ship", outcome.reason
    ending = json.loads(outcome.results_path.read_text())["run"]["sequential"]["comparisons"]["twin"]
    assert ending["looks"] == [750, N_ITEMS]
    assert ending["stopped_at"] == 1 and "every gated case passed at look 1" in ending["reason"]
    gated = [c for c in outcome.cases if c.verdict != "not-gated"]
    assert gated and {c.verdict for c in gated} == {"pass"}
    assert {c.n_items for c in outcome.cases if c.task != "pooled"} == {750}

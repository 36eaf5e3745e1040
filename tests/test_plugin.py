"""The gate end to end: `pytest tests_models` in a subprocess (pytester), on a tiny real model and local data.

Every run scores with real forward passes of the tiny random Llama (tests/tiny_models.py) on synthetic items
in the hub's schema (a `--data-source` folder with arc_easy.jsonl / piqa.jsonl). The runs share one score cache
per module (CALIB_CHECKS_CACHE, set in every test), except where a test must see an empty cache.
"""

from __future__ import annotations

import json
import random
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
N_ITEMS = 120
WORDS = ("the sun is a star water boils at one hundred degrees plants need light to grow dog cat bird park ball "
         "heat ice rock metal wood glass paper energy force motion gravity cell").split()
PERMISSIVE = """
[default]
max_increase = 0.01
min_items = 20
[metric.sce]
max_increase = 0.005
[metric.accuracy]
gate = false
max_increase = 0.02
[metric.brier]
gate = false
max_increase = 0.02
[metric.nll]
gate = false
max_increase = 0.05
"""
GATED = ("ece", "sce", "overconfidence")


def _phrase(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_items(folder: Path, n: int) -> None:
    """arc_easy.jsonl (4 options, gold spread evenly over A-D) and piqa.jsonl (2 options), hub schema."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "arc_easy.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = {"id": f"syn-{i}", "question": _phrase(rng, 4, 9) + "?", "answerKey": "ABCD"[i % 4],
                   "choices": {"text": [_phrase(rng, 1, 3) for _ in range(4)], "label": list("ABCD")}}
            fh.write(json.dumps(row) + "\n")
    with (folder / "piqa.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = {"goal": _phrase(rng, 4, 9), "sol1": _phrase(rng, 2, 4), "sol2": _phrase(rng, 2, 4), "label": i % 2}
            fh.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def gate_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    write_items(root / "data", N_ITEMS)
    (root / "thresholds.toml").write_text(PERMISSIVE, encoding="utf-8")
    return {"data": root / "data", "thresholds": root / "thresholds.toml", "cache": root / "shared-cache"}


@pytest.fixture
def gate(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, gate_files: dict[str, Path],
         tiny_model_dir: Path):
    """Run the gate in a subprocess: gate(*args, cache=..., cwd=...) -> (RunResult, report dir)."""

    def run(*args: str, cache: Path | None = None, cwd: Path | None = None, thresholds: Path | None = None,
            tests: str | None = None):
        monkeypatch.setenv("CALIB_CHECKS_CACHE", str(cache or gate_files["cache"]))
        report_dir = pytester.path / f"reports-{len(list(pytester.path.glob('reports-*')))}"
        if cwd is not None:
            monkeypatch.chdir(cwd)
        base = [tests or str(REPO / "tests_models"), "-p", "no:cacheprovider",
                "--calib-data-source", str(gate_files["data"]),
                "--calib-thresholds", str(thresholds or gate_files["thresholds"]),
                "--calib-report-dir", str(report_dir), "--calib-seed", "0"]
        result = pytester.runpytest_subprocess(*base, *args, timeout=300)
        return result, report_dir

    run.model = str(tiny_model_dir)
    return run


def load_run(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "results.json").read_text(encoding="utf-8"))


def verdicts(results: dict) -> dict[tuple[str, str, str, str], str]:
    return {(c["pair"], c["task"], c["extractor"], c["metric"]): c["verdict"] for c in results["cases"]}


def computed(results: dict) -> Counter:
    """How many times each (model, task) was computed (not read from the cache) in the run, over all workers."""
    return Counter((e["model"], e["task"]) for e in results["run"]["scoring"] if e["cache"] in ("miss", "off"))


def test_near_equal_pair_ships_from_the_checkout_and_junit_shows_every_case(gate, tmp_path: Path) -> None:
    m = gate.model
    junit = tmp_path / "gate.xml"
    result, reports = gate("--model-pair", f"near={m},{m}:temperature=1.02", "--calib-tasks", "arc_easy",
                           "--junitxml", str(junit), cwd=REPO, tests="tests_models")
    assert result.ret == 0, result.stdout.str()
    results = load_run(reports)
    assert results["verdict"] == "ship" and results["complete"] is True
    gated = [c for c in results["cases"] if c["rule"]["gate"]]
    assert len(gated) == 3 * len(GATED) and {c["verdict"] for c in gated} <= {"pass", "inconclusive"}
    for case in gated:
        assert case["p_value"] is not None and case["p_adjusted"] >= case["p_value"]
        if case["verdict"] == "inconclusive":
            assert case["detectable"] > case["margin"] and "INCONCLUSIVE" in case["message"]
    outcomes = result.parseoutcomes()
    n_inconclusive = sum(c["verdict"] == "inconclusive" for c in gated)
    assert outcomes.get("passed", 0) == len(gated) - n_inconclusive + 1  # + the gate verdict case
    # Progress while scoring, CI-style (no terminal): plain lines, never carriage returns.
    result.stdout.fnmatch_lines(["calib-checks: *@T1.02 on arc_easy: *"])
    assert "\r" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*calib-checks gate*", "pair near: * -> *", "GATE VERDICT: SHIP*",
                                 "report: *report.html"])
    assert (reports / "latest" / "report.html").is_file()
    assert (reports / "latest" / "records" / Path(m).name / "arc_easy.jsonl").is_file()
    # JUnit XML for CI: every case with its CaseResult as a property, and the run verdict as a case of its own.
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (str(3 * 6 + 1), "0", "0")
    names = [tc.get("name") for tc in suite.iter("testcase")]
    assert names[-1] == "test_gate_verdict"
    cases = [json.loads(p.get("value")) for p in suite.iter("property") if p.get("name") == "calib_checks_case"]
    assert len(cases) == 3 * 6 and {c["pair"] for c in cases} == {"near"}


def test_sharpened_pair_fails_and_junit_carries_the_run_verdict(gate, tmp_path: Path) -> None:
    # Run from pytester's folder (not the checkout), loading the plugin by name as an installed user would.
    m = gate.model
    junit = tmp_path / "gate.xml"
    result, reports = gate("-p", "calib_checks.plugin", "--model-pair", f"hot={m},{m}:temperature=0.5",
                           "--calib-tasks", "arc_easy", "--junitxml", str(junit), "--calib-full")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["GATE VERDICT: REGRESSION*", "FAILED *test_calibration[[]hot:arc_easy:continuation-min:sce[]]*",
                                 "FAILED *test_gate_verdict*"])
    results = load_run(reports)
    assert results["verdict"] == "regression"
    by_case = {(c["extractor"], c["metric"]): c for c in results["cases"]}
    for metric in GATED:  # the tiny model's continuation-min confidences are the ones T = 0.5 moves most
        case = by_case[("continuation-min", metric)]
        assert case["verdict"] == "fail", case["message"]
        assert case["p_adjusted"] <= results["run"]["policy"]["alpha"]
        assert case["ci_low"] > case["margin"], "the whole interval is beyond the limit"
        for part in (f"{case['base_value']:.4f}", f"{case['aligned_value']:.4f}", f"{case['change']:+.4f}",
                     f"n={N_ITEMS}", case["rule_source"], "base ", "aligned "):
            assert part in case["message"]
    assert {c["aligned"] for c in results["cases"]} == {Path(m).name + "@T0.5"}
    suite = ET.parse(junit).getroot().find("testsuite")
    verdict = next(tc for tc in suite.iter("testcase") if tc.get("name") == "test_gate_verdict")
    assert "GATE REGRESSION" in verdict.find("failure").get("message")


def test_broken_thresholds_stop_before_any_inference(gate, tmp_path: Path) -> None:
    bad = tmp_path / "thresholds.toml"
    bad.write_text("[default]\nmax_increase = 0.01\n[metric.eec]\ngate = false\n", encoding="utf-8")
    cache = tmp_path / "cache"
    result, reports = gate("--model-pair", f"{gate.model},{gate.model}:temperature=2", thresholds=bad, cache=cache)
    assert result.ret == 4
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1
    assert "[metric.eec]" in errors[0] and "did you mean 'ece'" in errors[0] and str(bad) in errors[0]
    assert "collected" not in result.stdout.str()
    assert not cache.exists() and not reports.exists(), "nothing scored, nothing written"


def test_without_model_pair_the_gate_says_how_to_give_one(gate) -> None:
    result, _ = gate()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: no --model-pair given*pytest tests_models --model-pair *"])


def test_the_same_checkpoint_on_both_sides_is_refused(gate, tmp_path: Path) -> None:
    m = gate.model
    copy = tmp_path / "copy-of-base"
    shutil.copytree(m, copy)  # the same weights in another folder are still the base
    for pair in (f"{m},{m}", f"{m},{copy}"):
        result, reports = gate("--model-pair", f"p={pair}", "--calib-tasks", "arc_easy")
        assert result.ret == 4, result.stdout.str()
        result.stderr.fnmatch_lines(["ERROR: pair p: base * and aligned * are the same checkpoint*"
                                     "--calib-allow-same-model*"])
        assert not reports.exists()
    result, reports = gate("--model-pair", f"{m},{m}", "--calib-tasks", "arc_easy", "--calib-extractors", "choice",
                           "--calib-allow-same-model")
    assert result.ret == 0, result.stdout.str()
    assert all(c["change"] == 0.0 for c in load_run(reports)["cases"])


def test_unloadable_model_errors_its_cases_with_one_line_each(gate, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result, reports = gate("--model-pair", f"gone={gate.model},{missing}", "--calib-tasks", "arc_easy",
                           "--calib-extractors", "choice", "--calib-metrics", "ece,sce")
    assert result.ret == 1
    assert result.parseoutcomes()["errors"] == 2
    out = result.stdout.str()
    assert "Traceback" not in out and "During handling" not in out
    sections = out.split("ERROR at setup of test_calibration")[1:]
    assert len(sections) == 2
    for section in sections:
        body = section.split("\n", 1)[1].split("\n")[0]
        assert "no-such-model" in body and "does not exist" in body
    assert {c["verdict"] for c in load_run(reports)["cases"]} == {"error"}


def test_too_few_items_for_min_items_is_an_error_not_a_quiet_skip(gate, tmp_path: Path) -> None:
    strict = tmp_path / "thresholds.toml"
    strict.write_text("[default]\nmax_increase = 0.01\nmin_items = 100000\n", encoding="utf-8")
    m = gate.model
    result, reports = gate("--model-pair", f"{m},{m}:temperature=1.02", "--calib-tasks", "arc_easy",
                           "--calib-extractors", "choice", "--calib-metrics", "ece,sce", thresholds=strict)
    assert result.ret == 1
    results = load_run(reports)
    assert results["verdict"] == "error"
    for case in results["cases"]:
        assert case["verdict"] == "error" and f"n={N_ITEMS} < min_items=100000" in case["message"]


def test_cases_that_never_ran_are_errors_unless_partial_is_asked_for(gate) -> None:
    m = gate.model
    args = ("--model-pair", f"p={m},{m}:temperature=1.02", "--calib-tasks", "arc_easy",
            "--calib-extractors", "choice", "--calib-metrics", "ece,sce")
    for deselect in (["-k", "not sce"], ["--deselect", "tests_models/test_calibration.py::"
                                                       "test_calibration[p:arc_easy:choice:sce]"]):
        result, reports = gate(*args, *deselect, cwd=REPO, tests="tests_models")
        assert result.ret == 1, result.stdout.str()
        results = load_run(reports)
        sce = next(c for c in results["cases"] if c["metric"] == "sce")
        assert sce["verdict"] == "error" and "never ran" in sce["message"]
        assert results["verdict"] == "error"
        result.stdout.fnmatch_lines(["GATE VERDICT: ERROR*", "FAILED *test_gate_verdict*"])
    result, reports = gate(*args, "-k", "not sce", "--calib-allow-partial")
    assert result.ret == 0, result.stdout.str()
    results = load_run(reports)
    assert [c["metric"] for c in results["cases"]] == ["ece"]
    assert results["run"]["partial"]["missing"] == ["p:arc_easy:choice:sce"]
    assert "PARTIAL RUN" in results["verdict_reason"]
    # Deselecting the verdict case itself can never turn a run green without the opt-in.
    result, _ = gate(*args, "-k", "not test_gate_verdict")
    assert result.ret == 1


def test_xdist_gives_the_serial_verdicts_and_scores_each_model_once(gate, tmp_path: Path) -> None:
    m = gate.model
    args = ["--model-pair", f"near={m},{m}:temperature=1.02", "--model-pair", f"hot={m},{m}:temperature=0.5",
            "--calib-tasks", "arc_easy,piqa", "--calib-extractors", "choice,continuation-sum",
            "--calib-metrics", "ece,sce,accuracy", "--calib-full"]
    serial, serial_reports = gate(*args)
    fresh = tmp_path / "fresh-cache"
    parallel, parallel_reports = gate(*args, "-n", "2", cache=fresh)
    assert serial.ret == parallel.ret == 1
    one, two = load_run(serial_reports), load_run(parallel_reports)
    # 2 pairs x 2 extractors x (2 tasks x 3 metrics + the pooled ECE): 28 cases
    assert verdicts(one) == verdicts(two) and len(verdicts(one)) == 2 * 2 * (2 * 3 + 1)
    assert verdicts(two)[("hot", "arc_easy", "choice", "ece")] == "fail"
    numbers = ("base_value", "aligned_value", "change", "ci_low", "ci_high", "p_value", "p_adjusted")
    # Equal up to float32 rounding: the scores are float32, and a worker's kernels may sum in another order than
    # the serial process's (under AVX2 dispatch an ECE moved by 1.1e-9, relative 2.8e-9; float32's eps is 1.2e-7).
    for a, b in zip(one["cases"], two["cases"]):
        assert [a[k] for k in numbers] == pytest.approx([b[k] for k in numbers], rel=1e-6, abs=1e-7)
    # Three models x two tasks, each computed exactly once over both workers, the work shared between them.
    label = Path(m).name
    assert computed(two) == Counter({(model, task): 1 for model in (label, label + "@T1.02", label + "@T0.5")
                                     for task in ("arc_easy", "piqa")})
    workers = {e["worker"] for e in two["run"]["scoring"] if e["cache"] == "miss"}
    assert workers == {"gw0", "gw1"}, two["run"]["scoring"]
    assert len(list(fresh.glob("scores/*/*/*.json.gz"))) == 6  # one chunk per model x task
    # Without the user's cache the workers share a scratch cache in the run directory, removed at the end.
    private, private_reports = gate(*args, "-n", "2", "--calib-no-cache", cache=tmp_path / "unused-cache")
    assert private.ret == 1 and verdicts(load_run(private_reports)) == verdicts(one)
    assert computed(load_run(private_reports)) == computed(two)
    assert not (private_reports / "latest" / ".scores").exists()
    assert not list((tmp_path / "unused-cache").glob("scores/**/*.json.gz"))  # the user's cache got no scores


def test_plugin_is_inert_outside_the_gate(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    pytester.makepyfile(test_other="def test_ok():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "calib_checks.plugin", "-p", "no:cacheprovider",
                                           "--model-pair", "a,b")
    assert result.ret == 0
    result.assert_outcomes(passed=1)
    assert "calib-checks gate" not in result.stdout.str()
    help_text = pytester.runpytest_subprocess("-p", "calib_checks.plugin", "--help").stdout.str()
    for option in ("--model-pair", "--calib-thresholds", "--calib-report-dir", "--calib-no-cache",
                   "--calib-extractors", "--calib-allow-partial", "--calib-allow-same-model"):
        assert option in help_text
    assert not (tmp_path / "cache").exists()


FOREIGN_OPTIONS = ("device", "seed", "limit", "tasks", "metrics", "dtype", "extractors", "thresholds",
                   "data-source", "report-dir", "batch-size", "no-cache")


def test_a_foreign_suite_with_the_common_option_names_runs_green(pytester: pytest.Pytester) -> None:
    # ML repositories commonly add --device, --seed, --limit... in their conftest: installing calib-checks
    # (its pytest11 plugin) must not break them with "option dest already used".
    adds = "\n".join(f"    parser.addoption('--{name}', default='mine-{name}')" for name in FOREIGN_OPTIONS)
    pytester.makeconftest(f"def pytest_addoption(parser):\n{adds}\n")
    pytester.makepyfile(test_theirs="def test_uses_their_options(request):\n"
                                    "    assert request.config.getoption('--device') == 'gpu-7'\n"
                                    "    assert request.config.getoption('--seed') == 'mine-seed'\n")
    result = pytester.runpytest_subprocess("-p", "calib_checks.plugin", "-p", "no:cacheprovider", "--device", "gpu-7")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)


def test_a_case_that_crashes_without_a_verdict_is_an_error_in_the_results(gate, pytester: pytest.Pytester) -> None:
    # A bug in judging (simulated by a plugin that breaks judge_case) must not drop the case from results.json.
    pytester.makepyfile(break_judge="import calib_checks.verdicts as v\n\n"
                                    "def judge_case(*args, **kwargs):\n    raise RuntimeError('judge exploded')\n\n"
                                    "v.judge_case = judge_case\n")
    m = gate.model
    result, reports = gate("-p", "break_judge", "--model-pair", f"{m},{m}:temperature=2", "--calib-tasks", "arc_easy",
                           "--calib-extractors", "choice", "--calib-metrics", "ece")
    assert result.ret == 1
    results = load_run(reports)
    assert results["verdict"] == "error"
    [case] = results["cases"]
    assert case["verdict"] == "error" and "no verdict recorded" in case["message"]
    assert "judge exploded" in case["message"]


def test_a_custom_task_file_runs_through_the_gate(gate) -> None:
    m = gate.model
    example = REPO / "examples" / "support-tickets.toml"
    result, reports = gate("--model-pair", f"p={m},{m}:temperature=0.5", "--calib-task-file", str(example),
                           "--calib-tasks", "support_tickets,support_tickets_orders", "--calib-extractors", "choice",
                           "--calib-metrics", "ece,overconfidence")
    assert result.ret in (0, 1), result.stdout.str()
    results = load_run(reports)
    assert {c["task"] for c in results["cases"]} == {"pooled", "support_tickets", "support_tickets_orders"}
    assert all(c["verdict"] != "error" for c in results["cases"]), [c["message"] for c in results["cases"]]
    assert results["tasks"]["support_tickets"]["n_items"] == 40
    # A typo in a file's task name is a usage error naming the file's tasks, before anything is scored.
    result, _ = gate("--model-pair", f"p={m},{m}:temperature=0.5", "--calib-task-file", str(example),
                     "--calib-tasks", "support_ticket")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: --calib-tasks: unknown task 'support_ticket' (did you mean 'support_tickets'?)*"])

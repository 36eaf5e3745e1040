"""Score sources (calib_checks/sources/): the registry and its entry points, a new source in one file plus one
registry line (examples/csv_source.py, run through the whole gate), distinct labels for folders of one name, the
score-folder input contract, which side decides the items, and what the gate's constructor must not do."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from calib_checks.gate import Gate, run_gate
from calib_checks.sources import SourceContext, SourceError, distinct_labels
from calib_checks.sources.registry import BUILTIN, open_source, registry
from calib_checks.sources.scorefolder import ScoreFolderSource
from tests.test_gate import EXTRACTORS, REPO, options, score_dirs, write_scores  # noqa: F401 (a fixture)

pytest_plugins = ["pytester"]


def _entry_point(site: Path, name: str, value: str) -> None:
    """Install a distribution into `site` that declares one `calib_checks.sources` entry point, as
    `pip install` of a third-party package would."""
    info = site / "csv_scores_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: csv-scores-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[calib_checks.sources]\n{name} = {value}\n")


def _to_csv(folder: Path, out: Path) -> Path:
    """The score folder `folder` written as the worked example's CSV files (one row per item, extractor, option)."""
    out.mkdir(parents=True)
    for path in folder.glob("*.jsonl"):
        with open(out / f"{path.stem}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "gold", "extractor", "option", "score"])
            for line in path.read_text().splitlines():
                row = json.loads(line)
                for extractor, values in row["scores"].items():
                    writer.writerows([row["id"], row["gold"], extractor, k, v] for k, v in enumerate(values))
    return out


def test_the_registry_has_the_built_in_prefixes_and_a_side_without_one_is_a_checkpoint(score_dirs, tmp_path):
    assert set(registry()) >= {"scores:", "lm-eval:"} and registry()["scores:"] == BUILTIN["scores:"]
    folder = open_source(f"scores:{score_dirs['base']}", SourceContext())
    assert isinstance(folder, ScoreFolderSource) and folder.label == "base"
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"scores:{tmp_path / 'nowhere'}", SourceContext())
    from calib_checks.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):  # no prefix: a checkpoint, whose path is checked
        open_source(str(tmp_path / "no-model"), SourceContext())


def test_a_new_source_is_one_file_plus_one_registry_line(score_dirs, tmp_path, monkeypatch):
    """examples/csv_source.py, registered by an installed package's entry point, gates a pair end to end and
    judges exactly what the same scores as `scores:` folders give."""
    site = tmp_path / "site"
    _entry_point(site, "csv", "csv_source:CsvSource")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    assert registry()["csv:"] == "csv_source:CsvSource"
    d = score_dirs
    base, sharp = _to_csv(d["base"], tmp_path / "csv" / "base"), _to_csv(d["sharp"], tmp_path / "csv" / "sharp")
    ours = run_gate(options(tmp_path / "a", f"sharp=csv:{base},csv:{sharp}", metrics=("ece", "overconfidence")))
    theirs = run_gate(options(tmp_path / "b", f"sharp=scores:{d['base']},scores:{d['sharp']}",
                              metrics=("ece", "overconfidence")))
    assert ours.verdict == theirs.verdict == "regression"
    for a, b in zip(ours.cases, theirs.cases):
        assert (a.task, a.extractor, a.metric, a.verdict) == (b.task, b.extractor, b.metric, b.verdict)
        assert a.change == pytest.approx(b.change, abs=1e-12) and a.p_adjusted == pytest.approx(b.p_adjusted)
    results = json.loads(ours.results_path.read_text())
    assert results["models"]["sharp"]["resolved"].startswith(f"csv:{sharp}")
    assert results["tasks"]["piqa"]["n_items"] == 1500  # the run records which items it gated


def test_entry_points_that_are_not_prefixes_or_claim_a_built_in_are_refused(tmp_path, monkeypatch):
    for name, says in (("Csv:", "is not a prefix name"), ("scores", "claims the built-in prefix")):
        site = tmp_path / name.strip(":")
        _entry_point(site, name, "csv_source:CsvSource")
        with monkeypatch.context() as m:
            m.syspath_prepend(str(site))
            with pytest.raises(SourceError, match=says):
                registry()


def test_the_worked_example_through_pytest_as_a_user_runs_it(score_dirs, pytester: pytest.Pytester, tmp_path,
                                                             monkeypatch):
    site = tmp_path / "site"
    _entry_point(site, "csv", "csv_source:CsvSource")
    base = _to_csv(score_dirs["base"], tmp_path / "csv" / "base")
    equal = _to_csv(score_dirs["equal"], tmp_path / "csv" / "equal")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{REPO / 'examples'}:{REPO}")
    result = pytester.runpytest_subprocess(
        str(REPO / "tests_models"), "-p", "no:cacheprovider", "--model-pair", f"csv:{base},csv:{equal}",
        "--calib-tasks", "arc_easy,piqa", "--calib-metrics", "ece,overconfidence",
        "--calib-thresholds", str(REPO / "thresholds.toml"), "--calib-report-dir", str(tmp_path / "reports"))
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["GATE VERDICT: SHIP*"])


def test_folders_of_one_name_get_distinct_labels_without_renaming(score_dirs, tmp_path):
    """runs/<pair>/base and runs/<pair>/aligned: two pairs, four folders, two names; every record kept apart."""
    runs = tmp_path / "runs"
    for pair, aligned in (("llama", "equal"), ("mistral", "sharp")):
        for side, source in (("base", "base"), ("aligned", aligned)):
            (runs / pair / side).mkdir(parents=True)
            for path in score_dirs[source].glob("*.jsonl"):
                (runs / pair / side / path.name).write_bytes(path.read_bytes())
    pairs = [f"{p}=scores:{runs / p / 'base'},scores:{runs / p / 'aligned'}" for p in ("llama", "mistral")]
    outcome = run_gate(options(tmp_path, *pairs, metrics=("overconfidence",)))
    results = json.loads(outcome.results_path.read_text())
    assert set(results["models"]) == {"llama_base", "llama_aligned", "mistral_base", "mistral_aligned"}
    assert {(p["name"], p["base"], p["aligned"]) for p in results["pairs"]} == {
        ("llama", "llama_base", "llama_aligned"), ("mistral", "mistral_base", "mistral_aligned")}
    assert {c.pair: c.verdict for c in outcome.cases if c.verdict == "fail"}.keys() == {"mistral"}
    records = {p.parent.name for p in (outcome.results_path.parent / "records").glob("*/*.jsonl")}
    assert records == set(results["models"])
    context = SourceContext()
    same = [open_source(f"scores:{score_dirs[name]}", context) for name in ("base", "base")]
    same[1].text += "/"  # two texts naming one folder: still two sides, never one file
    assert sorted(distinct_labels(same).values()) == ["base", "base-2"]


def test_probs_in_a_score_file_must_agree_with_its_scores(score_dirs, tmp_path):
    """`probs` stored in bfloat16 (sums 1 +- 0.004) are accepted: the gate judges the softmax of the scores; probs
    of other scores are refused with the line that holds them."""
    import torch

    def rewrite(name: str, change) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for path in score_dirs["equal"].glob("*.jsonl"):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            for row in rows:
                change(row)
            (folder / path.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    def bf16_probs(row: dict) -> None:
        row["probs"] = {}
        for extractor, scores in row["scores"].items():
            p = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0).to(torch.bfloat16).double()
            row["probs"][extractor] = p.tolist()

    stored = rewrite("bf16", bf16_probs)
    sums = [sum(json.loads(line)["probs"]["choice"]) for line in (stored / "arc_easy.jsonl").read_text().splitlines()]
    assert max(abs(s - 1) for s in sums) > 1e-3  # really off by more than the metrics' float tolerance
    plain = run_gate(options(tmp_path / "a", f"scores:{score_dirs['base']},scores:{score_dirs['equal']}",
                             metrics=("ece",)))
    rounded = run_gate(options(tmp_path / "b", f"scores:{score_dirs['base']},scores:{stored}", metrics=("ece",)))
    assert [c.change for c in rounded.cases] == [c.change for c in plain.cases]  # the scores were judged

    def other_probs(row: dict) -> None:
        bf16_probs(row)
        row["probs"]["choice"] = row["probs"]["choice"][::-1]

    wrong = rewrite("wrong", other_probs)
    outcome = run_gate(options(tmp_path / "c", f"scores:{score_dirs['base']},scores:{wrong}", metrics=("ece",)))
    assert {c.verdict for c in outcome.cases} == {"error"}
    assert all("line 1: 'probs' of choice disagree with the softmax of its 'scores'" in c.message
               for c in outcome.cases)


def test_an_lmeval_run_decides_the_items_of_its_own_pair_only(tmp_path, tiny_model_dir):
    """Two lm-eval runs with different items, each paired with a checkpoint: each checkpoint is scored on its own
    pair's items (it was the first run's for every pair), and the run records both item sets."""
    from tests.test_lmeval import _options, piqa_samples, write_run

    three = write_run(tmp_path / "three", {"piqa": piqa_samples()})
    two = write_run(tmp_path / "two", {"piqa": piqa_samples()[:2]}, model="org/other")
    gate = Gate(_options(tmp_path, f"a=lm-eval:{three},{tiny_model_dir}",
                         f"b=lm-eval:{two},{tiny_model_dir}:temperature=0.5",
                         extractors=("continuation-sum",), device="cpu", dtype="float32"))
    judged = gate.judge(gate.cases())
    n_items = {c.pair: c.n_items for c in judged.values() if c.metric == "ece"}
    assert n_items == {"a": 3, "b": 2}, [c.message for c in judged.values()]
    assert all(c.verdict != "error" for c in judged.values())
    verdict, _, path = gate.finish(list(judged.values()))
    results = json.loads(path.read_text())
    assert results["tasks"]["piqa"]["n_items"] == 3 and "lm-eval:" in results["tasks"]["piqa"]["source"]
    assert (path.parent / "items" / "piqa.jsonl").read_text().count("\n") == 3


def test_the_gate_constructor_neither_hashes_weights_nor_changes_the_task_registry(score_dirs, tmp_path,
                                                                                monkeypatch):
    from calib_checks import engine
    from calib_checks.tasks import TASKS

    calls = []
    real = engine.model_identity
    monkeypatch.setattr(engine, "model_identity", lambda *a, **k: calls.append(a) or real(*a, **k))
    before = dict(TASKS)
    example = REPO / "examples" / "support-tickets.toml"
    gate = Gate(options(tmp_path, f"scores:{score_dirs['base']},{REPO / 'tests'}",
                        tasks=("support_tickets",), task_files=(example,)))
    assert calls == [] and dict(TASKS) == before  # identities are the controller's, at session start
    assert [c.id for c in gate.cases()][:1] == ["tests:support_tickets:continuation-sum:ece"]
    gate.check_sides()  # asks, and records the unusable checkpoint folder as that side's error
    assert len(calls) == 1 and "config.json" in gate.sides[str(REPO / "tests")].error


def test_collect_only_asks_no_identity(pytester: pytest.Pytester, score_dirs, tmp_path, monkeypatch):
    from calib_checks.sources.scorefolder import ScoreFolderSource

    calls = []
    monkeypatch.setattr(ScoreFolderSource, "identity", lambda self: calls.append(self.text) or {"x": 1})
    args = [str(REPO / "tests_models"), "-p", "no:cacheprovider", "--model-pair",
            f"scores:{score_dirs['base']},scores:{score_dirs['equal']}", "--calib-tasks", "piqa",
            "--calib-report-dir", str(tmp_path / "reports")]
    result = pytester.runpytest_inprocess(*args, "--collect-only")
    assert result.ret == 0 and calls == []
    result = pytester.runpytest_inprocess(*args)  # both sides now claim one identity: refused at session start
    assert result.ret == pytest.ExitCode.USAGE_ERROR and calls


def test_task_files_load_on_python_3_10_without_tomllib(tmp_path):
    """pyproject.toml allows Python 3.10, which has no tomllib: the TOML readers fall back to tomli."""
    code = (
        "import sys, tomllib\n"
        "sys.modules['tomli'] = tomllib\n"  # what `pip install tomli` provides on 3.10
        "sys.modules['tomllib'] = None\n"  # Python 3.10: `import tomllib` raises ModuleNotFoundError
        "from calib_checks.taskfiles import task_registry\n"
        "from calib_checks.thresholds import load_thresholds\n"
        f"tasks = task_registry([{str(REPO / 'examples' / 'support-tickets.toml')!r}])\n"
        f"load_thresholds({str(REPO / 'thresholds.toml')!r}, tasks)\n"
        "print(sorted(tasks)[-1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "support_tickets_technical"


def test_a_pair_summary_never_contradicts_the_run_verdict(score_dirs, pytester: pytest.Pytester, tmp_path):
    """Under on_inconclusive = "fail" an inconclusive case blocks: the pair's line says REGRESSION, as the run
    verdict does (it said NO REGRESSION DETECTED above GATE VERDICT: REGRESSION)."""
    rules = tmp_path / "strict.toml"
    rules.write_text((REPO / "thresholds.toml").read_text().replace('on_inconclusive = "pass"',
                                                                      'on_inconclusive = "fail"'))
    result = pytester.runpytest_subprocess(
        str(REPO / "tests_models"), "-p", "no:cacheprovider", "--model-pair",
        f"equal=scores:{score_dirs['base']},scores:{score_dirs['equal']}", "--calib-tasks", "piqa",
        "--calib-metrics", "ece", "--calib-thresholds", str(rules), "--calib-report-dir", str(tmp_path / "r"))
    assert result.ret == 1
    out = result.stdout.str()
    assert "GATE VERDICT: REGRESSION" in out and "NO REGRESSION DETECTED" not in out
    result.stdout.fnmatch_lines(["pair equal: base -> equal  REGRESSION: *inconclusive*"])

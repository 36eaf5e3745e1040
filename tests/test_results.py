"""The run directory: atomic records, results.json schema, the `latest` pointer, loading and its errors."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from pathlib import Path

import pytest

from calib_checks import results as results_mod
from calib_checks.results import (
    SCHEMA_VERSION,
    ResultsError,
    RunWriter,
    load_items,
    load_records,
    load_results,
    new_run_id,
    point_latest,
    resolve_run_dir,
)
from calib_checks.thresholds import GatePolicy
from calib_checks.verdicts import VERDICTS, run_verdict
from calib_checks.records import EngineStats, ItemRecord, ScoreStats, TaskScores
from tests.test_report import build_run, make_task_data, records_for_model


def _scores(label: str, task: str, n: int, seed: int) -> TaskScores:
    data = make_task_data(task, n, seed=seed)
    return TaskScores(
        model_label=label,
        model_identity={"path": f"/models/{label}", "dtype": "float32"},
        task=task,
        data_fingerprint=data.fingerprint,
        records=records_for_model(data, temperature=0.7, seed=seed),
        stats=ScoreStats(source="test", engine=EngineStats(tokens_forwarded=10 * n, seconds=0.1)),
    )


def test_new_run_id_is_sortable_unique_and_safe() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    for run_id in ids:
        assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", run_id)
        assert results_mod.safe_name(run_id, "run id") == run_id


def test_write_records_round_trips_item_records(tmp_path: Path) -> None:
    scores = _scores("SmolLM2-135M@T0.5", "arc_easy", 12, seed=1)
    path = RunWriter(tmp_path, "run-1").write_records(scores)
    assert path == tmp_path / "run-1" / "records" / "SmolLM2-135M@T0.5" / "arc_easy.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [ItemRecord.from_json(json.loads(line)) for line in lines] == scores.records
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["n_records"] == 12
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["model_identity"] == scores.model_identity
    assert load_records(tmp_path / "run-1", "SmolLM2-135M@T0.5", "arc_easy") == [json.loads(x) for x in lines]
    assert not list(path.parent.glob(".*.tmp")), "temporary files left behind"


def test_write_items_keeps_text_and_task_description(tmp_path: Path) -> None:
    data = make_task_data("piqa", 6, seed=2)
    writer = RunWriter(tmp_path, "run-1")
    writer.write_items(data)
    items = load_items(writer.run_dir, "piqa")
    assert list(items) == [item.id for item in data.items]
    first = data.items[0]
    assert items[first.id] == {
        "id": first.id, "gold": first.gold, "options": list(first.options), "context": first.context,
        "subject": first.subject,
    }
    meta = json.loads((writer.run_dir / "items" / "piqa.meta.json").read_text())
    assert meta["item_ids"] == [item.id for item in data.items]
    assert meta["n_items"] == 6 and meta["n_available"] == data.n_available


@pytest.mark.parametrize("label", ["../escape", "a/b", ".hidden", "", "latest", "x y"])
def test_unsafe_names_are_refused(tmp_path: Path, label: str) -> None:
    scores = _scores("ok", "piqa", 4, seed=0)
    scores.model_label = label
    with pytest.raises(ResultsError, match="cannot name a file"):
        RunWriter(tmp_path, "run-1").write_records(scores)


def test_non_finite_scores_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    scores = _scores("m", "piqa", 4, seed=0)
    scores.records[2].scores["choice"][0] = float("nan")
    writer = RunWriter(tmp_path, "run-1")
    with pytest.raises(ResultsError, match="finite"):
        writer.write_records(scores)
    assert not (writer.run_dir / "records" / "m" / "piqa.jsonl").exists()


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RunWriter(tmp_path, "run-1")
    path = writer.write_records(_scores("m", "piqa", 4, seed=0))
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        writer.write_records(_scores("m", "piqa", 9, seed=0))
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.tmp"))


def _write_many(args: tuple[str, str, str, int, int]) -> str:
    report_dir, label, task, n, seed = args
    return str(RunWriter(Path(report_dir), "run-x").write_records(_scores(label, task, n, seed)))


def test_concurrent_workers_never_leave_a_torn_file(tmp_path: Path) -> None:
    # Like xdist workers: several processes, different files and the SAME file (overlapping items: merged).
    jobs = [(str(tmp_path), "m1", "piqa", 10 * (s + 1), 0) for s in range(4)]
    jobs += [(str(tmp_path), "m2", "arc_easy", 30 + s, 0) for s in range(4)]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        pool.map(_write_many, jobs)
    run_dir = tmp_path / "run-x"
    for label, task in (("m1", "piqa"), ("m2", "arc_easy")):
        path = run_dir / "records" / label / f"{task}.jsonl"
        rows = [ItemRecord.from_json(json.loads(line)) for line in path.read_text().splitlines()]
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        assert meta["n_records"] == len(rows) == {"piqa": 40, "arc_easy": 33}[task]  # merged, none lost
        assert len({r.id for r in rows}) == len(rows)  # the .jsonl and its meta come from the same writer
        assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not list(path.parent.glob(".*.tmp"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    report_dir = tmp_path_factory.mktemp("reports")
    build_run(report_dir, "20260101T000000Z-aaaaaa", complete=True, n_items=40)
    build_run(report_dir, "20260101T000100Z-bbbbbb", complete=True, n_items=40)
    return report_dir


def test_results_json_follows_the_documented_schema(two_runs: Path) -> None:
    run_dir = two_runs / "20260101T000100Z-bbbbbb"
    results = load_results(run_dir)
    assert results["schema_version"] == SCHEMA_VERSION
    assert results["complete"] is True
    assert results["run_id"] == run_dir.name
    counts = {v: sum(c["verdict"] == v for c in results["cases"]) for v in VERDICTS}
    assert results["summary"] == counts
    assert results["verdict"] == run_verdict([c["verdict"] for c in results["cases"]], True)[0]
    run = results["run"]
    for key in ("started_at", "finished_at", "duration_s", "argv", "dtype", "device", "thresholds", "versions"):
        assert key in run, key
    assert run["duration_s"] >= 0
    assert set(run["versions"]) >= {"calib-checks", "torch", "transformers", "python"}
    thresholds = Path(run["thresholds"]["file"])
    assert run["thresholds"]["sha256"] == hashlib.sha256(thresholds.read_bytes()).hexdigest()
    for label, model in results["models"].items():
        assert model["spec"] and model["identity"]["path"] == f"/models/{label}"
    for task, entry in results["tasks"].items():
        assert entry["n_items"] == len(entry["item_ids"]) == 40
        assert entry["source"].endswith(task)
    fields = {"pair", "base", "aligned", "task", "extractor", "metric", "base_value", "aligned_value", "change",
              "relative_change", "ci_low", "ci_high", "ci_method", "confidence", "n_items", "rule", "rule_source",
              "verdict", "message"}
    assert all(fields <= set(case) for case in results["cases"])
    for entry in results["records"]:
        path = run_dir / entry["path"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["n_records"] == len(path.read_text().splitlines()) == 40
    assert (run_dir / results["report"]).is_file()
    assert not (run_dir / ".locks").exists()


def test_latest_points_at_the_newest_complete_run(two_runs: Path) -> None:
    latest = two_runs / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "20260101T000100Z-bbbbbb"
    assert load_results(latest)["run_id"] == "20260101T000100Z-bbbbbb"
    assert not [p for p in two_runs.iterdir() if p.name.startswith(".latest")], "temporary link left behind"


def test_incomplete_run_never_moves_latest(tmp_path: Path) -> None:
    build_run(tmp_path, "20260101T000000Z-aaaaaa", complete=True, n_items=30)
    writer = build_run(tmp_path, "20260101T000200Z-cccccc", complete=False, n_items=30)
    assert os.readlink(tmp_path / "latest") == "20260101T000000Z-aaaaaa"
    results = load_results(writer.run_dir)
    assert results["complete"] is False and results["verdict"] == "incomplete"
    # A run killed before finish() has records but no results.json: it cannot be loaded as a finished run.
    killed = RunWriter(tmp_path, "20260101T000300Z-dddddd")
    killed.write_records(_scores("m", "piqa", 5, seed=0))
    with pytest.raises(ResultsError, match="interrupted"):
        load_results(killed.run_dir)
    assert os.readlink(tmp_path / "latest") == "20260101T000000Z-aaaaaa"


def test_latest_falls_back_to_a_text_file_without_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(results_mod.os, "symlink", no_symlinks)
    build_run(tmp_path, "20260101T000000Z-aaaaaa", complete=True, n_items=30)
    assert (tmp_path / "LATEST").read_text().strip() == "20260101T000000Z-aaaaaa"
    assert not (tmp_path / "latest").exists()
    assert resolve_run_dir(tmp_path / "latest") == tmp_path / "20260101T000000Z-aaaaaa"
    assert load_results(tmp_path / "latest")["run_id"] == "20260101T000000Z-aaaaaa"


def test_latest_that_is_a_real_directory_is_not_clobbered(tmp_path: Path) -> None:
    (tmp_path / "latest").mkdir()
    with pytest.raises(ResultsError, match="not a symlink"):
        point_latest(tmp_path, "run-1")


@pytest.mark.parametrize(
    ("verdicts", "complete", "expected"),
    [
        (["pass", "not-gated"], True, "ship"),
        (["pass", "fail", "error"], True, "regression"),
        (["pass", "error"], True, "error"),
        ([], True, "error"),
        (["not-gated"], True, "error"),
        (["pass"], False, "incomplete"),
        (["fail"], False, "incomplete"),
        (["pass", "inconclusive"], True, "ship"),
        (["inconclusive", "not-gated"], True, "ship"),
    ],
)
def test_run_verdict(verdicts: list[str], complete: bool, expected: str) -> None:
    verdict, reason = run_verdict(verdicts, complete)
    assert verdict == expected and reason
    if "inconclusive" in verdicts and complete:
        assert "INCONCLUSIVE" in reason  # "no regression detected" is never worded as "shown within"


def test_inconclusive_blocks_under_on_inconclusive_fail_and_partial_runs_say_so() -> None:
    cases = ["pass", "inconclusive"]
    verdict, reason = run_verdict(cases, True, GatePolicy(on_inconclusive="fail"))
    assert verdict == "regression" and "1 inconclusive" in reason
    verdict, reason = run_verdict(cases[:1], True, partial={"expected": 2, "judged": 1})
    assert verdict == "ship" and "PARTIAL RUN: 1 of 2" in reason


def _edit_results(run_dir: Path, edit) -> None:
    path = run_dir / "results.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_load_results_refuses_bad_files(tmp_path: Path) -> None:
    writer = build_run(tmp_path, "run-1", complete=True, n_items=20)
    path = writer.run_dir / "results.json"
    good = path.read_text()
    _edit_results(writer.run_dir, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ResultsError, match="schema_version"):
        load_results(writer.run_dir)
    path.write_text(good)
    _edit_results(writer.run_dir, lambda d: d.pop("cases"))
    with pytest.raises(ResultsError, match="lacks"):
        load_results(writer.run_dir)
    path.write_text(good[: len(good) // 2])
    with pytest.raises(ResultsError, match="not readable JSON"):
        load_results(writer.run_dir)
    path.write_text(json.dumps(["not", "a", "run"]))
    with pytest.raises(ResultsError, match="schema_version"):
        load_results(writer.run_dir)
    path.write_text(good)
    assert load_results(path)["run_id"] == "run-1"  # the file itself is accepted too


def test_finish_refuses_malformed_input(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "run-1")
    with pytest.raises(ResultsError, match="pair"):
        writer.finish({}, [{"name": "p"}], {}, [], True)
    with pytest.raises(ResultsError, match="verdict"):
        writer.finish({}, [], {}, [{"verdict": "maybe"}], True)
    assert not (writer.run_dir / "results.json").exists()

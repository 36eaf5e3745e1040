"""The gate owns its items (issue 29): every look judges the same items on both sides, whatever a side is, and the
run keeps every record it judged, so `python -m calib_checks recompute RUN` judges every verdict again.

Read-in sides (`scores:`, `lm-eval:`, the CSV example) and checkpoints are run here in the default sequential mode
with MORE items than the first look, which is where the looks used to break (every interim case errored, or
judged every item while saying it judged the first look's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib_checks.__main__ import main
from calib_checks.collect import GateError, decide_items
from calib_checks.gate import Gate, GateOptions, run_gate
from calib_checks.recompute import recompute_run
from calib_checks.records import ItemRecord, TaskScores
from calib_checks.results import ResultsError, RunWriter, load_records
from calib_checks.sampling import look_sizes, sample_ids
from calib_checks.sources import SourceContext
from calib_checks.sources.registry import open_source
from calib_checks.tasks import get_task
from tests.test_lmeval import sample_line, write_run

REPO = Path(__file__).resolve().parent.parent
N_DOCS = 300
#: Margins no pair of these models comes near; `min_items` at the budget keeps a comparison from passing before
#: its last look (a case under min_items cannot pass), so it runs every look.
WIDE = """
[default]
max_increase = 0.9
min_items = 130
[metric.accuracy]
gate = false
max_increase = 0.9
[metric.brier]
gate = false
max_increase = 0.9
[metric.nll]
gate = false
max_increase = 0.9
"""


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    path = tmp_path / "wide.toml"
    path.write_text(WIDE)
    return path


def piqa_rows(first: int, n: int) -> list[dict]:
    return [{"goal": f"Goal number {i}?", "sol1": f"Do the first thing {i}.", "sol2": f"Do the other thing {i}.",
             "label": i % 2} for i in range(first, first + n)]


def lmeval_run(folder: Path, temperature: float, first: int = 0, n: int = N_DOCS, model: str = "org/model") -> Path:
    """lm-eval samples of `n` synthetic PIQA docs (ids validation-first ...), a calibrated model's log-likelihoods
    sharpened by 1/`temperature` (the same latent signal for every temperature: a paired comparison)."""
    spec = get_task("piqa")
    lines = []
    for doc_id, row in enumerate(piqa_rows(first, n)):
        item = spec.convert(row, f"validation-{first + doc_id}")
        z = np.random.default_rng([first + doc_id, 3]).normal(0.0, 1.0, 2)
        z[row["label"]] += 1.0
        lines.append(sample_line(first + doc_id, row, [(item.context, " " + o) for o in item.options],
                                 list(1.2 * z / temperature), row["label"]))
    return write_run(folder, {"piqa": lines}, model=model)


def options(tmp_path: Path, *pairs: str, **kwargs) -> GateOptions:
    return GateOptions(pairs=pairs, **{"tasks": ("piqa",), "thresholds": REPO / "thresholds-demo.toml",
                                       "report_dir": tmp_path / "reports", "metrics": ("ece", "overconfidence"),
                                       "extractors": ("continuation-sum",),
                                       **kwargs})


def judged_ids(run_dir: Path, label: str) -> set[str]:
    return {r["id"] for r in load_records(run_dir, label, "piqa") or []}


def test_two_lmeval_sides_judge_at_each_look_the_items_they_say(tmp_path: Path) -> None:
    base, sharp = lmeval_run(tmp_path / "base", 1.0), lmeval_run(tmp_path / "sharp", 0.5, model="org/sharp")
    outcome = run_gate(options(tmp_path, f"lm-eval:{base},lm-eval:{sharp}"))
    run = json.loads(outcome.results_path.read_text())
    (ending,) = run["run"]["sequential"]["comparisons"].values()
    assert ending["looks"] == look_sizes(100, N_DOCS) == [100, 200, 300]
    assert outcome.verdict == "regression" and ending["stopped_at"] < 3, ending
    assert {c.n_items for c in outcome.cases} == {ending["items"]}  # the cases say what the looks say
    assert not any(c.verdict == "error" for c in outcome.cases), [c.message for c in outcome.cases]
    labels = {m for m in run["models"]}
    expected = set(sample_ids([f"validation-{i}" for i in range(N_DOCS)], ending["items"], 0))
    assert all(judged_ids(outcome.results_path.parent, label) == expected for label in labels)
    assert recompute_run(outcome.results_path.parent) == (len(outcome.cases), [])


def test_a_scores_folder_against_a_checkpoint_runs_every_look_without_an_error(tmp_path: Path, wide: Path,
                                                                              tiny_model_dir: Path) -> None:
    """A `scores:` folder of 140 items (written by `calib_checks score`) against a checkpoint, default looks of
    100 and 140: no case errors at the interim look, the checkpoint is scored only on each look's items, and
    the run's records hold every item used."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in piqa_rows(0, 400)))
    folder = tmp_path / "tiny-scores"
    assert main(["score", "--model", str(tiny_model_dir), "--task", "piqa", "--limit", "140", "--data-source",
                 str(data_dir), "--device", "cpu", "--dtype", "float32", "--no-cache",
                 "--out", str(folder / "piqa.jsonl")]) == 0
    outcome = run_gate(options(tmp_path, f"scores:{folder},{tiny_model_dir}:temperature=0.5", data_source=str(data_dir),
                               device="cpu", dtype="float32", thresholds=wide, use_cache=False))
    assert not any(c.verdict == "error" for c in outcome.cases), [c.message for c in outcome.cases]
    run = json.loads(outcome.results_path.read_text())
    (ending,) = run["run"]["sequential"]["comparisons"].values()
    assert ending["looks"] == [100, 140] and ending["stopped_at"] == 2  # nothing fails under these margins
    held = [json.loads(line)["id"] for line in (folder / "piqa.jsonl").read_text().splitlines()]
    checkpoint = next(label for label in run["models"] if label != "tiny-scores")
    run_dir = outcome.results_path.parent
    assert judged_ids(run_dir, "tiny-scores") == judged_ids(run_dir, checkpoint) == set(held)
    # No rescoring across looks without the user's cache: 140 items forwarded, not 100 + 140.
    computed = [e["computed"] for e in run["run"]["scoring"] if e["model"] == checkpoint]
    assert sum(computed) == 140 and computed == [100, 40], run["run"]["scoring"]
    assert not (run_dir / ".scores").exists()  # the run's private cache is scratch
    assert recompute_run(run_dir) == (len(outcome.cases), [])


def test_an_lmeval_side_against_a_checkpoint_and_records_merged_across_pairs(tmp_path: Path, wide: Path,
                                                                           tiny_model_dir: Path) -> None:
    """One checkpoint paired with two lm-eval runs on different documents: each pair is judged on its own run's
    items at every look, the checkpoint's records hold both sets (merged, never overwritten), and every verdict
    is recomputed from the run directory alone, by the command line too."""
    first = lmeval_run(tmp_path / "first", 1.0, first=0, n=150)
    second = lmeval_run(tmp_path / "second", 1.0, first=400, n=130, model="org/other")
    outcome = run_gate(options(tmp_path, f"a=lm-eval:{first},{tiny_model_dir}",
                               f"b=lm-eval:{second},{tiny_model_dir}", device="cpu", dtype="float32",
                               thresholds=wide, allow_same_model=True))
    assert not any(c.verdict == "error" for c in outcome.cases), [c.message for c in outcome.cases]
    run = json.loads(outcome.results_path.read_text())
    endings = run["run"]["sequential"]["comparisons"]
    assert endings["a"]["looks"] == [100, 150] and endings["b"]["looks"] == [100, 130]
    assert {c.pair: c.n_items for c in outcome.cases} == {"a": 150, "b": 130}
    checkpoint = next(label for label in run["models"] if label.startswith("tiny"))
    ids = judged_ids(outcome.results_path.parent, checkpoint)
    assert ids == {f"validation-{i}" for i in [*range(150), *range(400, 530)]}
    assert recompute_run(outcome.results_path.parent) == (len(outcome.cases), [])
    assert main(["recompute", str(outcome.results_path.parent)]) == 0


def test_recompute_catches_a_record_changed_after_the_run(tmp_path: Path) -> None:
    base, sharp = lmeval_run(tmp_path / "base", 1.0), lmeval_run(tmp_path / "sharp", 0.7, model="org/sharp")
    outcome = run_gate(options(tmp_path, f"lm-eval:{base},lm-eval:{sharp}"))
    path = next((outcome.results_path.parent / "records").glob("sharp*/piqa.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["scores"]["continuation-sum"] = [0.0, 0.0]  # a tampered file: every option equally likely
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n, differences = recompute_run(outcome.results_path.parent)
    assert differences and {d.field for d in differences} >= {"change"}
    assert main(["recompute", str(outcome.results_path.parent)]) == 1


def test_a_side_lacking_asked_items_is_one_clear_error(tmp_path: Path) -> None:
    """The first side holding records decides the items; a side that lacks some of them errors its cases with the
    count and its name, at every look, instead of being judged on a different set."""
    whole, part = lmeval_run(tmp_path / "whole", 1.0), lmeval_run(tmp_path / "part", 1.0, n=250, model="org/p")
    outcome = run_gate(options(tmp_path, f"lm-eval:{whole},lm-eval:{part}"))
    assert outcome.verdict == "error" and {c.verdict for c in outcome.cases} == {"error"}
    assert all("side part lacks" in c.message and "items of piqa" in c.message for c in outcome.cases), \
        outcome.cases[0].message
    # The other order: the smaller run decides, the larger holds every one of its items.
    fine = run_gate(options(tmp_path, f"lm-eval:{part},lm-eval:{whole}"))
    assert not any(c.verdict == "error" for c in fine.cases)
    assert max(c.n_items for c in fine.cases) <= 250


def test_the_limit_and_the_looks_are_the_gates_for_every_source(tmp_path: Path) -> None:
    """--calib-limit samples among what a read-in side holds, by the one rule of calib_checks/sampling.py."""
    base, sharp = lmeval_run(tmp_path / "base", 1.0), lmeval_run(tmp_path / "sharp", 1.0, model="org/sharp")
    outcome = run_gate(options(tmp_path, f"lm-eval:{base},lm-eval:{sharp}", limit=120, sequential=False))
    assert {c.n_items for c in outcome.cases} == {120}
    expected = set(sample_ids([f"validation-{i}" for i in range(N_DOCS)], 120, 0))
    assert judged_ids(outcome.results_path.parent, "base") == expected


def test_decide_items_unit(tmp_path: Path) -> None:
    base = open_source(f"lm-eval:{lmeval_run(tmp_path / 'b', 1.0, n=5)}", SourceContext())

    def no_data():
        raise AssertionError("the data set is not loaded when a side holds the items' texts")

    chosen = decide_items("piqa", [("b", base)], no_data, limit=3, seed=0)
    assert chosen.decided_by == "side b" and len(chosen.ids) == 3 and chosen.data.item_ids == chosen.ids
    assert chosen.look(2).ids == tuple(sample_ids(list(chosen.ids), 2, 0)) and chosen.look(9) is chosen
    with pytest.raises(GateError, match="has no items"):  # no side holds records: the (empty) data set decides
        decide_items("piqa", [], lambda: chosen.data.restricted([]), limit=None, seed=0)


def test_records_are_merged_and_a_second_answer_is_refused(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "run")

    def scores(values: dict[str, float]) -> TaskScores:
        return TaskScores(model_label="m", model_identity={}, task="piqa", data_fingerprint="",
                          records=[ItemRecord(id=i, gold=0, scores={"choice": [v, 0.0]}, n_options=2)
                                   for i, v in values.items()])

    writer.write_records(scores({"a": 1.0, "b": 2.0}))
    path = writer.write_records(scores({"b": 2.0, "c": 3.0}))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    assert json.loads(path.with_suffix(".meta.json").read_text())["n_records"] == 3
    with pytest.raises(ResultsError, match="other numbers"):
        writer.write_records(scores({"c": 4.0}))


def test_the_example_csv_source_follows_the_contract(tmp_path: Path) -> None:
    """The template third parties copy: it returns the asked items, never its whole file, and never samples."""
    import sys

    sys.path.insert(0, str(REPO / "examples"))
    try:
        from csv_source import CsvSource
    finally:
        sys.path.remove(str(REPO / "examples"))
    folder = tmp_path / "csv"
    folder.mkdir()
    lines = ["id,gold,extractor,option,score"] + [f"q{i},0,choice,{k},{-k - i / 10}" for i in range(5)
                                                  for k in range(2)]
    (folder / "piqa.csv").write_text("\n".join(lines) + "\n")
    source = CsvSource(f"csv:{folder}", SourceContext())
    assert list(source.item_ids("piqa")) == [f"q{i}" for i in range(5)]
    assert source.scores("piqa", None, ["q3", "q1"]).ids == ["q3", "q1"]
    assert source.scores("piqa", None, ["q3", "nope"]).ids == ["q3"]  # the gate names what is missing


def test_gate_cache_is_private_to_the_run_without_the_users(tmp_path: Path) -> None:
    gate = Gate(options(tmp_path, f"lm-eval:{lmeval_run(tmp_path / 'x', 1.0, n=3)},"
                                  f"lm-eval:{lmeval_run(tmp_path / 'y', 0.5, n=3, model='o/y')}", use_cache=False))
    cache = gate._cache()
    assert cache is not None and Path(cache.root).is_relative_to(Path(tmp_path / "reports"))

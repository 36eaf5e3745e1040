"""The QA page and temperature scaling, on a realistic run directory built from synthetic records.

The run is internally consistent: each item has latent calibrated logits z (gold drawn from softmax(z)); a
model at temperature tau scores options with (z + extractor noise) / tau, so the base (tau = 1) is nearly
calibrated and the aligned models (tau < 1) are over-confident by a known factor. The cases are computed from
those records with the real metrics and bootstrap. One item carries hostile text and is the aligned model's
most confident mistake.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from markupsafe import escape
import pytest

from calib_checks import metrics, recalibration
from calib_checks.__main__ import main
from calib_checks.data import TaskData
from calib_checks.errors import CalibChecksError
from calib_checks.recalibration import RecalibrationError, cross_fit, fit_temperature, repair, split_halves
from calib_checks.modelview import fmt, fmt_signed
from calib_checks.report import confidence_histogram, reliability_plot, render_report
from calib_checks.results import ResultsError, RunWriter, load_results
from calib_checks.records import EXTRACTORS, ItemRecord, ScoreStats, TaskScores
from calib_checks.tasks import Item
from calib_checks.thresholds import load_thresholds
from calib_checks.family import apply_family
from calib_checks.verdicts import judge_case

HOSTILE_SCRIPT = "<script>document.title='PWNED'</script>"
HOSTILE_SVG = "</svg><b>bold</b>"
HOSTILE_CONTEXT = "Question: <img src=x onerror=\"document.title='PWNED2'\"> which one?\nAnswer:"
BASE, ALIGNED, HOT = "base-135M", "aligned-135M", "aligned-hot"
TEMPERATURES = {BASE: 1.0, ALIGNED: 0.5, HOT: 0.35}
PAIRS = [
    {"name": "instruct", "base": BASE, "aligned": ALIGNED},
    {"name": "instruct-hot", "base": BASE, "aligned": HOT},
]
TASKS = ("arc_easy", "piqa")
GATED_EXTRACTORS = ("continuation-sum", "continuation-min", "choice")
GATED_METRICS = ("ece", "sce", "accuracy")
_OPTION_COUNTS = {"arc_easy": (4, 4, 3, 4, 5, 4), "piqa": (2,)}


def _latent(task: str, index: int, seed: int) -> tuple[np.ndarray, int]:
    counts = _OPTION_COUNTS[task]
    rng = np.random.default_rng([seed, index, len(task)])
    z = rng.normal(0.0, 1.5, size=counts[index % len(counts)])
    p = np.exp(z - z.max())
    return z, int(rng.choice(len(z), p=p / p.sum()))


def make_task_data(task: str, n: int, seed: int = 0) -> TaskData:
    """`n` synthetic items of `task`; item 0 of arc_easy holds hostile text and gold option C."""
    items = []
    for i in range(n):
        z, gold = _latent(task, i, seed)
        options = tuple(f"answer {j} to {task} question {i}" for j in range(len(z)))
        context = f"Question: synthetic {task} question {i}?\nAnswer:"
        if task == "arc_easy" and i == 0:
            options = (HOSTILE_SCRIPT, HOSTILE_SVG, "plain answer", "fish & chips")
            context, gold = HOSTILE_CONTEXT, 2
        letters = tuple("ABCDE"[: len(options)])
        prompt = context + "".join(f"\n{l}. {o}" for l, o in zip(letters, options)) + "\nAnswer:"
        items.append(Item(f"{task}-{i:04d}", gold, options, context, prompt, letters))
    return TaskData(task, tuple(items), f"synthetic:{task}", f"{seed:064x}", 2 * n, n, seed)


def records_for_model(data: TaskData, temperature: float, seed: int = 0) -> list[ItemRecord]:
    """ItemRecords of a model at `temperature` (1 = calibrated) on `data`, for every extractor."""
    records = []
    for i, item in enumerate(data.items):
        z, _ = _latent(data.task, i, seed)
        scores = {}
        for j, extractor in enumerate(EXTRACTORS):
            noise = np.random.default_rng([seed, i, j, 7]).normal(0.0, 0.25, size=len(item.options))
            s = (z + noise) / temperature - 3.0 * (j + 1)  # log-scores; the shift does not change the softmax
            if item.options[0] == HOSTILE_SCRIPT and temperature < 1:
                s = np.array([8.0, 0.0, 0.0, 0.0]) / temperature  # confidently wrong, on the hostile option
            scores[extractor] = s.tolist()
        records.append(
            ItemRecord(item.id, item.gold, scores, len(item.options), [3] * len(item.options),
                       [32 + k for k in range(len(item.options))])
        )
    return records


THRESHOLDS = """\
[default]
max_increase = 0.05
n_resamples = 1000
min_items = 50

[metric.accuracy]
gate = false
"""


def build_run(
    report_dir: Path, run_id: str, complete: bool = True, n_items: int = 150, pairs: list[dict] = PAIRS
) -> RunWriter:
    """Write a whole run directory (items, records, results.json, report.html) as the plugin would.

    The cases are judged by the real gate (`verdicts.judge_case` under a thresholds.toml written here).
    """
    writer = RunWriter(report_dir, run_id)
    thresholds_file = Path(report_dir) / "thresholds.toml"
    thresholds_file.write_text(THRESHOLDS)
    thresholds = load_thresholds(thresholds_file)
    models = sorted({p["base"] for p in pairs} | {p["aligned"] for p in pairs})
    scores = {}
    for task in TASKS:
        data = make_task_data(task, n_items)
        writer.write_items(data)
        for label in models:
            scores[label, task] = TaskScores(
                label, {"path": f"/models/{label}", "dtype": "float32"}, task, data.fingerprint,
                records_for_model(data, TEMPERATURES[label]), ScoreStats(source="test scores"),
            )
            writer.write_records(scores[label, task])
    cases = [
        judge_case(scores[pair["base"], task], scores[pair["aligned"], task], extractor, metric,
                   thresholds.rule_for(task, extractor, metric), pair=pair["name"])
        for pair in pairs for task in TASKS for extractor in GATED_EXTRACTORS for metric in GATED_METRICS
    ]
    identity = {
        "models": {label: {"spec": f"org/{label}", "revision": "main"} for label in models},
        "dtype": "float32", "device": "cpu", "thresholds_file": str(thresholds_file),
        "argv": ["pytest", "tests_models", "--model-pair", f"{BASE},{ALIGNED}"],
        "seed": 0, "data_source": "synthetic <auto>", "selection": {"tasks": list(TASKS)},
    }
    writer.finish(identity, pairs, {}, apply_family(cases), complete)
    render_report(writer.run_dir)  # as calib_checks.gate does: persistence first, then presentation
    writer.publish()
    return writer


class _Rows(HTMLParser):
    """Text of the cells of every <tr> of the page's tables that carry a given class."""

    def __init__(self, table_class: str) -> None:
        super().__init__()
        self.table_class, self.depth, self.rows, self.cell = table_class, 0, [], None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table":
            self.depth = self.depth + 1 if (self.depth or self.table_class in classes) else 0
        elif self.depth and tag == "tr":
            self.rows.append({"class": classes, "cells": []})
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1]["cells"].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _table_rows(page: str, table_class: str) -> list[dict]:
    parser = _Rows(table_class)
    parser.feed(page)
    return parser.rows


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    writer = build_run(tmp_path_factory.mktemp("reports"), "20260102T030405Z-abcdef")
    page = (writer.run_dir / "report.html").read_text(encoding="utf-8")
    return writer.run_dir, load_results(writer.run_dir), page


# ------------------------------------------------------------------------------------------------ the page


def test_banner_says_the_verdict_and_why(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    assert results["summary"]["fail"] > 0 and results["verdict"] == "regression"
    banner = re.search(r'<section class="banner banner-(\w+)".*?</section>', page, re.S)
    assert banner and banner.group(1) == "regression"
    assert ">REGRESSION<" in banner.group(0)
    assert escape(results["verdict_reason"]) in banner.group(0)
    assert "<title>REGRESSION" in page


def test_every_case_has_its_row_with_numbers_rule_and_verdict(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    rows = [r for r in _table_rows(page, "matrix") if len(r["cells"]) == 12 and r["cells"][2] != "metric"]
    assert len(rows) == len(results["cases"])
    by_pair = {p["name"]: [c for c in results["cases"] if c["pair"] == p["name"]] for p in results["pairs"]}
    matched = 0
    for cases in by_pair.values():
        for case in cases:
            display = metrics.METRICS[case["metric"]].display_name
            wanted = [display, fmt(case["base_value"]), fmt(case["aligned_value"]), fmt_signed(case["change"])]
            hits = [r for r in rows if r["cells"][2:6] == wanted and r["cells"][11] == case["verdict"]]
            assert hits, f"no row for {case['pair']} {case['task']} {case['extractor']} {case['metric']}"
            row = hits[0]
            assert row["class"] == [f"row-{case['verdict']}"] or f"row-{case['verdict']}" in row["class"]
            assert fmt_signed(case["ci_low"]) in row["cells"][6] and fmt_signed(case["ci_high"]) in row["cells"][6]
            assert row["cells"][8] == fmt(case["p_adjusted"])  # the family-adjusted p-value
            assert row["cells"][10] == case["rule_source"]
            gated = case["metric"] != "accuracy"
            assert row["cells"][9] == ("≤ 0.05" if gated else "report only")
            matched += 1
    assert matched == len(results["cases"])


def test_at_a_glance_grid_has_one_coloured_cell_per_case(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    cells = re.findall(r'<td class="num cell-([a-z-]+)" title="[^"]*">([^<]*)</td>', page)
    assert sorted(v for v, _ in cells) == sorted(c["verdict"] for c in results["cases"])
    assert sorted(text for _, text in cells) == sorted(fmt_signed(c["change"]) for c in results["cases"])


def test_needs_attention_lists_each_failure_with_its_reason(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    failed = [c for c in results["cases"] if c["verdict"] == "fail"]
    rows = [r["cells"] for r in _table_rows(page, "flag-list") if r["cells"][0] != "pair"]
    assert len(rows) == len(failed) > 0
    for case in failed:
        why = f"worsening clearly above 0.05 (adjusted p {fmt(case['p_adjusted'])})"
        assert [case["pair"], case["task"], case["extractor"], fmt_signed(case["change"]), "fail", why] in [
            [r[0], r[1], r[2], r[6], r[9], r[10]] for r in rows
        ]


def test_identity_is_shown(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    for needle in (results["run_id"], "float32", "cpu", results["run"]["thresholds"]["sha256"], "org/aligned-hot",
                   "synthetic:arc_easy", "--model-pair", results["run"]["versions"]["python"],
                   "synthetic <auto>", '{"tasks": ["arc_easy", "piqa"]}'):
        assert escape(needle) in page, needle


def test_charts_are_inline_svg_per_task_and_extractor(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    per_pair = len(TASKS) * len(EXTRACTORS)  # every extractor in the records gets a diagram
    assert page.count('<svg class="chart"') == 2 * per_pair * len(PAIRS)  # reliability + histogram
    assert page.count("<svg") == page.count("</svg>")
    assert 'class="over-region"' in page and 'class="diagonal"' in page
    assert page.count('class="gap gap-over"') > page.count('class="gap gap-under"')  # aligned is over-confident
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<script" not in page and "<link" not in page  # one self-contained file, no script


def test_reliability_geometry_puts_over_confidence_below_the_diagonal() -> None:
    probs = np.tile([0.9, 0.1], (10, 1))  # confidence 0.9 for both models
    right = np.zeros(10, dtype=int)  # base: accuracy 1.0 (under-confident)
    half = np.array([0] * 5 + [1] * 5)  # aligned: accuracy 0.5 (over-confident)
    bins = {"base": metrics.reliability_bins(probs, right, 10), "aligned": metrics.reliability_bins(probs, half, 10)}
    plot = reliability_plot(bins, {"base": "b", "aligned": "a"}, 10)
    base, aligned = plot.series
    (point,) = aligned.points
    assert point.x == pytest.approx(46 + 250 * 0.9) and point.y == pytest.approx(14 + 250 * (1 - 0.5))
    assert base.points[0].y == pytest.approx(14 + 250 * (1 - 1.0))
    (gap,) = plot.gaps
    assert gap.kind == "over" and gap.h == pytest.approx(250 * 0.4)  # from accuracy 0.5 up to confidence 0.9
    assert gap.y == pytest.approx(14 + 250 * (1 - 0.9))
    hist = confidence_histogram(bins, {"base": "b", "aligned": "a"})
    assert len(hist.bars) == 2 and all(bar.h == pytest.approx(90.0) for bar in hist.bars)


def test_accuracy_and_calibration_side_by_side_and_sce_detail(run: tuple[Path, dict, str]) -> None:
    run_dir, results, page = run
    rows = _table_rows(page, "summary")
    case = next(c for c in results["cases"] if c["pair"] == "instruct" and c["task"] == "piqa"
                and c["extractor"] == "choice" and c["metric"] == "sce")
    acc = next(c for c in results["cases"] if c["pair"] == "instruct" and c["task"] == "piqa"
               and c["extractor"] == "choice" and c["metric"] == "accuracy")
    expected = [
        "choice", fmt(acc["base_value"]), fmt(acc["aligned_value"]), fmt_signed(acc["change"]),
        fmt(case["base_value"]), fmt(case["aligned_value"]), fmt_signed(case["change"]),
    ]
    assert expected in [r["cells"][:4] + r["cells"][7:10] for r in rows]
    # The per-class table's mean is the SCE of the case: the detail adds up to the gated number.
    sce_rows = [r for r in _table_rows(page, "classwise") if r["cells"][0] == "SCE (mean)"]
    assert ["SCE (mean)", "", fmt(case["base_value"]), fmt(case["aligned_value"])] in [r["cells"][:4] for r in sce_rows]
    arc_classes = {r["cells"][0] for r in _table_rows(page, "classwise")}
    assert {"option A", "option E"} <= arc_classes  # ARC's 5-option item gives SCE a fifth class


def test_most_confident_mistakes_show_escaped_option_text(run: tuple[Path, dict, str]) -> None:
    _, _, page = run
    rows = [r for r in _table_rows(page, "wrong") if r["cells"][0].startswith("arc_easy-")]
    first = rows[0]["cells"]
    assert first[0] == "arc_easy-0000"
    assert first[2] == "C. plain answer"
    assert first[3] == f"A. {HOSTILE_SCRIPT}"  # shown as text once the page is parsed
    assert float(first[4]) > 0.99


def test_hostile_text_is_escaped_everywhere(run: tuple[Path, dict, str]) -> None:
    _, _, page = run
    for raw in (HOSTILE_SCRIPT, HOSTILE_SVG, "<img src=x", "<b>bold</b>"):
        assert raw not in page, raw
    assert "&lt;script&gt;document.title=&#39;PWNED&#39;&lt;/script&gt;" in page
    assert "&lt;/svg&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    assert "Question: &lt;img src=x onerror=&#34;document.title=&#39;PWNED2&#39;&#34;&gt; which one?" in page


def test_ranking_of_pairs_by_change(run: tuple[Path, dict, str]) -> None:
    _, results, page = run
    assert 'id="ranking"' in page
    rows = _table_rows(page, "ranking")
    # The first table is ECE with continuation-sum; hotter aligned model => larger change => rank 1 everywhere.
    header = rows[0]["cells"]
    assert header[:2] == ["pair", "mean rank"] and header[2:] == list(TASKS)
    ranked = [r["cells"] for r in rows[1:3]]
    changes = {
        (c["pair"], c["task"]): c["change"] for c in results["cases"]
        if c["metric"] == "ece" and c["extractor"] == "continuation-sum"
    }
    for task_index, task in enumerate(TASKS):
        order = sorted(("instruct", "instruct-hot"), key=lambda p: -changes[p, task])
        for rank, pair in enumerate(order, start=1):
            cell = next(r for r in ranked if r[0] == pair)[2 + task_index]
            assert cell.startswith(f"#{rank} {fmt_signed(changes[pair, task])}")
    assert ranked[0][0] == "instruct-hot"


def test_no_ranking_with_a_single_pair(tmp_path: Path) -> None:
    writer = build_run(tmp_path, "run-1", n_items=40, pairs=PAIRS[:1])
    assert 'id="ranking"' not in (writer.run_dir / "report.html").read_text()


def test_temperature_scaling_figures_match_the_records(run: tuple[Path, dict, str]) -> None:
    run_dir, _, page = run
    rows = [r["cells"] for r in _table_rows(page, "temperature")]
    records = [json.loads(x) for x in (run_dir / "records" / ALIGNED / "arc_easy.jsonl").read_text().splitlines()]
    k = max(len(r["scores"]["continuation-sum"]) for r in records)
    scores = np.full((len(records), k), -np.inf)
    for i, r in enumerate(records):
        scores[i, : len(r["scores"]["continuation-sum"])] = r["scores"]["continuation-sum"]
    fit = cross_fit(scores, np.array([r["gold"] for r in records]), [r["id"] for r in records], n_bins=15)
    assert fit.temperature > 1.5  # aligned = base sharpened by 1/0.5: over-confident
    assert fit.ece_after < fit.ece_before
    expected = ["aligned", fmt(fit.temperature, 3), f"{fit.half_temperatures[0]:.3f} / {fit.half_temperatures[1]:.3f}",
                fmt(fit.ece_before), fmt(fit.ece_after)]
    assert expected in rows
    # The repair verdict itself (the page's static "How to read" text names all three): one of them, with its css.
    import re

    from calib_checks.recalibration import REPAIRS

    shown = re.findall(r'<span class="repair repair-[a-z-]+"[^>]*>([^<]+)</span>', page)
    assert shown and set(shown) <= set(REPAIRS), shown


# ------------------------------------------------------------------------------- incomplete runs, the CLI


def test_incomplete_run_says_so_loudly(tmp_path: Path) -> None:
    writer = build_run(tmp_path, "run-1", complete=False, n_items=40)
    page = (writer.run_dir / "report.html").read_text()
    assert 'class="banner banner-incomplete"' in page and ">INCOMPLETE<" in page
    assert "did NOT finish" in page
    assert "<title>INCOMPLETE" in page
    assert not (tmp_path / "latest").exists()


def test_missing_records_and_items_still_render_and_say_so(run: tuple[Path, dict, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(run[0], run_dir)
    (run_dir / "records" / HOT / "piqa.jsonl").unlink()
    shutil.rmtree(run_dir / "items")
    page = render_report(run_dir).read_text()
    assert f"no per-item records for {HOT}: diagrams unavailable" in page
    assert "No item text was saved with this run" in page
    first = [r for r in _table_rows(page, "wrong") if r["cells"][0].startswith("arc_easy-")][0]["cells"]
    assert first[:4] == ["arc_easy-0000", "", "C", "A"]  # options by letter, no text


def test_records_of_different_data_are_flagged_not_drawn(run: tuple[Path, dict, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(run[0], run_dir)
    path = run_dir / "records" / ALIGNED / "piqa.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["gold"] = 1 - rows[3]["gold"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    page = render_report(run_dir).read_text()
    assert "disagree on the gold option of 1 item(s) (first: piqa-0003)" in page
    rows[3].pop("scores")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(CalibChecksError, match="malformed item record"):
        render_report(run_dir)


def test_cli_re_renders_without_inference(run: tuple[Path, dict, str], tmp_path: Path) -> None:
    run_dir, _, page = run
    out = tmp_path / "again.html"
    code = subprocess.run(
        [sys.executable, "-c",
         "import sys; from calib_checks.__main__ import main; code = main(sys.argv[1:]); "
         "assert 'torch' not in sys.modules, 'the report imported torch'; sys.exit(code)",
         "report", str(run_dir), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert code.returncode == 0, code.stderr
    assert code.stdout.strip() == str(out)
    assert out.read_text() == page  # deterministic: the same saved run renders the same page


def test_cli_refuses_a_directory_without_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "results.json" in err and "calib-checks report: error:" in err
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not readable JSON"):
        render_report(tmp_path)


# ------------------------------------------------------------------------------------ temperature scaling


def _synthetic(n: int, tau: float, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores z / tau of calibrated logits z: the best temperature is tau's inverse... of 1/tau, i.e. 1/tau."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return z / tau, labels, [f"item-{i}" for i in range(n)]


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_fit_recovers_a_known_temperature(tau: float) -> None:
    scores, labels, _ = _synthetic(4000, tau)
    assert fit_temperature(scores, labels) == pytest.approx(1.0 / tau, rel=0.08)


def test_fit_is_the_minimum_of_the_nll() -> None:
    scores, labels, _ = _synthetic(500, 0.6, seed=3)
    t = fit_temperature(scores, labels)
    nll = recalibration.temperature_nll
    assert nll(scores, labels, t) <= min(nll(scores, labels, t * 1.01), nll(scores, labels, t / 1.01))
    assert nll(scores, labels, t) < nll(scores, labels, 1.0)


def test_cross_fit_repairs_a_sharpened_model_and_leaves_a_calibrated_one() -> None:
    sharp = cross_fit(*_synthetic(2000, 0.4, seed=1), n_bins=15)
    assert sharp.temperature == pytest.approx(2.5, rel=0.1)
    assert all(t == pytest.approx(2.5, rel=0.15) for t in sharp.half_temperatures)
    assert sharp.ece_before > 0.1 and sharp.ece_after < 0.05
    calibrated = cross_fit(*_synthetic(2000, 1.0, seed=1), n_bins=15)
    assert calibrated.temperature == pytest.approx(1.0, rel=0.1)
    assert calibrated.ece_after == pytest.approx(calibrated.ece_before, abs=0.02)
    assert not sharp.at_bound and not calibrated.at_bound


def test_padding_with_absent_options_changes_nothing() -> None:
    scores, labels, ids = _synthetic(600, 0.5, k=3, seed=2)
    padded = np.concatenate([scores, np.full((600, 2), -np.inf)], axis=1)
    assert fit_temperature(padded, labels) == pytest.approx(fit_temperature(scores, labels), rel=1e-6)
    assert cross_fit(padded, labels, ids) == cross_fit(scores, labels, ids)


def test_separable_scores_hit_the_bound_and_say_so() -> None:
    scores = np.tile([5.0, 0.0], (20, 1))
    fit = cross_fit(scores, np.zeros(20, dtype=int), [str(i) for i in range(20)])
    assert fit.at_bound and fit.temperature == pytest.approx(recalibration.T_BOUNDS[0], rel=1e-3)


def test_halves_depend_only_on_the_ids() -> None:
    ids = [f"q{i}" for i in range(101)]
    mask = split_halves(ids)
    assert mask.sum() == 50
    reordered = ids[::-1]
    assert dict(zip(reordered, split_halves(reordered))) == dict(zip(ids, mask))
    with pytest.raises(RecalibrationError, match="unique"):
        split_halves(["a", "a", "b", "c"])


def test_one_temperature_repairs_a_sharpened_model_but_not_a_mixed_one() -> None:
    """A model sharpened by one temperature is repaired by one; a model sharpened on half of its items and
    flattened on the other half is not (no single scale fixes both)."""
    scores, labels, ids = _synthetic(6000, 1.0, seed=3)
    sharpened = repair(scores / 0.5, scores, labels, ids, margin=0.01)
    assert sharpened.verdict == "repairable by one temperature" and sharpened.interval[1] <= 0.01
    assert sharpened.temperature == pytest.approx(2.0, rel=0.1)
    half = np.arange(len(labels)) % 2 == 0
    mixed = np.where(half[:, None], scores / 0.3, scores / 3.0)
    broken = repair(mixed, scores, labels, ids, margin=0.01)
    assert broken.verdict == "not repairable by one temperature" and broken.interval[0] > 0.01, broken
    few = repair(scores[:40] / 0.9, scores[:40], labels[:40], ids[:40], margin=0.01)
    assert few.verdict == "cannot tell"  # 40 items: the interval is wider than any conclusion


def test_bad_scores_are_refused() -> None:
    scores, labels, ids = _synthetic(20, 1.0)
    bad = scores.copy()
    bad[3, 1] = math.nan
    with pytest.raises(RecalibrationError, match="NaN"):
        fit_temperature(bad, labels)
    gold_absent = scores.copy()
    gold_absent[0, labels[0]] = -math.inf
    with pytest.raises(RecalibrationError, match="gold"):
        fit_temperature(gold_absent, labels)
    with pytest.raises(RecalibrationError, match="labels"):
        fit_temperature(scores, labels + 10)

"""`python -m calib_checks plan`: the worsening a model's items can detect and the items a margin needs, from the
gate's own standard errors; checked against what the gate measures on a pair."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from calib_checks.__main__ import main
from calib_checks.gate import run_gate
from calib_checks.planning import plan_from_run, plan_row
from tests.test_gate import EXTRACTORS, REPO, TASKS, correlated, draw, options, write_scores

N = 1500


@pytest.fixture(scope="module")
def independent(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A calibrated base and an equally calibrated aligned model with independent noise (rho = 0)."""
    root = tmp_path_factory.mktemp("plan")
    rng = np.random.default_rng(5)
    labels, base = draw(rng, N)
    return {"base": write_scores(root / "base", labels, base),
            "other": write_scores(root / "other", labels, correlated(base, 0.0, rng))}


def test_the_plan_predicts_the_gates_own_standard_errors(independent, tmp_path, capsys) -> None:
    """From the base alone (rho = 0), the predicted se of each case's change is the one the gate then measures on
    the pair, within the scatter of a bootstrap se (measured: 0.95 .. 1.09 of it here)."""
    d = independent
    outcome = run_gate(options(tmp_path, f"scores:{d['base']},scores:{d['other']}"))
    measured = {(c.task, c.extractor, c.metric): c.se for c in outcome.cases if c.rule["gate"]}
    assert main(["plan", f"scores:{d['base']}", "--tasks", ",".join(TASKS), "--metrics", "ece,sce,overconfidence",
                 "--thresholds", str(REPO / "thresholds.toml")]) == 0
    table = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    rows = {(r[0].strip("| "), r[1], r[2]): float(r[5]) for r in table if not r[0].startswith("|---")}
    assert set(rows) == set(measured) and len(rows) == len(TASKS) * len(EXTRACTORS) * 3
    ratios = [rows[key] / measured[key] for key in measured]
    print(f"plan se / gate se: {min(ratios):.2f} .. {max(ratios):.2f} over {len(ratios)} cases")
    assert 0.75 < min(ratios) and max(ratios) < 1.33, ratios


def test_from_a_run_the_detectable_worsening_is_the_cases_own(independent, tmp_path) -> None:
    d = independent
    outcome = run_gate(options(tmp_path, f"scores:{d['base']},scores:{d['other']}", metrics=("ece", "overconfidence")))
    rows = plan_from_run(outcome.results_path.parent, worsening=0.05)
    cases = {(c.task, c.extractor, c.metric): c for c in outcome.cases if c.verdict != "not-gated"}
    assert len(rows) == len(cases)
    for row in rows:
        case = cases[(row.task, row.extractor, row.metric)]
        assert row.detectable == pytest.approx(case.detectable, rel=1e-9)  # the gate's own formula and se
        # 4x the items halve the se: the worsening detectable there is the margin plus half the distance.
        quarter = plan_row(row.task, row.extractor, row.metric, 4 * N, row.se / 2, row.margin, 0.95, case.alpha,
                           case.family_size, 0.05)
        assert quarter.detectable - row.margin == pytest.approx((row.detectable - row.margin) / 2)
        assert math.isinf(plan_row(row.task, row.extractor, row.metric, N, row.se, row.margin, 0.95, case.alpha,
                                   case.family_size, row.margin / 2).items_for_worsening)


def test_plan_on_a_checkpoint_and_its_mistakes(tiny_model_dir: Path, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"goal": f"do thing {i}", "sol1": "the sun is a star", "sol2": "water boils", "label": i % 2}
            for i in range(40)]
    (data / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["plan", str(tiny_model_dir), "--tasks", "piqa", "--data-source", str(data), "--device", "cpu",
            "--thresholds", str(REPO / "thresholds.toml")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| piqa | choice | overconfidence | 40 |" in out and "correlation with it taken as 0" in out
    assert main(["plan"]) == 2 and "give one model's scores" in capsys.readouterr().err
    assert main([*args, "--correlation", "1.5"]) == 2 and "--correlation must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("worsening", ["nan", "inf", "0", "-0.01"])
def test_a_worsening_that_is_not_a_positive_number_is_one_clear_line(worsening, tmp_path, capsys) -> None:
    from calib_checks.__main__ import main

    assert main(["plan", "--from-run", str(tmp_path), "--worsening", worsening]) == 2
    assert "--worsening must be a positive number" in capsys.readouterr().err

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
from calib_checks.planning import Level, add_cli_arguments, plan_from_run, plan_from_scores, plan_row
from tests.test_gate import EXTRACTORS, REPO, TASKS, correlated, draw, options, write_scores

N = 1500


@pytest.fixture(scope="module")
def independent(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A calibrated base and an equally calibrated aligned model with independent noise (rho = 0)."""
    root = tmp_path_factory.mktemp("plan")
    rng = np.random.default_rng(5)
    labels, base = draw(rng, N)
    return {"base": write_scores(root / "base", labels, base),
            "other": write_scores(root / "other", labels, correlated(base, 0.0, rng)),
            "third": write_scores(root / "third", labels, correlated(base, 0.0, rng))}


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
    assert set(rows) == set(measured) and len(rows) == (len(TASKS) * 3 + 2) * len(EXTRACTORS)  # and pooled
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
        level = Level(case.level, 1.0, case.family_size)
        quarter = plan_row(row.task, row.extractor, row.metric, 4 * N, row.se / 2, row.margin, 0.95, level, 0.05)
        assert quarter.detectable - row.margin == pytest.approx((row.detectable - row.margin) / 2)
        assert math.isinf(plan_row(row.task, row.extractor, row.metric, N, row.se, row.margin, 0.95, level,
                                   row.margin / 2).items_for_worsening)


def test_a_pass_is_sized_at_the_upper_end_the_gate_passes_on() -> None:
    """The gate passes a case when `compared` is within the margin: the upper end of the rule's interval, and for
    over-confidence the sign-aware test's, each of whose two contrasts has its upper end one-sided at (1 - c) / 4.
    The quantile `upper_end_quantile` gives is the one in the gate's own `compared`, and plan sizes a pass with
    it: over-confidence needs about 21 % more items than an unsigned metric of the same se."""
    from calib_checks.metrics import normal_quantile, paired_bootstrap
    from calib_checks.thresholds import load_thresholds
    from calib_checks.verdicts import CONTRASTS, SIDES, judge_arrays, upper_end_quantile

    rng = np.random.default_rng(3)
    labels, noise = draw(rng, 600, {"piqa": 2})
    rules = load_thresholds(REPO / "thresholds.toml")
    probs = {}
    aligned = correlated(noise, 0.5, rng)
    for name, eps in (("base", noise[("piqa", "choice")]), ("aligned", aligned[("piqa", "choice")])):
        logits = 1.2 * (1.2 * np.eye(2)[labels["piqa"]] + eps)
        probs[name] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for metric in ("ece", "overconfidence"):
        rule = rules.rule_for("piqa", "choice", metric)
        decision = judge_arrays(probs["base"], probs["aligned"], labels["piqa"], metric, rule)
        boot = paired_bootstrap(metric, probs["base"], probs["aligned"], labels["piqa"], n_resamples=rule.n_resamples,
                                confidence=rule.confidence, n_bins=rule.n_bins)
        z = normal_quantile(upper_end_quantile(rule.confidence, metric == "overconfidence"))
        if metric == "ece":
            upper = boot.centre + z * boot.se
        else:  # |a| - |b| is bounded on each side by the smaller of its two contrasts' upper ends
            upper = max(min(c.centre + z * c.se for c in (boot.contrast(s, s * w) for _, w in CONTRASTS))
                        for _, s in SIDES)
        assert decision.compared == pytest.approx(upper, rel=1e-9), metric
    assert upper_end_quantile(0.95, False) == pytest.approx(0.975)
    assert upper_end_quantile(0.95, True) == pytest.approx(0.9875)
    level = Level(0.05, 1 / 12, 12)
    ece, oc = (plan_row("piqa", "choice", m, 500, 0.004, 0.01, 0.95, level, 0.05) for m in ("ece", "overconfidence"))
    assert oc.items_to_pass / ece.items_to_pass == pytest.approx(1.211, abs=1e-3)
    assert ece.items_to_pass == pytest.approx(500 * ((1.959964 + 0.841621) * 0.004 / 0.01) ** 2, rel=1e-5)


def _plan(side: str, *args: str) -> list:
    import argparse

    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return plan_from_scores(side, parser.parse_args(
        [side, "--tasks", ",".join(TASKS), "--metrics", "ece,overconfidence", "--no-cache", *args]))


def _truncated(folder: Path, out: Path, task: str, keep: int) -> Path:
    """A copy of the score folder with only the first `keep` items of `task` (every side's first lines are the same
    items: `write_scores` writes them in one order)."""
    out.mkdir()
    for path in folder.glob("*.jsonl"):
        lines = path.read_text().splitlines(keepends=True)
        (out / path.name).write_text("".join(lines[:keep] if path.stem == task else lines))
    return out


@pytest.mark.parametrize("scenario", ["pair, looks of the largest task", "chain of three", "family = case",
                                      "one look (--full)"])
def test_the_plan_tests_each_case_at_the_gates_own_level(scenario, independent, tmp_path) -> None:
    """The plan's level (the rate of the last look, the Holm family's size) is the one the gate then applies:
    looks from the family's largest task (piqa cut to 80 items, below the first look: alone it would have one),
    a chain's comparisons in one family, thresholds' family = "case", and --calib-full."""
    d = dict(independent)
    gate = {"sequential": True, "first_look": 100, "metrics": ("ece", "overconfidence")}
    plan: list[str] = []
    pairs: tuple[str, ...] = (f"scores:{d['base']},scores:{d['other']}",)
    if scenario.startswith("pair"):
        d = {k: _truncated(v, tmp_path / k, "piqa", 80) for k, v in d.items()}
        pairs = (f"scores:{d['base']},scores:{d['other']}",)
    elif scenario == "chain of three":
        gate["chains"] = (f"c=scores:{d['base']},scores:{d['other']},scores:{d['third']}",)
        pairs, plan = (), ["--chain", "3"]
    elif scenario == "family = case":
        rules = tmp_path / "case.toml"
        rules.write_text((REPO / "thresholds.toml").read_text().replace('family = "pair"', 'family = "case"', 1))
        gate["thresholds"], plan = rules, ["--thresholds", str(rules)]
    else:
        gate["sequential"], plan = False, ["--full"]
    outcome = run_gate(options(tmp_path, *pairs, **gate))
    judged = [c for c in outcome.cases if c.verdict != "not-gated"]
    assert judged and all("stopped early" not in c.message for c in judged)  # every case judged at the last look
    rows = _plan(f"scores:{d['base']}", *plan)
    # Each case's level at the last look: its weight of alpha (pooled cases first), spent over the looks.
    levels = {(c.task, c.extractor, c.metric): (c.level, c.family_size) for c in judged}
    assert {(r.task, r.extractor, r.metric): (pytest.approx(r.alpha, rel=1e-9), r.family_size) for r in rows} == levels
    assert {(r.task, r.extractor, r.metric) for r in rows} == {(c.task, c.extractor, c.metric) for c in judged}


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
    assert "its weight of the family's alpha in a family of 9 gated cases of a pair" in out  # one task: no pooled
    assert main([*args, "--chain", "1"]) == 2 and "--chain must be 2 (a pair) or more" in capsys.readouterr().err
    assert main(["plan"]) == 2 and "give one model's scores" in capsys.readouterr().err
    assert main([*args, "--correlation", "1.5"]) == 2 and "--correlation must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("worsening", ["nan", "inf", "0", "-0.01"])
def test_a_worsening_that_is_not_a_positive_number_is_one_clear_line(worsening, tmp_path, capsys) -> None:
    from calib_checks.__main__ import main

    assert main(["plan", "--from-run", str(tmp_path), "--worsening", worsening]) == 2
    assert "--worsening must be a positive number" in capsys.readouterr().err

"""thresholds.toml: schema, validation (fail closed, naming the key), most-specific-wins precedence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from calib_checks.thresholds import (
    BUILTIN,
    BUILTIN_POLICY,
    GatePolicy,
    Rule,
    ThresholdsError,
    load_thresholds,
    max_change,
    parse_thresholds,
)

SHIPPED = Path(__file__).resolve().parent.parent / "thresholds.toml"


def load(tmp_path: Path, text: str):
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return load_thresholds(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ThresholdsError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message, "one line"
    assert "thresholds.toml" in message, "names the file"
    return message


def test_shipped_file_loads_and_gates_ece_sce_and_overconfidence_only() -> None:
    thresholds = load_thresholds(SHIPPED)
    for task in ("arc_easy", "hellaswag", "medmcqa", "mmlu_stem", "mmlu_humanities", "piqa"):
        for extractor in ("continuation-sum", "continuation-min", "continuation-mean", "choice"):
            gated = {m for m in ("ece", "sce", "overconfidence", "accuracy", "brier", "nll")
                     if thresholds.rule_for(task, extractor, m).gate}
            assert gated == {"ece", "sce", "overconfidence"}
    ece = thresholds.rule_for("piqa", "choice", "ece")
    assert (ece.max_increase, ece.scale, ece.interval, ece.confidence, ece.n_resamples, ece.min_items) == (
        0.01, "none", "normal", 0.95, 2000, 200)
    sce = thresholds.rule_for("piqa", "choice", "sce")
    assert (sce.max_increase, sce.scale) == (0.01, "2/K")
    assert (sce.margin(2), sce.margin(4), sce.margin(5)) == (0.01, 0.005, 0.004)
    assert sce.source == "[metric.sce] > [default]"
    assert thresholds.rule_for("piqa", "choice", "overconfidence").margin(4) == 0.01
    assert thresholds.policy == GatePolicy(family="pair", alpha=0.05, on_inconclusive="pass")
    assert thresholds.policy.source == "[gate]"


def test_most_specific_table_wins_field_by_field(tmp_path: Path) -> None:
    thresholds = load(tmp_path, """
[default]
max_increase = 0.01
min_items = 100
[metric.sce]
max_increase = 0.005
[task.medmcqa]
min_items = 400
[task.medmcqa.extractor.choice]
min_items = 800
[metric.sce.task.medmcqa]
max_increase = 0.02
[task.medmcqa.extractor.choice.metric.sce]
interval = "basic"
""")
    plain = thresholds.rule_for("arc_easy", "choice", "ece")
    assert (plain.max_increase, plain.min_items, plain.interval) == (0.01, 100, "normal")
    assert plain.source == "[default]"
    assert plain.origins["n_bins"] == "built-in" and plain.n_bins == BUILTIN["n_bins"]

    deep = thresholds.rule_for("medmcqa", "choice", "sce")
    assert (deep.max_increase, deep.min_items, deep.interval) == (0.02, 800, "basic")
    assert deep.origins == {**deep.origins, "interval": "task.medmcqa.extractor.choice.metric.sce",
                            "min_items": "task.medmcqa.extractor.choice", "max_increase": "task.medmcqa.metric.sce"}
    # [default] set nothing that survived, so it is not a source of this rule.
    assert deep.source == ("[task.medmcqa.extractor.choice.metric.sce] > [task.medmcqa.extractor.choice] > "
                           "[task.medmcqa.metric.sce]")
    other = thresholds.rule_for("medmcqa", "continuation-sum", "sce")
    assert (other.max_increase, other.min_items) == (0.02, 400)
    assert thresholds.rule_for("piqa", "choice", "sce").max_increase == 0.005


def test_equally_specific_tables_that_disagree_are_a_conflict(tmp_path: Path) -> None:
    message = error(tmp_path, """
[default]
max_increase = 0.01
[metric.ece]
max_increase = 0.02
[task.piqa]
max_increase = 0.03
""")
    assert "[metric.ece]" in message and "[task.piqa]" in message and "max_increase" in message
    assert "[task.piqa.metric.ece]" in message, "names the table that would decide"
    # The deciding table resolves it; agreeing values are no conflict.
    resolved = load(tmp_path, """
[default]
max_increase = 0.01
[metric.ece]
max_increase = 0.02
[task.piqa]
max_increase = 0.03
[task.piqa.metric.ece]
max_increase = 0.025
""")
    assert resolved.rule_for("piqa", "choice", "ece").max_increase == 0.025
    agreeing = load(tmp_path, "[default]\nmax_increase = 0.01\n[metric.ece]\nmin_items = 50\n"
                              "[task.piqa]\nmin_items = 50\n")
    assert agreeing.rule_for("piqa", "choice", "ece").min_items == 50


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[default]\nmax_increse = 0.01\n", "did you mean 'max_increase'"),
        ("[default]\nmax_increase = 0.01\n[metric.eec]\ngate = false\n", "did you mean 'ece'"),
        ("[default]\nmax_increase = 0.01\n[task.arc_esay]\nmin_items = 5\n", "did you mean 'arc_easy'"),
        ("[default]\nmax_increase = 0.01\n[extractor.choise]\nmin_items = 5\n", "did you mean 'choice'"),
        ("[default]\nmax_increase = 0.01\n[metrics.ece]\ngate = false\n", "did you mean 'metric'"),
        ("[default]\nmax_increase = 0.01\n[task.piqa.task.piqa]\ngate = false\n", "appears twice"),
        ("[default]\nmax_increase = 0.01\n[task.piqa.metric.ece]\ngate = false\n[metric.ece.task.piqa]\ngate = true\n",
         "given twice"),
        ("[default]\nmax_increase = 'small'\n", "max_increase: expected a number"),
        ("[default]\nmax_increase = true\n", "max_increase: expected a number"),
        ("[default]\nmax_increase = -0.01\n", "out of range"),
        ("[default]\nmax_increase = nan\n", "out of range"),
        ("[default]\nmax_increase = 0.01\nconfidence = 95\n", "write 0.95"),
        ("[default]\nmax_increase = 0.01\nconfidence = 1.0\n", "confidence"),
        ("[default]\nmax_increase = 0.01\nestimate = 'lower'\n", "estimate was removed"),
        ("[default]\nmax_increase = 0.01\ninterval = 'bca'\n", "interval"),
        ("[default]\nmax_increase = 0.01\ninterval = 'normall'\n", "did you mean 'normal'"),
        ("[default]\nmax_increase = 0.01\nscale = '2/k'\n", "did you mean '2/K'"),
        ("[default]\nmax_increase = 0.01\nn_resamples = 10\n", "n_resamples"),
        ("[default]\nmax_increase = 0.01\nn_resamples = 999\n", "out of range [1000, 1000000]"),
        ("[default]\nmax_increase = 0.01\nmin_items = 100000000\n", "out of range [1, 10000000]"),
        ("[default]\nmax_increase = 0.01\nmax_relative_increase = 11\n", "out of range [0, 10]"),
        ("[gate]\nfamily = 'pairs'\n[default]\nmax_increase = 0.01\n", "did you mean 'pair'"),
        ("[gate]\nalpha = 0\n[default]\nmax_increase = 0.01\n", "[gate] alpha = 0.0 is out of range (0, 0.5]"),
        ("[gate]\nalpha = 0.6\n[default]\nmax_increase = 0.01\n", "alpha"),
        ("[gate]\nalpha = '5%'\n[default]\nmax_increase = 0.01\n", "alpha: expected a number"),
        ("[gate]\non_inconclusive = 'warn'\n[default]\nmax_increase = 0.01\n", "'pass', 'fail'"),
        ("[gate]\nfamilly = 'pair'\n[default]\nmax_increase = 0.01\n", "did you mean 'family'"),
        ("[gate]\nmax_increase = 0.01\n[default]\nmax_increase = 0.01\n", "rule fields such as max_increase"),
        ("gate = true\n[default]\nmax_increase = 0.01\n", "must be the table [gate]"),
        ("[gates]\nalpha = 0.05\n[default]\nmax_increase = 0.01\n", "did you mean 'gate'"),
        ("[default]\nmax_increase = 0.01\nn_resamples = 1000.5\n", "expected an integer"),
        ("[default]\nmax_increase = 0.01\nmin_items = 0\n", "min_items"),
        ("[default]\nmax_increase = 0.01\ngate = 'yes'\n", "gate: expected true or false"),
        ("[default]\nmax_increase = 0.01\nmax_relative_increase = -1\n", "max_relative_increase"),
        ("[default]\nmin_items = 10\n", "max_increase is required"),
        ("[metric.ece]\nmax_increase = 0.01\n", "no [default] table"),
        ("[default]\nmax_increase = 0.01\ntask = 'piqa'\n", "unknown key"),
        ("[default]\nmax_increase = 0.01\n[task]\npiqa = 3\n", "must be a table"),
        ("[default]\nmax_increase = 0.01\n[metric.ece\n", "not valid TOML"),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "metric"),
    [
        ("[default]\nmax_increase = 1.0\n", "ece"),  # ECE cannot rise by more than 1
        ("[default]\nmax_increase = 0.01\n[metric.sce]\nmax_increase = 1.0\n", "sce"),  # 2/K, K = 2
        ("[default]\nmax_increase = 0.01\n[metric.sce]\nmax_increase = 1.0\nscale = '2/K'\n", "sce"),
        ("[default]\nmax_increase = 0.01\n[metric.overconfidence]\nmax_increase = 1\n", "overconfidence"),
        ("[default]\nmax_increase = 0.01\n[metric.brier]\nmax_increase = 2\n", "brier"),
        ("[default]\nmax_increase = 0.01\n[metric.accuracy]\nmax_increase = 5\n", "accuracy"),
        ("[default]\nmax_increase = 0.01\n[metric.nll]\nmax_increase = 1e9\n", "nll"),
    ],
)
def test_gated_rule_that_can_never_fail_is_refused(tmp_path: Path, text: str, metric: str) -> None:
    message = error(tmp_path, text)
    assert "can never fail" in message and f"metric {metric}" in message


def test_every_registered_metric_has_a_bounded_worsening() -> None:
    from calib_checks.metrics import METRICS

    assert {m: max_change(m) for m in METRICS if not math.isfinite(max_change(m))} == {}
    # SCE's real bound is 2/K (K = 2 is the largest, used when the file is loaded); over-confidence is gated on
    # its absolute value, in [0, 1]
    assert (max_change("sce"), max_change("sce", 4), max_change("sce", 5)) == (1.0, 0.5, 0.4)
    assert max_change("overconfidence") == 1.0 and max_change("ece", 5) == 1.0


def test_policy_defaults_and_gate_table(tmp_path: Path) -> None:
    plain = load(tmp_path, "[default]\nmax_increase = 0.01\n")
    assert plain.policy == BUILTIN_POLICY == GatePolicy("pair", 0.05, "pass") and plain.policy.source == "built-in"
    custom = load(tmp_path, "[gate]\nfamily = 'case'\nalpha = 0.1\non_inconclusive = 'fail'\n"
                            "[default]\nmax_increase = 0.01\n")
    assert custom.policy.to_json() == {"family": "case", "alpha": 0.1, "on_inconclusive": "fail",
                                       "pooled_weight": 0.3, "pooled_metrics": ["ece", "overconfidence"],
                                       "metric_weights": {}}
    weighted = load(tmp_path, "[gate]\npooled_weight = 0.5\nmetric_weights = { ece = 1.5 }\n"
                              "[default]\nmax_increase = 0.01\n")
    assert (weighted.policy.pooled_weight, dict(weighted.policy.metric_weights)) == (0.5, {"ece": 1.5})
    assert GatePolicy(**weighted.policy.to_json()) == weighted.policy  # results.json round trip (recompute)
    for bad, message in (("pooled_weight = 1.0", "pooled_weight"), ("pooled_metrics = ['eec']", "did you mean"), ("metric_weights = { eec = 2.0 }", "did you mean"),
                         ("metric_weights = { ece = 0 }", "metric_weights.ece"), ("metric_weights = 2", "table")):
        with pytest.raises(ThresholdsError, match=message):
            load(tmp_path, f"[gate]\n{bad}\n[default]\nmax_increase = 0.01\n")
    assert custom.policy.blocks("inconclusive") and not plain.policy.blocks("inconclusive")
    for policy in (plain.policy, custom.policy):
        assert policy.blocks("fail") and policy.blocks("error")
        assert not policy.blocks("pass") and not policy.blocks("not-gated")


def test_margin_scales_with_k_and_the_relative_limit_only_adds_tolerance() -> None:
    rule = Rule(max_increase=0.01, scale="2/K", max_relative_increase=0.5)
    assert rule.margin(2) == 0.01 and rule.margin(4) == 0.005
    assert rule.margin(4, base_value=0.002) == 0.005  # 0.5 x 0.002 = 0.001 < 0.005
    assert rule.margin(4, base_value=-0.1) == pytest.approx(0.05)  # |base|
    assert rule.margin(4, base_value=0.0) == 0.005
    assert Rule(max_increase=0.02).margin(5) == 0.02


def test_never_failing_limit_is_fine_when_report_only(tmp_path: Path) -> None:
    thresholds = load(tmp_path, "[default]\nmax_increase = 0.01\n[metric.brier]\nmax_increase = 3\ngate = false\n")
    assert thresholds.rule_for("piqa", "choice", "brier").gate is False
    assert max_change("brier") == 2.0


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ThresholdsError, match="not found"):
        load_thresholds(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[default]")
    with pytest.raises(ThresholdsError, match="cannot be read"):
        load_thresholds(tmp_path / "bad.toml")


def test_rule_for_unknown_names_and_parse_from_dict() -> None:
    thresholds = parse_thresholds({"default": {"max_increase": 0.02}}, "inline.toml")
    rule = thresholds.rule_for("piqa", "choice", "ece")
    assert rule == Rule(max_increase=0.02, source="[default]")
    assert rule.origins == {**{key: "built-in" for key in BUILTIN}, "max_increase": "default"}
    with pytest.raises(ThresholdsError, match="unknown metric 'eec'.*did you mean 'ece'"):
        thresholds.rule_for("piqa", "choice", "eec")


def test_describe_states_direction_margin_and_both_criteria() -> None:
    rule = Rule(max_increase=0.02, max_relative_increase=0.5, interval="basic", confidence=0.9)
    assert rule.describe("accuracy") == ("margin max(0.02, 0.5 x |base|) on the accuracy decrease: fail when its "
                                         "adjusted one-sided p-value <= alpha, pass when the upper end of its 90% "
                                         "basic interval <= the margin")
    assert Rule(max_increase=0.01, scale="2/K").describe("sce").startswith("margin 0.01 x 2/K on the SCE increase")
    assert set(rule.to_json()) == {"max_increase", "max_relative_increase", "scale", "interval", "confidence",
                                   "n_resamples", "min_items", "n_bins", "gate"}

"""verdicts.judge_case: change, interval, direction, rule application, and fail-closed errors.

Scores here are synthetic probability tables (the verdict logic is pure arithmetic on them); the plugin's
tests (tests/test_plugin.py) run the whole gate on real forward passes of a tiny model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from calib_checks.metrics import paired_bootstrap
from calib_checks.scoring import EXTRACTORS, ItemRecord, TaskScores
from calib_checks.thresholds import Rule
from calib_checks.verdicts import CaseResult, VerdictError, judge_arrays, judge_case

K = 4
RULE = Rule(max_increase=0.01, min_items=50, n_resamples=400, source="[default]")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_scores(label: str, probs: np.ndarray, labels: np.ndarray, ids: list[str] | None = None) -> TaskScores:
    ids = ids or [f"test-{i}" for i in range(len(labels))]
    records = [
        ItemRecord(id=item_id, gold=int(y), scores={e: np.log(np.maximum(p, 1e-300)).tolist() for e in EXTRACTORS},
                   probs={e: p.tolist() for e in EXTRACTORS}, n_tokens=[1] * len(p), letter_token_ids=[1, 2, 3, 4])
        for item_id, y, p in zip(ids, labels, probs)
    ]
    return TaskScores(model_label=label, model_identity={"name": label}, task="arc_easy", data_fingerprint="f",
                      records=records)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Calibrated base logits (exact posteriors of a Gaussian signal) and gold labels, 400 items."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, 400)
    logits = 1.5 * (1.5 * np.eye(K)[labels] + rng.standard_normal((400, K)))
    return logits, labels


def test_identical_pair_passes_with_zero_change(data) -> None:
    logits, labels = data
    base = make_scores("base", softmax(logits), labels)
    result = judge_case(base, base, "choice", "ece", RULE, seed=3, pair="p")
    assert result.verdict == "pass"
    assert (result.change, result.ci_low, result.ci_high, result.compared) == (0.0, 0.0, 0.0, 0.0)
    assert result.base_value == result.aligned_value > 0
    assert (result.pair, result.base, result.aligned, result.n_items) == ("p", "base", "base", 400)


def test_sharpened_aligned_model_fails_with_a_complete_message(data) -> None:
    logits, labels = data
    base = make_scores("base", softmax(logits), labels)
    aligned = make_scores("aligned@T0.5", softmax(logits / 0.5), labels)
    result = judge_case(base, aligned, "choice", "ece", RULE, seed=0)
    boot = paired_bootstrap("ece", base.probs("choice"), aligned.probs("choice"), labels, 400, 0.95, 0)
    assert result.verdict == "fail"
    assert result.pair == "aligned@T0.5", "pair defaults to the aligned label"
    assert (result.ci_low, result.ci_high) == boot.basic and result.compared == boot.basic[0]
    assert result.change == pytest.approx(boot.aligned_value - boot.base_value)
    assert result.relative_change == pytest.approx(result.change / result.base_value)
    for part in (f"{result.base_value:.4f}", f"{result.aligned_value:.4f}", f"{result.change:+.4f}",
                 f"{result.ci_low:+.4f}", f"{result.ci_high:+.4f}", "n=400", "> 0.01", "[default]", "ECE", "choice"):
        assert part in result.message, part
    assert "\n" not in result.message


def test_percentile_interval_and_estimates(data) -> None:
    logits, labels = data
    base, aligned = softmax(logits), softmax(logits / 0.8)
    boot = paired_bootstrap("sce", base, aligned, labels, 400, 0.9, 5)
    for estimate, expected in (("point", boot.change), ("lower", boot.percentile[0]), ("upper", boot.percentile[1])):
        rule = Rule(max_increase=0.001, estimate=estimate, interval="percentile", confidence=0.9, n_resamples=400)
        decision = judge_arrays(base, aligned, labels, "sce", rule, seed=5)
        assert decision.compared == pytest.approx(expected)
        assert (decision.ci_low, decision.ci_high) == boot.percentile


def test_accuracy_worsening_is_a_decrease(data) -> None:
    logits, labels = data
    rng = np.random.default_rng(1)
    worse = logits + 4.0 * rng.standard_normal(logits.shape)  # noisier: less accurate
    base, aligned = softmax(logits), softmax(worse)
    boot = paired_bootstrap("accuracy", base, aligned, labels, 400, 0.95, 0)
    assert boot.change < -0.05
    rule = Rule(max_increase=0.02, n_resamples=400)
    decision = judge_arrays(base, aligned, labels, "accuracy", rule, seed=0)
    # The worsening's interval is the change's, negated: its lower end is -(upper end of the change's).
    assert decision.compared == pytest.approx(-boot.basic[1])
    assert decision.verdict == "fail"
    # The better model as "aligned": an improvement never fails.
    assert judge_arrays(aligned, base, labels, "accuracy", rule, seed=0).verdict == "pass"


def test_not_gated_below_min_items_and_report_only(data) -> None:
    logits, labels = data
    base = make_scores("b", softmax(logits[:30]), labels[:30])
    aligned = make_scores("a", softmax(logits[:30] / 0.3), labels[:30])
    small = judge_case(base, aligned, "choice", "ece", RULE, seed=0)
    assert small.verdict == "not-gated" and small.message.startswith("NOT GATED: n=30 < min_items=50")
    assert small.change is not None and small.change > 0.01, "still reported"
    report_only = judge_case(base, aligned, "choice", "ece", Rule(max_increase=0.01, min_items=1, gate=False), seed=0)
    assert report_only.verdict == "not-gated" and "report only" in report_only.message


def test_relative_limit_adds_tolerance_and_base_zero_has_no_relative_change() -> None:
    labels = np.zeros(100, dtype=int)
    right = np.tile([0.7, 0.1, 0.1, 0.1], (100, 1))
    wrong = np.tile([0.1, 0.7, 0.1, 0.1], (100, 1))
    # accuracy: base 1.0 -> aligned 0.0, a worsening of 1.0 = 100 % of the base value.
    assert judge_arrays(right, wrong, labels, "accuracy", Rule(0.02, max_relative_increase=0.5, min_items=1,
                                                                n_resamples=100)).verdict == "fail"
    assert judge_arrays(right, wrong, labels, "accuracy", Rule(0.02, max_relative_increase=1.5, min_items=1,
                                                                n_resamples=100)).verdict == "pass"
    # base accuracy 0: relative change undefined, the absolute limit alone decides.
    decision = judge_arrays(wrong, wrong, labels, "accuracy", Rule(0.02, max_relative_increase=1.5, min_items=1,
                                                                   n_resamples=100))
    assert decision.base_value == 0.0 and decision.relative_change is None and decision.verdict == "pass"


@pytest.mark.parametrize("problem", ["other-ids", "order", "labels", "empty", "nan-base", "nan-aligned", "task"])
def test_unjudgeable_cases_are_errors_never_passes(data, problem: str) -> None:
    logits, labels = data
    probs = softmax(logits[:60])
    y = labels[:60]
    ids = [f"test-{i}" for i in range(60)]
    base = make_scores("b", probs, y, ids)
    aligned = make_scores("a", probs, y, ids)
    if problem == "other-ids":
        aligned = make_scores("a", probs, y, ids[:-1] + ["test-999"])
    elif problem == "order":
        aligned = make_scores("a", probs, y, ids[1:] + ids[:1])
    elif problem == "labels":
        aligned = make_scores("a", probs, (y + 1) % K, ids)
    elif problem == "empty":
        base, aligned = make_scores("b", probs[:0], y[:0]), make_scores("a", probs[:0], y[:0])
    elif problem == "nan-base":
        bad = probs.copy()
        bad[7] = np.nan
        base = make_scores("b", bad, y, ids)
    elif problem == "nan-aligned":
        bad = probs.copy()
        bad[3, 1] = np.inf
        aligned = make_scores("a", bad, y, ids)
    else:
        aligned.task = "piqa"
    result = judge_case(base, aligned, "choice", "ece", Rule(max_increase=0.5, min_items=1, n_resamples=100))
    assert result.verdict == "error"
    assert result.message.startswith("ERROR ece on arc_easy (choice): ")
    assert result.change is None and result.compared is None
    json.dumps(result.to_json(), allow_nan=False)  # results.json refuses NaN
    if problem.startswith("nan"):
        assert "NaN/inf" in result.message and ("test-7" in result.message or "test-3" in result.message)


def test_invalid_probabilities_are_an_error_verdict(data) -> None:
    logits, labels = data
    probs = softmax(logits[:60]) * 1.5  # rows sum to 1.5
    result = judge_case(make_scores("b", probs, labels[:60]), make_scores("a", probs, labels[:60]), "choice", "ece",
                        Rule(max_increase=0.01, min_items=1, n_resamples=100))
    assert result.verdict == "error" and "sums to" in result.message


def test_misuse_raises(data) -> None:
    logits, labels = data
    s = make_scores("b", softmax(logits[:10]), labels[:10])
    with pytest.raises(VerdictError, match="unknown metric 'eec'"):
        judge_case(s, s, "choice", "eec", RULE)
    with pytest.raises(VerdictError, match="unknown extractor"):
        judge_case(s, s, "choices", "ece", RULE)


def test_case_result_json_round_trip(data) -> None:
    logits, labels = data
    s = make_scores("b", softmax(logits), labels)
    result = judge_case(s, make_scores("a", softmax(logits / 0.7), labels), "continuation-min", "sce", RULE, seed=9)
    data_json = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert CaseResult.from_json(data_json) == result
    assert data_json["rule"] == RULE.to_json() and data_json["rule_source"] == "[default]"
    with pytest.raises(VerdictError, match="unknown keys"):
        CaseResult.from_json({**data_json, "surprise": 1})

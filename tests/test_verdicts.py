"""verdicts.judge_case: change, interval, direction, rule application, and fail-closed errors.

Scores here are synthetic probability tables (the verdict logic is pure arithmetic on them); the plugin's
tests (tests/test_plugin.py) run the whole gate on real forward passes of a tiny model.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from calib_checks.family import apply_family
from calib_checks.metrics import paired_bootstrap
from calib_checks.records import EXTRACTORS, ItemRecord, RecordError, TaskScores
from calib_checks.thresholds import GatePolicy, Rule
from calib_checks.verdicts import VERDICTS, CaseResult, VerdictError, case_from_decision, judge_arrays, judge_case

K = 4
RULE = Rule(max_increase=0.01, min_items=50, n_resamples=1000, source="[default]")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_scores(label: str, probs: np.ndarray, labels: np.ndarray, ids: list[str] | None = None) -> TaskScores:
    ids = ids or [f"test-{i}" for i in range(len(labels))]
    records = [
        ItemRecord(id=item_id, gold=int(y), scores={e: np.log(np.maximum(p, 1e-300)).tolist() for e in EXTRACTORS},
                   n_options=len(p), n_tokens=[1] * len(p), letter_token_ids=[1, 2, 3, 4])
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
    assert (result.p_value, result.p_adjusted, result.se, result.margin) == (1.0, 1.0, 0.0, 0.01)
    assert result.base_value == result.aligned_value > 0
    assert (result.pair, result.base, result.aligned, result.n_items, result.n_options) == ("p", "base", "base", 400, 4)


def test_sharpened_aligned_model_fails_with_a_complete_message(data) -> None:
    logits, labels = data
    base = make_scores("base", softmax(logits), labels)
    aligned = make_scores("aligned@T0.5", softmax(logits / 0.5), labels)
    result = judge_case(base, aligned, "choice", "ece", RULE, seed=0)
    boot = paired_bootstrap("ece", base.probs("choice"), aligned.probs("choice"), labels, 1000, 0.95, 0)
    assert result.verdict == "fail"
    assert result.pair == "aligned@T0.5", "pair defaults to the aligned label"
    assert (result.ci_low, result.ci_high) == boot.normal and result.compared == boot.normal[1]
    assert result.worsening == pytest.approx(boot.centre) and result.se == boot.se > boot.replicate_sd
    assert result.p_value == boot.p_value(0.01) == result.p_adjusted <= 0.05
    assert result.mc_error == boot.mc_error("normal") and result.family == "case" and result.family_size == 1
    assert result.change == pytest.approx(boot.aligned_value - boot.base_value)
    assert result.relative_change == pytest.approx(result.change / result.base_value)
    for part in (f"{result.base_value:.4f}", f"{result.aligned_value:.4f}", f"{result.change:+.4f}",
                 f"{result.ci_low:+.4f}", f"{result.ci_high:+.4f}", "n=400", "K=4", "margin 0.01", "adjusted p=",
                 "[default]", "ECE", "choice", "FAIL"):
        assert part in result.message, part
    assert "\n" not in result.message


def test_basic_and_percentile_intervals_give_their_replicate_p_values(data) -> None:
    logits, labels = data
    base, aligned = softmax(logits), softmax(logits / 0.8)
    boot = paired_bootstrap("sce", base, aligned, labels, 1000, 0.9, 5)
    for interval in ("basic", "percentile", "normal"):
        rule = Rule(max_increase=0.002, interval=interval, confidence=0.9, n_resamples=1000)
        d = judge_arrays(base, aligned, labels, "sce", rule, seed=5)
        assert (d.ci_low, d.ci_high) == boot.interval(interval) and d.compared == boot.interval(interval)[1]
        assert d.p_value == boot.p_value(0.002, interval) and d.margin == 0.002
        assert d.mc_error == boot.mc_error(interval)


def test_accuracy_worsening_is_a_decrease(data) -> None:
    logits, labels = data
    rng = np.random.default_rng(1)
    worse = logits + 4.0 * rng.standard_normal(logits.shape)  # noisier: less accurate
    base, aligned = softmax(logits), softmax(worse)
    boot = paired_bootstrap("accuracy", base, aligned, labels, 1000, 0.95, 0)
    assert boot.change < -0.05
    rule = Rule(max_increase=0.02, n_resamples=1000)
    decision = judge_arrays(base, aligned, labels, "accuracy", rule, seed=0)
    # The worsening's interval is the change's, negated: its upper end is -(lower end of the change's).
    assert decision.compared == pytest.approx(-boot.normal[0]) and decision.worsening == pytest.approx(-boot.centre)
    assert decision.p_value == boot.p_value(0.02, "normal", higher_is_worse=False)
    assert decision.verdict == "fail"
    # The better model as "aligned": an improvement never fails.
    assert judge_arrays(aligned, base, labels, "accuracy", rule, seed=0).verdict == "pass"


def test_equally_calibrated_pair_on_few_items_is_inconclusive_and_says_what_it_could_detect(data) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, K, 300)
    draw = lambda: 1.5 * (1.5 * np.eye(K)[labels] + rng.standard_normal((300, K)))  # noqa: E731
    result = judge_case(make_scores("b", softmax(draw()), labels), make_scores("a", softmax(draw()), labels),
                        "choice", "ece", RULE, seed=0)
    assert result.verdict == "inconclusive" and result.gated
    assert result.p_value > 0.05 and result.compared > result.margin
    z = 1.6448536269514722 + 0.8416212335729143  # z_(1 - 0.05) + z_0.8: a family of one
    assert result.detectable == pytest.approx(0.01 + z * result.se)
    assert result.message.startswith("INCONCLUSIVE arc_easy choice: ")
    assert f"detect a worsening of {result.detectable:+.4f} or more" in result.message


def test_below_min_items_fails_when_it_already_fails_else_is_an_error(data) -> None:
    logits, labels = data
    base = make_scores("b", softmax(logits[:30]), labels[:30])
    clearly_worse = make_scores("a", softmax(logits[:30] / 0.2), labels[:30])
    small = judge_case(base, clearly_worse, "choice", "overconfidence", RULE, seed=0)
    assert small.verdict == "fail" and small.p_value <= 0.05
    unclear = make_scores("a", softmax(logits[:30] / 0.95), labels[:30])
    small = judge_case(base, unclear, "choice", "ece", RULE, seed=0)
    assert small.verdict == "error" and not small.gated
    assert small.message.startswith("ERROR ece on arc_easy (choice): n=30 < min_items=50: too few items to tell; "
                                    "lower min_items in thresholds.toml or score more items")
    assert small.change is not None and small.p_value is not None, "still reported"
    report_only = judge_case(base, clearly_worse, "choice", "ece", Rule(max_increase=0.01, min_items=1, gate=False),
                             seed=0)
    assert report_only.verdict == "not-gated" and report_only.message.startswith("REPORT ONLY (gate = false)")


def test_nan_fails_never_passes() -> None:
    from calib_checks.verdicts import verdict_of as _verdict

    nan = float("nan")
    assert _verdict(nan, 0.05, 0.0, 0.01, True, False) == "fail"
    assert _verdict(0.5, 0.05, nan, 0.01, True, False) == "fail"
    assert _verdict(0.5, 0.05, 0.0, nan, True, False) == "fail"
    assert _verdict(0.5, 0.05, 0.0, 0.01, True, False) == "pass"
    assert _verdict(0.5, 0.05, 0.02, 0.01, True, False) == "inconclusive"
    assert _verdict(0.01, 0.05, 0.02, 0.01, True, True) == "fail"
    assert _verdict(0.5, 0.05, 0.0, 0.01, True, True) == "error"
    assert _verdict(0.0, 0.05, 0.5, 0.01, False, False) == "not-gated"


def test_sce_margin_scales_with_the_option_count_and_a_margin_that_cannot_be_exceeded_is_an_error(data) -> None:
    logits, labels = data
    base, aligned = softmax(logits), softmax(logits / 0.9)
    d = judge_arrays(base, aligned, labels, "sce", Rule(max_increase=0.01, scale="2/K", n_resamples=1000))
    assert (d.n_options, d.margin) == (4, 0.005)
    padded = lambda p: np.hstack([p, np.zeros((p.shape[0], 1))])  # noqa: E731  ARC's 5-column padding
    assert judge_arrays(padded(base), padded(aligned), labels, "sce", Rule(0.01, scale="2/K",
                                                                            n_resamples=1000)).margin == 0.004
    # SCE is at most 2/K = 0.5 on 4 options: a margin of 0.6 passes the load-time check (K = 2) but not here
    s = make_scores("b", base, labels)
    result = judge_case(s, make_scores("a", aligned, labels), "choice", "sce", Rule(0.6, n_resamples=1000))
    assert result.verdict == "error" and "can never be exceeded" in result.message and result.p_value is None
    assert apply_family([result])[0] == result


def test_relative_limit_adds_tolerance_and_base_zero_has_no_relative_change() -> None:
    labels = np.zeros(100, dtype=int)
    right = np.tile([0.7, 0.1, 0.1, 0.1], (100, 1))
    half = np.vstack([right[:50], np.tile([0.1, 0.7, 0.1, 0.1], (50, 1))])
    # accuracy: base 1.0 -> aligned 0.5, a worsening of 0.5 = 50 % of the base value.
    rule = dict(min_items=1, n_resamples=1000)
    assert judge_arrays(right, half, labels, "accuracy", Rule(0.02, max_relative_increase=0.3, **rule)).verdict == "fail"
    lenient = judge_arrays(right, half, labels, "accuracy", Rule(0.02, max_relative_increase=0.8, **rule))
    assert lenient.margin == 0.8 and lenient.verdict == "pass"
    # a relative margin the metric can never exceed (1.5 x base 1.0 > 1) is an error, never a silent pass
    never = judge_arrays(right, half, labels, "accuracy", Rule(0.02, max_relative_increase=1.5, **rule))
    assert never.verdict == "error" and "max_relative_increase" in never.problem
    # base accuracy 0: relative change undefined, the absolute limit alone decides.
    wrong = half[50:].repeat(2, axis=0)
    decision = judge_arrays(wrong, wrong, labels, "accuracy", Rule(0.02, max_relative_increase=1.5, **rule))
    assert decision.base_value == 0.0 and decision.relative_change is None and decision.verdict == "pass"
    assert decision.margin == 0.02


@pytest.mark.parametrize("problem", ["other-ids", "repeated", "labels", "empty", "task", "lacking"])
def test_unjudgeable_cases_are_errors_never_passes(data, problem: str) -> None:
    logits, labels = data
    probs = softmax(logits[:60])
    y = labels[:60]
    ids = [f"test-{i}" for i in range(60)]
    base = make_scores("b", probs, y, ids)
    aligned = make_scores("a", probs, y, ids)
    if problem == "other-ids":
        aligned = make_scores("a", probs, y, ids[:-1] + ["test-999"])
    elif problem == "repeated":
        aligned = make_scores("a", probs, y, ids[:-1] + ids[:1])
    elif problem == "labels":
        aligned = make_scores("a", probs, (y + 1) % K, ids)
    elif problem == "empty":
        base, aligned = make_scores("b", probs[:0], y[:0]), make_scores("a", probs[:0], y[:0])
    elif problem == "lacking":  # e.g. continuation-min from an lm-eval side, which logs only sums
        for record in aligned.records[:5]:
            del record.scores["choice"]
    else:
        aligned.task = "piqa"
    result = judge_case(base, aligned, "choice", "ece", Rule(max_increase=0.5, min_items=1, n_resamples=1000))
    assert result.verdict == "error" and result.p_value is None
    assert result.message.startswith("ERROR ece on arc_easy (choice): ")
    assert result.change is None and result.compared is None
    json.dumps(result.to_json(), allow_nan=False)  # results.json refuses NaN
    if problem == "lacking":
        assert "choice is not available from the aligned side" in result.message and "5 of 60" in result.message


def test_the_aligned_side_is_matched_to_the_base_by_item_id(data) -> None:
    """A side read from files may list its items in another order: judged item for item, the same verdict."""
    logits, labels = data
    probs, sharp, y = softmax(logits[:300]), softmax(logits[:300] / 0.6), labels[:300]
    ids = [f"test-{i}" for i in range(300)]
    order = np.random.default_rng(1).permutation(300)
    base = make_scores("b", probs, y, ids)
    shuffled = make_scores("a", sharp[order], y[order], [ids[i] for i in order])
    straight = judge_case(base, make_scores("a", sharp, y, ids), "choice", "overconfidence", RULE)
    assert judge_case(base, shuffled, "choice", "overconfidence", RULE) == straight


def test_non_finite_scores_never_become_a_record() -> None:
    """A NaN or inf score is refused where the record is made (engine, score file, lm-eval run), so no case
    can ever be judged on it."""
    with pytest.raises(RecordError, match="non-finite choice score"):
        ItemRecord(id="x", gold=0, scores={"choice": [0.0, float("nan")]}, n_options=2)


def test_scores_become_probabilities_by_the_one_softmax(data) -> None:
    """Scores shifted by a constant per item are the same probabilities: the same verdict."""
    logits, labels = data
    probs, y = softmax(logits[:200]), labels[:200]
    base = make_scores("b", probs, y)
    aligned = make_scores("a", softmax(logits[:200] / 0.7), y)
    shifted = make_scores("a", softmax(logits[:200] / 0.7), y)
    for i, record in enumerate(shifted.records):
        record.scores = {e: [v - 3.0 * i for v in values] for e, values in record.scores.items()}
    rule = Rule(max_increase=0.01, min_items=1, n_resamples=1000)
    ours, theirs = judge_case(base, shifted, "choice", "ece", rule), judge_case(base, aligned, "choice", "ece", rule)
    assert ours.verdict == theirs.verdict and ours.change == pytest.approx(theirs.change, abs=1e-12)


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
    with pytest.raises(VerdictError, match="lacks keys"):
        CaseResult.from_json({k: v for k, v in data_json.items() if k != "p_adjusted"})
    with pytest.raises(VerdictError, match="is not one of"):
        CaseResult.from_json({**data_json, "verdict": "skipped"})
    assert VERDICTS == ("pass", "fail", "inconclusive", "not-gated", "error")


# ----------------------------------------------------------------------------------------------- families


def _case(pair: str, metric: str, p: float, *, compared: float = 0.05, n: int = 500, verdict: str = "inconclusive",
          gate: bool = True) -> CaseResult:
    rule = Rule(max_increase=0.01, n_resamples=1000, gate=gate)
    return CaseResult(pair=pair, base="b", aligned="a", task="piqa", extractor="choice", metric=metric,
                      base_value=0.05, aligned_value=0.08, change=0.03, relative_change=0.6, ci_low=-0.01,
                      ci_high=compared, ci_method="normal", confidence=0.95, n_items=n, rule=rule.to_json(),
                      rule_source="[default]", verdict=verdict, message="", compared=compared, worsening=0.03,
                      se=0.01, p_value=p, p_adjusted=p, margin=0.01, detectable=0.035, mc_error=0.0003, n_options=2)


def test_apply_family_corrects_within_each_pair_and_recomputes_verdicts_and_messages() -> None:
    cases = [_case("p1", "ece", 0.001, verdict="fail"), _case("p1", "sce", 0.012, verdict="fail"),
             _case("p1", "overconfidence", 0.3), _case("p2", "ece", 0.02, verdict="fail"),
             _case("p2", "sce", 0.5, compared=0.0, verdict="pass"),
             _case("p1", "accuracy", 0.0001, verdict="not-gated", gate=False)]
    out = apply_family(cases, GatePolicy())
    assert [c.p_adjusted for c in out[:5]] == pytest.approx([0.003, 0.024, 0.3, 0.04, 0.5])
    assert [c.verdict for c in out] == ["fail", "fail", "inconclusive", "fail", "pass", "not-gated"]
    assert [c.family_size for c in out[:5]] == [3, 3, 3, 2, 2] and out[0].family == "pair"
    assert out[5] is cases[5], "report-only cases take no part"
    assert "weighted Holm over the 3 gated cases of pair p1" in out[0].message
    # after two rejections the third case holds the whole rate: it is tested at 0.05 (Holm's last step)
    assert "this case's level 0.05" in out[2].message and out[2].level == pytest.approx(0.05)
    z = 1.6448536270 + 0.8416212335729143  # z_(1 - 0.05) + z_0.8
    assert out[2].detectable == pytest.approx(0.01 + z * 0.01, rel=1e-7)
    assert out[3].level == pytest.approx(0.025)  # p2's first case, rejected at half the rate
    # per case: no correction; a stricter alpha turns the marginal case
    per_case = apply_family(cases, GatePolicy(family="case"))
    assert [c.p_adjusted for c in per_case[:5]] == pytest.approx([0.001, 0.012, 0.3, 0.02, 0.5], rel=1e-12)
    strict = apply_family(cases, GatePolicy(alpha=0.01))
    assert [c.verdict for c in strict[:5]] == ["fail", "inconclusive", "inconclusive", "inconclusive", "pass"]
    assert strict[0].alpha == 0.01


def test_apply_family_keeps_errors_out_and_under_min_items_cases_in() -> None:
    error = replace(_case("p", "ece", 0.001), p_value=None, p_adjusted=None, verdict="error", message="ERROR x")
    small = _case("p", "sce", 0.3, n=30, verdict="error")  # min_items 200
    small_failing = _case("p", "overconfidence", 0.0001, n=30, verdict="fail")
    out = apply_family([error, small, small_failing], GatePolicy())
    assert out[0] is error
    assert (out[1].verdict, out[1].family_size) == ("error", 2) and "n=30 < min_items=200" in out[1].message
    assert out[2].verdict == "fail" and out[2].p_adjusted == pytest.approx(0.0002)


def test_a_run_of_equal_pairs_rarely_fails_and_a_sharpened_one_does(data) -> None:
    # The whole path on plain arrays: 3 metrics x 6 groups per pair, judged then family-corrected.
    from calib_checks.verdicts import case_from_decision

    rng = np.random.default_rng(8)

    def pair(name: str, temperature: float) -> list[CaseResult]:
        cases = []
        for g in range(6):
            labels = rng.integers(0, K, 500)
            noise = rng.standard_normal((500, K))
            base = softmax(1.2 * (1.2 * np.eye(K)[labels] + noise))
            aligned = softmax(1.2 * (1.2 * np.eye(K)[labels] + 0.9 * noise + 0.44 * rng.standard_normal((500, K)))
                              / temperature)
            for metric in ("ece", "sce", "overconfidence"):
                rule = Rule(0.01, scale="2/K" if metric == "sce" else "none")
                d = judge_arrays(base, aligned, labels, metric, rule, seed=g)
                cases.append(case_from_decision(d, pair=name, base="b", aligned="a", task=f"t{g}", extractor="choice",
                                                metric=metric, rule=rule))
        return cases

    out = apply_family(pair("equal", 1.0) + pair("sharp", 0.6), GatePolicy())
    assert not any(c.verdict == "fail" for c in out if c.pair == "equal")
    assert any(c.verdict == "fail" for c in out if c.pair == "sharp")
    assert {c.family_size for c in out} == {18}


# ----------------------------------------------------------------------------------- sign-aware over-confidence


def _gaussian_pair(n: int, base_t: float, aligned_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact posteriors of a Gaussian signal (calibrated at T = 1), aligned noise correlated 0.9 with the base's."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    noise = rng.standard_normal((n, K))
    aligned_noise = 0.9 * noise + math.sqrt(1 - 0.81) * rng.standard_normal((n, K))
    signal = 1.2 * np.eye(K)[labels]
    return (softmax(1.2 * (signal + noise) / base_t), softmax(1.2 * (signal + aligned_noise) / aligned_t), labels)


OC_RULE = Rule(max_increase=0.01, n_resamples=1000)


@pytest.mark.parametrize(("base_t", "aligned_t", "verdict", "side"), [
    (1.4, 1.0, "pass", None),     # under-confident base made calibrated: signed change +0.08, an improvement
    (0.7, 1.0, "pass", None),     # over-confident base made calibrated
    (1.0, 0.7, "fail", "over"),   # calibrated base made over-confident
    (1.0, 1.4, "fail", "under"),  # calibrated base made under-confident: the signed change is -0.08
])
def test_overconfidence_is_judged_on_its_absolute_value(base_t: float, aligned_t: float, verdict: str,
                                                        side: str | None) -> None:
    base, aligned, labels = _gaussian_pair(6000, base_t, aligned_t)
    d = judge_arrays(base, aligned, labels, "overconfidence", OC_RULE, seed=1)
    assert d.verdict == verdict, d
    assert d.change == pytest.approx(d.aligned_value - d.base_value), "the signed change is what is reported"
    assert d.worsening == pytest.approx(abs(d.aligned_value) - abs(d.base_value), abs=2e-3)
    assert (d.ci_low, d.ci_high) == paired_bootstrap("overconfidence", base, aligned, labels, 1000, 0.95, 1).normal
    if side:
        assert d.sign_test.startswith(side) and d.p_value < 1e-4
    else:
        assert d.p_value > 0.5 and d.compared <= d.margin


def test_sign_aware_p_value_is_the_intersection_union_of_its_contrasts() -> None:
    base, aligned, labels = _gaussian_pair(800, 1.0, 0.8, seed=3)
    d = judge_arrays(base, aligned, labels, "overconfidence", OC_RULE, seed=2)
    boot = paired_bootstrap("overconfidence", base, aligned, labels, 1000, 0.95, 2)
    change, total = boot.contrast(1, -1), boot.contrast(1, 1)
    assert change.replicates == pytest.approx(boot.replicates, abs=1e-15) and change.normal == boot.normal
    assert total.replicates == pytest.approx(boot.aligned_replicates + boot.base_replicates, abs=1e-15)
    over = max(change.p_value(0.01), total.p_value(0.01))
    under = max(change.p_value(0.01, higher_is_worse=False), total.p_value(0.01, higher_is_worse=False))
    assert d.p_value == min(over, under) == over
    binding = total if total.p_value(0.01) >= change.p_value(0.01) else change
    assert d.sign_test == f"over:{'sum' if binding is total else 'change'}" and d.se == binding.se
    # each of a side's two upper ends at the two-sided level 97.5 %, i.e. one-sided 1.25 %: Bonferroni over the two
    over_upper = min(boot.contrast(1, w, 0.975).normal[1] for w in (-1, 1))
    under_upper = min(boot.contrast(-1, w, 0.975).normal[1] for w in (1, -1))
    assert d.compared == pytest.approx(max(over_upper, under_upper), abs=1e-15)
    case = case_from_decision(d, pair="p", base="b", aligned="a", task="piqa", extractor="choice",
                              metric="overconfidence", rule=OC_RULE)
    assert case.sign_test == d.sign_test and "sign-aware test: its over-confident side" in case.message
    assert f"|over-confidence| {abs(d.base_value):.4f} -> {abs(d.aligned_value):.4f}" in case.message
    assert CaseResult.from_json(json.loads(json.dumps(case.to_json()))) == case
    assert judge_arrays(base, aligned, labels, "ece", RULE).sign_test is None

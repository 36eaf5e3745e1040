"""The calibration gate: one case per model pair x task x extractor x metric (docs/GATE.md).

    pytest tests_models --model-pair BASE,ALIGNED [--tasks ...] [--junitxml gate.xml]

A case passes when the aligned model's worsening on the metric stays within its thresholds.toml rule, fails
when it exceeds it, is skipped with the reason "NOT GATED: ..." or "REPORT ONLY: ..." when the rule does not
gate it, and errors (one line) when a model or the task's data cannot be loaded. The plugin
(calib_checks/plugin.py) parametrizes `calib_case` and provides the fixtures.
"""

import pytest


def test_calibration(calib_case, calib_scores, calib_gate, request: pytest.FixtureRequest) -> None:
    base, aligned = calib_scores
    result = calib_gate.judge(calib_case, base, aligned, request.node)
    if result.verdict == "not-gated":
        pytest.skip(calib_gate.skip_reason(result))
    if result.verdict != "pass":
        pytest.fail(result.message, pytrace=False)

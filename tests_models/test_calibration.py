"""The calibration gate: one case per model pair x task x extractor x metric, then the run's verdict.

    pytest tests_models --model-pair BASE,ALIGNED [--calib-tasks ...] [--junitxml gate.xml]

The plugin (calib_checks/plugin.py, over calib_checks/gate.py) parametrizes `calib_case` and judges every case
of the session before the first one reports (the family correction needs them all). A case passes when the
aligned model is shown to be within its thresholds.toml rule, fails when its worsening is clearly beyond it,
is skipped as INCONCLUSIVE when these items cannot tell (or fails, under on_inconclusive = "fail"), is skipped
as REPORT ONLY when the rule does not gate it, and errors (one line) when it cannot be judged.
"""

from calib_checks.plugin import check_case, check_run


def test_calibration(calib_case, calib_result, calib_gate) -> None:
    check_case(calib_result, calib_gate.policy)


def test_gate_verdict(calib_gate, calib_results, request) -> None:
    """The run verdict as a test, so that JUnit shows it: fails unless the whole run ships."""
    hooks = request.config.pluginmanager.get_plugin("calib_checks.gate")
    check_run(calib_gate, calib_results, hooks.selected)

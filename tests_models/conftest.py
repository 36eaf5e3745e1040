"""Marks this folder as the calibration gate: collecting it activates the calib_checks plugin's options.

The plugin (registered by the root conftest.py or the `calib_checks.plugin` entry point) stays inert in other
test runs; this hook checks the gate's options and thresholds.toml before anything is collected or loaded.
"""

import pytest

from calib_checks.plugin import configure_gate


def pytest_configure(config: pytest.Config) -> None:
    configure_gate(config)

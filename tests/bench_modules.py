"""The bench's scripts (bench/*.py, not a package) imported by the tests, under their own module names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench_module(name: str) -> ModuleType:
    """bench/<name>.py as the module `name` (registered in sys.modules, as its own imports expect)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

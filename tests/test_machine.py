"""The machine's facts: CPU kind, native bf16 / fp16, the measured matmul rate, and the slow-dtype warning."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from calib_checks import machine

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which dtypes this process already warned about."""
    monkeypatch.setattr(machine, "_warned", set())


def _pretend(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    facts = replace(machine.cpu_facts(), native_bf16=native, native_fp16=native)
    monkeypatch.setattr(machine, "cpu_facts", lambda: facts)


def test_facts_follow_torch_and_the_rate_is_measured_once() -> None:
    facts = machine.cpu_facts()
    assert facts.capability == torch.backends.cpu.get_cpu_capability()
    assert facts.cores >= 1 and facts.threads == torch.get_num_threads() and facts.model
    assert facts.kind.startswith(f"{facts.capability}, ") and "bf16" in facts.kind
    rate = machine.matmul_rate()
    assert rate > 0 and machine.matmul_rate("float32") == rate  # cached per process
    assert machine.has_native("float32")
    assert machine.slowdown(torch.bfloat16) == pytest.approx(rate / machine.matmul_rate("bfloat16"))
    assert "GFLOP/s (measured now)" in machine.describe()
    assert machine.estimate_seconds(60.0, rate) == pytest.approx(60.0)
    assert machine.python_rate() > 0 and machine.python_rate() == machine.python_rate()  # cached per process
    with pytest.raises(ValueError, match="no matmul rate for dtype"):
        machine.matmul_rate("int8")


def test_bf16_on_a_cpu_without_it_warns_once_with_the_measured_factor(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    _pretend(monkeypatch, native=False)
    with pytest.warns(machine.SlowDtypeWarning) as caught:
        assert machine.warn_if_slow(torch.bfloat16, "model 'x'")
    (warning,) = caught
    factor = machine.slowdown("bfloat16")
    assert f"runs {factor:.0f}x slower than float32 here (measured now" in str(warning.message)
    assert "Use float32" in str(warning.message) and "bfloat16-weights" in str(warning.message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert machine.warn_if_slow("bfloat16", "model 'y'")  # still slow, but said once per process
    with pytest.warns(machine.SlowDtypeWarning, match="float16 asked for"):
        machine.warn_if_slow("float16", "model 'x'")
    assert not machine.warn_if_slow("float32", "model 'x'")


def test_native_bf16_does_not_warn(monkeypatch: pytest.MonkeyPatch, fresh_warnings: None) -> None:
    _pretend(monkeypatch, native=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not machine.warn_if_slow("bfloat16", "model 'x'")


def test_loading_a_bf16_model_on_such_a_cpu_warns(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    from calib_checks.models import load_model

    _pretend(monkeypatch, native=False)
    with pytest.warns(machine.SlowDtypeWarning, match=r"model '.*:dtype=bfloat16': bfloat16 asked for"):
        load_model(f"{tiny_model_dir}:dtype=bfloat16", device="cpu")
    with warnings.catch_warnings():  # weights rounded to bf16, arithmetic in float32: nothing slow
        warnings.simplefilter("error", machine.SlowDtypeWarning)
        load_model(f"{tiny_model_dir}:dtype=bfloat16-weights", device="cpu")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 emulation is x86's")
def test_the_avx2_emulation_is_seen_as_a_cpu_without_native_bf16() -> None:
    code = ("import json; from calib_checks import machine; f = machine.cpu_facts(); "
            "print(json.dumps([f.capability, f.native_bf16, f.native_fp16, f.emulation]))")
    env = {**os.environ, **machine.EMULATE_AVX2, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    capability, bf16, fp16, emulation = json.loads(out.stdout)
    assert capability in ("AVX2", "DEFAULT") and not bf16 and not fp16
    assert "ATEN_CPU_CAPABILITY=avx2" in emulation


def test_openmp_threads_spin_briefly_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    assert machine.omp_wait_env({}) == {"GOMP_SPINCOUNT": machine.GOMP_SPINCOUNT}
    assert machine.omp_wait_env({"OMP_WAIT_POLICY": "active"}) == {}
    assert machine.omp_wait_env({"GOMP_SPINCOUNT": "300000"}) == {}
    # `make test` passes the same value to pytest.
    makefile = (REPO / "Makefile").read_text()
    assert f"GOMP_SPINCOUNT ?= {machine.GOMP_SPINCOUNT}\n" in makefile


def test_a_suite_estimate_scales_its_matmul_share_and_the_rest_by_their_own_rates(monkeypatch) -> None:
    """The suite is mostly pytest start-ups and numpy, not matrix products: only its matmul share follows the
    matmul rate (scaling it all by that rate was wrong by 1.8x under AVX2 dispatch)."""
    monkeypatch.setattr(machine, "matmul_rate", lambda dtype="float32": 50.0)
    monkeypatch.setattr(machine, "python_rate", lambda: 500.0)
    # Matmul 4x slower than then, the rest 2x: 0.25 x 4 + 0.75 x 2 = 2.5 times the measured seconds.
    assert machine.estimate_seconds(100.0, 200.0, matmul_share=0.25, python=1000.0) == pytest.approx(250.0)
    assert machine.estimate_seconds(100.0, 200.0) == pytest.approx(400.0)
    with pytest.raises(ValueError, match="needs the measured python rate"):
        machine.estimate_seconds(100.0, 200.0, matmul_share=0.5)

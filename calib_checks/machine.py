"""The machine's facts: which CPU this is, whether torch has fast bf16 / fp16 kernels on it, and how fast it
multiplies matrices, measured (a fraction of a second, once per process and dtype).

Why it matters: on a CPU without native bf16 (an AMD EPYC with AVX2 only, say) torch falls back to a reference
kernel for bf16 matrix products, which was measured there at about 0.8 GFLOP/s against about 38 GFLOP/s in
float32 (reference facts, section 9): a bf16 model then scores several times slower than the same model in
float32. `load_model` asks `warn_if_slow` whenever bf16 or fp16 arithmetic is asked for on a CPU, so that such
a run is never silently slow; `make demo` and `make test` print `describe()` and an estimate of their time
before they start (`estimate_seconds`).

Native support (`CpuFacts.native_bf16` / `native_fp16`): whether torch's oneDNN backend has an optimised kernel
for the type on this CPU (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`: AVX-512 core or newer on x86, the
bf16 extension on Arm), which honours ``ONEDNN_MAX_CPU_ISA``; the cpuinfo flags (``avx512_bf16``, ``amx_bf16``,
``avx512_fp16``, ``amx_fp16``) are reported beside it, and ``torch.backends.cpu.get_cpu_capability()`` says
which vector kernels torch dispatches its own operations to (it honours ``ATEN_CPU_CAPABILITY``).

Emulating a CPU without native bf16 on one that has it: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`` (`EMULATE_AVX2`) makes torch, oneDNN and MKL dispatch as on an AVX2-only CPU;
`describe()` then says "emulated". Measured with it on the Xeon (Sapphire Rapids) this project was built on,
2026-12-04, 2 busy cores: a [128 x 576] @ [576 x 1536] bf16 product fell from about 130 to about 2.3 GFLOP/s
while float32 stayed at 60-70, i.e. the reference kernel the AMD report describes (there 0.8 vs 38). The
emulation reproduces the dispatch, not the AMD's clock, caches or memory.
"""

from __future__ import annotations

import functools
import os
import platform
import time
import warnings
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

# The environment that makes torch, oneDNN and MKL dispatch as on an AVX2-only CPU (see the module docstring).
EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
_EMULATION_VARS = tuple(EMULATE_AVX2) + ("DNNL_MAX_CPU_ISA",)
# cpuinfo flags that say the CPU computes in bf16 / fp16 itself (x86 and Arm spellings).
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_FP16_FLAGS = ("avx512_fp16", "amx_fp16", "fphp", "asimdhp")
_SHOWN_FLAGS = ("avx2", "avx512f") + _BF16_FLAGS + _FP16_FLAGS
# The measured product: a row of 256 tokens (the CPU row budget) through a SmolLM2-135M MLP projection (576 ->
# 1536), 0.45 GFLOP: long enough (5-10 ms in float32) for the threads' barrier to matter little.
_RATE_SHAPE = (256, 576, 1536)
_RATE_SECONDS = 0.15  # timed repetitions per dtype (after one warm-up call); at least three are timed
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class SlowDtypeWarning(UserWarning):
    """bf16 or fp16 arithmetic was asked for on a CPU that has no fast kernel for it (see `warn_if_slow`)."""


@dataclass(frozen=True)
class CpuFacts:
    """What the CPU is and what torch makes of it. `capability` is `torch.backends.cpu.get_cpu_capability()`
    ("AVX512", "AVX2", "DEFAULT", ...); `flags` the relevant cpuinfo flags present; `emulation` the
    dispatch-limiting environment variables that are set (empty on a plain run)."""

    model: str
    cores: int
    threads: int
    capability: str
    flags: tuple[str, ...]
    native_bf16: bool
    native_fp16: bool
    emulation: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """A short description, e.g. "AVX512, native bf16" or "AVX2, no native bf16 (emulated)"."""
        text = f"{self.capability}, {'native' if self.native_bf16 else 'no native'} bf16"
        return text + (" (emulated: " + " ".join(self.emulation) + ")" if self.emulation else "")


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (Linux); elsewhere platform's name and no flags."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def _onednn_supports(kind: str) -> bool | None:
    """Whether oneDNN has an optimised kernel for `kind` ("bf16" / "fp16") here; None if torch cannot say."""
    import torch

    try:
        if not torch.backends.mkldnn.is_available():
            return False
        return bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{kind}_supported")())
    except (AttributeError, RuntimeError):
        return None


@functools.lru_cache(maxsize=1)
def cpu_facts() -> CpuFacts:
    """The machine's facts, read once per process (no measurement: see `matmul_rate`)."""
    import torch

    model, flags = _cpuinfo()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    capability = str(torch.backends.cpu.get_cpu_capability())
    native = {}
    for kind, kind_flags in (("bf16", _BF16_FLAGS), ("fp16", _FP16_FLAGS)):
        supported = _onednn_supports(kind)
        native[kind] = bool(flags & set(kind_flags)) if supported is None else supported
    return CpuFacts(
        model=model,
        cores=cores,
        threads=torch.get_num_threads(),
        capability=capability,
        flags=tuple(flag for flag in _SHOWN_FLAGS if flag in flags),
        native_bf16=native["bf16"],
        native_fp16=native["fp16"],
        emulation=tuple(f"{name}={os.environ[name]}" for name in _EMULATION_VARS if os.environ.get(name)),
    )


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"no matmul rate for dtype {dtype!r}: use float32, bfloat16 or float16")
    return name


@functools.lru_cache(maxsize=None)
def _rate(name: str) -> float:
    import torch

    m, k, n = _RATE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(getattr(torch, name))
    b = torch.randn(k, n, generator=generator).to(getattr(torch, name))
    # With torch's threads as they are: changing the count, even there and back, changed later AVX2 scores of
    # this process by about 1e-7 (MKL / sdpa state), which would break the reproducibility of its scores.
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: kernel selection, oneDNN primitive creation
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - started < _RATE_SECONDS:
            begun = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - begun)
    return 2 * m * k * n / min(times) / 1e9


def matmul_rate(dtype: Any = "float32") -> float:
    """GFLOP/s of one [256 x 576] @ [576 x 1536] product in `dtype` with torch's threads, measured once per
    process: the best of the repetitions timed over about 0.15 s, after a warm-up call (the best, so that other
    processes on the machine disturb it less: it is meant to describe the CPU, not the moment)."""
    return _rate(_dtype_name(dtype))


def slowdown(dtype: Any) -> float:
    """How many times slower a `dtype` product runs than a float32 one here, measured (`matmul_rate`)."""
    return matmul_rate("float32") / matmul_rate(dtype)


def has_native(dtype: Any) -> bool:
    """Whether `dtype` arithmetic runs on a fast kernel on this CPU (float32 always does)."""
    name = _dtype_name(dtype)
    facts = cpu_facts()
    return {"float32": True, "bfloat16": facts.native_bf16, "float16": facts.native_fp16}[name]


_warned: set[str] = set()


def warn_if_slow(dtype: Any, what: str) -> bool:
    """Warn (`SlowDtypeWarning`, once per process and dtype) when `dtype` is bf16 / fp16 and this CPU has no
    fast kernel for it, with the slow-down measured now; returns whether it is slow. `what` names the run
    (e.g. the model spec) in the message."""
    name = _dtype_name(dtype)
    if has_native(name):
        return False
    if name not in _warned:
        _warned.add(name)
        short = {"bfloat16": "bf16", "float16": "fp16"}[name]
        warnings.warn(
            f"{what}: {name} asked for on a CPU without native {short} ({cpu_facts().model}; torch kernels "
            f"{cpu_facts().capability}): a {name} matrix product runs {slowdown(name):.0f}x slower than float32 "
            f"here (measured now: {matmul_rate(name):.1f} vs {matmul_rate('float32'):.1f} GFLOP/s), so scoring "
            f"will take several times longer. Use float32 (--dtype / --calib-dtype float32, or ':dtype=float32'), "
            f"or ':dtype=bfloat16-weights' (bf16-rounded weights, float32 arithmetic) for a bf16 precision "
            f"release's weights without bf16 arithmetic",
            SlowDtypeWarning,
            stacklevel=3,
        )
    return True


# libgomp (torch's OpenMP on Linux) lets a waiting thread spin this many times before it sleeps (its default,
# 300000, is about a millisecond per barrier). Why it matters: torch's threads meet at a barrier after every
# operation, and when another process holds one of two cores, the spinning thread keeps the descheduled one from
# running. Measured on this project's Xeon (2 cores, 2026-12-04), SmolLM2-135M scoring 16 HellaSwag items in
# float32, 2 threads: with other engineers' jobs on the machine, 27-37 s at the default, 14.5 s at 10000,
# 12.2 s with OMP_WAIT_POLICY=PASSIVE; with a busy loop added, 86-90 s / 25 s / 22 s; see README for quiet runs.
# Neither setting changes a number (threads and partitioning stay as they are), unlike fewer threads, which
# changed AVX2 scores by up to 2e-5 (sdpa's CPU kernel splits its work by thread count). The Makefile's
# `make test` uses the same value (tests/test_machine.py checks they agree).
GOMP_SPINCOUNT = "10000"


def omp_wait_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to a child process's environment (`environ`) so that its OpenMP threads spin briefly
    (`GOMP_SPINCOUNT`); nothing when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT. It must be set before the
    child imports torch: libgomp reads it once, at load."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}


def describe(with_bf16: bool = False) -> str:
    """One line: the CPU, its kind, cores and torch threads, and the measured float32 rate (and bf16's)."""
    facts = cpu_facts()
    text = (f"{facts.model}: {facts.kind}; {facts.cores} cores, torch {facts.threads} threads; "
            f"float32 matmul {matmul_rate('float32'):.0f} GFLOP/s")
    if with_bf16:
        text += f", bfloat16 {matmul_rate('bfloat16'):.1f} GFLOP/s"
    return text + " (measured now)"


@functools.lru_cache(maxsize=None)
def python_rate() -> float:
    """Runs per second of a fixed interpreter-and-numpy workload (a Python loop, a sort, small array sums: what
    the suite's bootstraps, pytest start-ups and imports are made of), measured once per process, the best of the
    repetitions timed over about 0.15 s."""
    import numpy as np

    values = np.random.default_rng(0).random(20_000)

    def work() -> None:
        sum(i * i for i in range(20_000))
        np.sort(values)
        for _ in range(200):
            values[:100].sum()

    work()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < _RATE_SECONDS:
        begun = time.perf_counter()
        work()
        times.append(time.perf_counter() - begun)
    return 1 / min(times)


def estimate_seconds(seconds: float, rate: float, matmul_share: float = 1.0, python: float | None = None) -> float:
    """Seconds a job that took `seconds` on a machine whose float32 `matmul_rate` was `rate` (and `python_rate`
    `python`) should take here: its `matmul_share` scaled by the ratio of the matmul rates (scoring is mostly such
    products), the rest by the ratio of the `python_rate`s; both machines with as many cores free. An estimate,
    not a measurement."""
    scaled = matmul_share * rate / matmul_rate("float32")
    if matmul_share < 1.0:
        if python is None:
            raise ValueError("estimate_seconds: a matmul_share under 1 needs the measured python rate")
        scaled += (1.0 - matmul_share) * python / python_rate()
    return seconds * scaled

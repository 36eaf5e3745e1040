"""Peak resident memory of the current process, per measured section (Linux /proc).

Each contender runs all tasks of one model in its own process; before a task it calls `reset_peak()`, after
it `peak_mib()`. Writing "5" to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the
current RSS, so a task's figure is the process's peak during that task: the loaded model plus what the task
needed, without the transients of loading. On a CUDA device the same is done for the GPU's allocated memory
(`reset_gpu_peak`, `gpu_peak_mib`). Shared by run_bench.py (.venv) and lmeval_side.py (.bench-venv): standard
library only at import (torch is imported where a GPU figure is asked for).
"""

from __future__ import annotations

import re
from pathlib import Path

_HWM = re.compile(r"^VmHWM:\s+(\d+) kB", re.MULTILINE)


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    """This process's peak RSS since the last successful `reset_peak()` (else since it started), in MiB."""
    match = _HWM.search(Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError("/proc/self/status has no VmHWM line: peak memory needs Linux")
    return int(match.group(1)) / 1024.0


def reset_gpu_peak(device: str) -> None:
    """Reset torch's peak allocated memory on `device` when it is a CUDA device (else nothing)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mib(device: str) -> float | None:
    """Peak memory torch allocated on `device` since `reset_gpu_peak`, in MiB; None off CUDA."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20

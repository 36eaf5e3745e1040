"""The float32 matrix-product paths torch offers on a CPU, timed on SmolLM2-135M's layer shapes (issue #25's lever
"measure MKL against oneDNN, threads"): torch's default `nn.Linear` (MKL's sgemm on x86) against the same layer
converted to oneDNN (`torch.utils.mkldnn.to_mkldnn`), with 1 and 2 threads, 512-token rows. Prints GFLOP/s and
the largest difference between the two outputs. Run it as is, and under AVX2 dispatch
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`); figures in bench/RESULTS.md.

    .venv/bin/python bench/cpu_fp32_paths.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils import mkldnn as mkldnn_utils

ROWS = 512
SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576))  # q/o, k/v, gate/up, down projections


def best_seconds(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 30) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up: kernel selection, oneDNN primitive creation
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        default = onednn = 0.0
        flops, diff = 0, 0.0
        for k, n in SHAPES:
            layer = torch.nn.Linear(k, n, bias=False).eval()
            converted = mkldnn_utils.to_mkldnn(torch.nn.Sequential(layer))
            x = torch.randn(ROWS, k)
            default += best_seconds(layer, x)
            onednn += best_seconds(lambda t: converted(t.to_mkldnn()).to_dense(), x)
            flops += 2 * ROWS * k * n
            with torch.inference_mode():
                diff = max(diff, (layer(x) - converted(x.to_mkldnn()).to_dense()).abs().max().item())
        print(f"threads {threads}: default (MKL) {flops / default / 1e9:.0f} GFLOP/s, "
              f"oneDNN {flops / onednn / 1e9:.0f} GFLOP/s, largest difference {diff:.1e}")


if __name__ == "__main__":
    main()

"""scripts/gpu-check.sh and bench/gpu_check.py on this CPU: the dry run end to end (so the GPU check cannot rot
before a device is lent), the table, and a failing step that must fail the run and show."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_modules import load_bench_module

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu-check.sh"


gpu_check = load_bench_module("gpu_check")

# Parameters of the published checkpoints (their model cards; the bench counts 134.5 M and 268.1 M on the GGUF
# conversions of SmolLM2-135M-Instruct and gemma-3-270m).
PUBLISHED_PARAMETERS = {"smollm2-135m": 134.5e6, "gemma-3-270m": 268.1e6, "llama-3.2-1b": 1.236e9,
                        "llama-3-8b": 8.03e9}


def test_model_configs_have_the_published_sizes() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    configs = gpu_check.load_configs()
    assert set(configs) == set(PUBLISHED_PARAMETERS)
    for name, entry in configs.items():
        fields = dict(entry["config"])
        model_type, [architecture] = fields.pop("model_type"), fields.pop("architectures")
        with torch.device("meta"):  # shapes only, no memory
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields))
        assert type(model).__name__ == architecture
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(PUBLISHED_PARAMETERS[name], rel=2e-3)


def test_every_model_builds_and_scores_at_dry_run_size(tiny_model_dir: Path, tmp_path: Path) -> None:
    from calib_checks.scoring import score_items
    from tests.test_scoring import TINY_ITEMS

    shutil.copytree(tiny_model_dir, tmp_path / gpu_check.TOKENIZER_DIR)  # a tokenizer where the carry keeps one
    for name in gpu_check.load_configs():
        loaded, described = gpu_check.build_model(name, tmp_path, "cpu", "float32", tiny=True)
        assert described["tiny"] and described["attention_asked"] == "sdpa"
        assert loaded.add_bos == name.startswith("gemma")
        with pytest.warns(UserWarning):  # random weights: no letter mass
            records, stats = score_items(loaded, TINY_ITEMS[:2], progress=False)
        assert [r.id for r in records] == ["two", "three"] and stats.attention == "sdpa"


def test_parse_sweep() -> None:
    assert gpu_check.parse_sweep("1024x65536,2048X16384") == [(1024, 65536), (2048, 16384)]
    for bad in ("1024", "0x5", "ax2"):
        with pytest.raises(gpu_check.CheckError, match="--sweep entry"):
            gpu_check.parse_sweep(bad)


def test_the_table_shows_every_status_and_a_failure_fails_the_result() -> None:
    steps = [{"name": "environment", "status": "pass", "seconds": "3", "note": ""},
             {"name": "cuda-tests", "status": "skipped: no CUDA", "seconds": "7", "note": "skipped: no CUDA (11)"},
             {"name": "model llama-3-8b", "status": "FAIL (timed out)", "seconds": "150", "note": "stopped"},
             {"name": "model gemma-3-270m", "status": "NOT RUN", "seconds": "0", "note": "time budget"}]
    text = gpu_check.format_table(steps, {}, "header")
    lines = text.splitlines()
    assert lines[0] == "header" and lines[-1] == "RESULT: FAILED: model llama-3-8b, model gemma-3-270m"
    assert any(line.startswith("cuda-tests") and "skipped: no CUDA" in line for line in lines)
    assert gpu_check.format_table(steps[:2], {}, "h").splitlines()[-1] == (
        "RESULT: every step that could run here passed")


def run_script(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_a_failing_python_fails_every_step_and_the_run_and_still_shows_them(tmp_path: Path) -> None:
    """With a Python that fails at once, no step may pass: each shows FAIL, the raw step records stand in for
    the table (which needs Python), and the exit status is 1."""
    out = tmp_path / "out"
    result = run_script("--carry", str(tmp_path / "empty"), "--out", str(out), "--models", "smollm2-135m",
                        env={"PYTHON": shutil.which("false")}, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    tail = result.stdout.split("(the table step failed: raw step records)")[1]
    statuses = dict(line.split("\t")[:2] for line in tail.strip().splitlines())
    assert statuses["environment"] == statuses["cuda-tests"] == statuses["model smollm2-135m"] == "FAIL (exit 1)"
    assert statuses["wheels"] == "pass"  # no Python needed: the carry folder brings no wheel
    assert (out / "gpu-check.log").is_file() and (out / "table.txt").read_text() in result.stdout


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step_and_prints_its_table_last(tmp_path: Path) -> None:
    """The dry run as `make test` can afford it (about 35 s on 2 busy cores): one model step, SmolLM2's shapes
    (`test_every_model_builds_and_scores_at_dry_run_size` builds and scores the other three in-process)."""
    out = tmp_path / "out"
    result = run_script("--cpu-dry-run", "--out", str(out), "--models", "smollm2-135m")
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "table.txt").read_text(encoding="utf-8")
    assert result.stdout.rstrip().endswith(table.rstrip()), "the table is printed last"
    steps = [line.split()[0:3] for line in table.split("\n\n")[1].splitlines()[1:]]
    names = [" ".join(s[:2]) if s[0] == "model" else s[0] for s in steps]
    assert names == ["prepare", "wheels", "environment", "cuda-tests", "model smollm2-135m"]
    assert "cuda-tests               skipped: no CUDA" in table
    assert table.rstrip().endswith("RESULT: every step that could run here passed")
    assert sorted(p.name for p in out.iterdir()) == ["cuda-tests.xml", "figures.json", "gpu-check.log", "table.txt"]
    figures = json.loads((out / "figures.json").read_text(encoding="utf-8"))
    assert [s["status"] for s in figures["steps"]] == ["pass"] * 3 + ["skipped: no CUDA", "pass"]
    for model in figures["models"].values():
        assert model["tiny"] and model["engine_total"]["items"] == 15 and model["naive"]["items"] == 5
        assert model["engine_total"]["share_of_matmul_rate"] > 0 and len(model["sweep"]) == 2
        assert all("error" not in point for point in model["sweep"])
        assert max(model["naive"]["max_abs_diff"].values()) < 1e-3  # float32 on the CPU: the same numbers

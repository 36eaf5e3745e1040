"""Checkpoint chains (issue #23): base -> step 1 -> step 2, every step and the whole chain judged as one family,
the step that broke calibration named in results.json, results.md, GITHUB_STEP_SUMMARY and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib_checks.gate import GateUsageError, run_gate
from tests.test_gate import BETA, EXTRACTORS, REPO, _log_softmax

pytest_plugins = ["pytester"]

K = {"arc_easy": 4, "hellaswag": 4, "mmlu_stem": 4, "piqa": 2}
N = 500


def _folder(path: Path, labels: dict, noise: dict, temperature: float = 1.0) -> Path:
    path.mkdir(parents=True)
    for task, y in labels.items():
        scores = {e: _log_softmax(BETA * (BETA * np.eye(K[task])[y] + noise[(task, e)]) / temperature)
                  for e in EXTRACTORS}
        rows = [{"id": f"{task}-{i}", "gold": int(y[i]), "scores": {e: scores[e][i].tolist() for e in EXTRACTORS}}
                for i in range(len(y))]
        (path / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Exactly calibrated base; step 1 an equally calibrated fine-tune of it (noise correlated 0.9); step 2 the
    step-1 model sharpened at T = 0.7 (over-confident): a chain whose second step breaks calibration."""
    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(23)
    labels = {t: rng.integers(0, k, N) for t, k in K.items()}
    base = {(t, e): rng.standard_normal((N, k)) for t, k in K.items() for e in EXTRACTORS}
    step = {key: 0.9 * eps + np.sqrt(1 - 0.81) * rng.standard_normal(eps.shape) for key, eps in base.items()}
    return [_folder(root / "base", labels, base), _folder(root / "sft", labels, step),
            _folder(root / "dpo", labels, step, temperature=0.7)]


def test_the_step_that_breaks_calibration_is_named(chain, pytester: pytest.Pytester, tmp_path, monkeypatch) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    spec = "llama=" + ",".join(f"scores:{p}" for p in chain)
    result = pytester.runpytest_subprocess(
        str(REPO / "tests_models"), "-p", "no:cacheprovider", "--model-chain", spec,
        "--calib-tasks", ",".join(K), "--calib-metrics", "ece,sce,overconfidence",
        "--calib-thresholds", str(REPO / "thresholds.toml"), "--calib-report-dir", str(tmp_path / "reports"))
    assert result.ret == 1
    run = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    assert run["chains"] == [{"name": "llama", "checkpoints": ["base", "sft", "dpo"],
                              "comparisons": ["llama.1-2", "llama.2-3", "llama.1-3"]}]
    failing = {c["pair"] for c in run["cases"] if c["verdict"] == "fail"}
    assert failing == {"llama.2-3", "llama.1-3"}, failing
    assert {c["chain"] for c in run["cases"]} == {"llama"}
    # One family: every step and the whole chain, corrected together; a comparison that failed at an early look
    # leaves the family there, the others go on with fewer cases.
    sizes = {c["pair"]: c["family_size"] for c in run["cases"]}
    assert sizes["llama.2-3"] == 3 * len(K) * len(EXTRACTORS) * 3 >= sizes["llama.1-2"]
    assert all(f"gated cases of chain llama" in c["message"] for c in run["cases"])
    sequence = run["run"]["sequential"]["comparisons"]
    assert sequence["llama.2-3"]["stopped_at"] < sequence["llama.1-2"]["stopped_at"] == len(sequence["llama.1-2"]["looks"])
    md = (tmp_path / "reports" / "latest" / "results.md").read_text()
    assert "calibration got worse at step 2 → 3 (sft → dpo" in md and "step 1 → 2" not in md
    assert summary.read_text().strip() == md.strip()  # the job summary page gets the same text
    page = (tmp_path / "reports" / "latest" / "report.html").read_text()
    assert 'id="lifecycle-llama"' in page and "calibration got worse at step 2 → 3" in page
    result.stdout.fnmatch_lines(["*calibration got worse at step 2 → 3 (sft → dpo*", "GATE VERDICT: REGRESSION*"])


def test_bad_chains_are_usage_errors(chain, tmp_path) -> None:
    from calib_checks.gate import GateOptions

    base = f"scores:{chain[0]}"
    for spec, says in (((base,), "two or more checkpoints"), ((base, base), "appears twice")):
        with pytest.raises(GateUsageError, match=says):
            run_gate(GateOptions(pairs=(), chains=(",".join(spec),), report_dir=tmp_path,
                                 thresholds=REPO / "thresholds.toml"))
    with pytest.raises(GateUsageError, match="two comparisons would be named 'c.1-2'"):
        run_gate(GateOptions(pairs=(f"c.1-2={base},scores:{chain[1]}",),
                             chains=(f"c={base},scores:{chain[1]},scores:{chain[2]}",), report_dir=tmp_path,
                             thresholds=REPO / "thresholds.toml"))

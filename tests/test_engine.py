"""The engine: scores through the cache (a hit loads nothing and runs no forward pass) and the `score` CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calib_checks.__main__ import main
from calib_checks.cache import ScoreCache
from calib_checks.data import load_task
from calib_checks.engine import Scorer, write_records_jsonl
from calib_checks.errors import CalibChecksError
from calib_checks.scoring import EXTRACTORS, ItemRecord

REPO = Path(__file__).resolve().parents[1]
GOALS = [
    ("keep the sun out of your eyes", "wear a hat", "wear a sock", 0),
    ("boil water", "put it in a pot on heat", "put it in the freezer", 0),
    ("help a plant grow", "keep it in the dark", "give it light and water", 1),
    ("move a heavy rock", "push it with force", "ask it to move", 0),
    ("cool a hot drink", "add ice", "add heat", 0),
    ("dry wet paper", "leave it in the sun", "put it in water", 0),
]


@pytest.fixture(scope="module")
def piqa_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local data source: piqa.jsonl in the hub schema (goal, sol1, sol2, label)."""
    folder = tmp_path_factory.mktemp("piqa-source")
    rows = [{"goal": g, "sol1": a, "sol2": b, "label": label} for g, a, b, label in GOALS]
    (folder / "piqa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _same(a: list[ItemRecord], b: list[ItemRecord]) -> bool:
    return [r.to_json() for r in a] == [r.to_json() for r in b]


def test_second_score_is_a_cache_hit_without_load_or_forward(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path
) -> None:
    data = load_task("piqa", source=str(piqa_folder))
    first = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False)
    scores = first.score(data)
    assert scores.stats["cache"] == "miss"
    assert first.loaded and first.forward_calls > 0
    assert [r.id for r in scores.records] == list(data.item_ids)
    assert scores.model_label == tiny_model_dir.name and scores.task == "piqa"
    assert scores.data_fingerprint == data.fingerprint and scores.model_identity == first.identity

    calls = first.forward_calls
    assert first.score(data).stats["cache"] == "hit" and first.forward_calls == calls

    # A new run (new Scorer, new ScoreCache object on the same folder): nothing loaded, nothing forwarded.
    second = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False)
    again = second.score(data)
    assert again.stats["cache"] == "hit"
    assert second.forward_calls == 0 and not second.loaded
    assert _same(again.records, scores.records)
    assert again.labels().tolist() == scores.labels().tolist()
    assert (again.probs("choice") == scores.probs("choice")).all()
    assert {k: v for k, v in again.stats.items() if k != "cache"} == {
        k: v for k, v in scores.stats.items() if k != "cache"
    }


def test_a_new_aligned_candidate_reuses_the_base_entries(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path
) -> None:
    data = load_task("piqa", source=str(piqa_folder), limit=4, seed=1)
    cache_root = tmp_path / "cache"
    # Run 1: base + candidate A (the base, sharpened). Run 2: base + candidate B (flattened).
    for candidate in (":temperature=0.5", ":temperature=2"):
        base = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(cache_root), progress=False)
        aligned = Scorer(str(tiny_model_dir) + candidate, device="cpu", cache=ScoreCache(cache_root), progress=False)
        base_scores, aligned_scores = base.score(data), aligned.score(data)
        assert aligned_scores.stats["cache"] == "miss" and aligned.forward_calls > 0
        assert not _same(aligned_scores.records, base_scores.records)
    assert base_scores.stats["cache"] == "hit" and base.forward_calls == 0 and not base.loaded


def test_scores_carry_the_stack_and_another_torch_version_is_a_miss(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from calib_checks.models import software_stack

    data = load_task("piqa", source=str(piqa_folder), limit=2)
    first = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False).score(data)
    assert first.stats["stack"] == software_stack("cpu") and first.stats["stack"]["device"] == "cpu"
    again = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False)
    assert again.score(data).stats["cache"] == "hit" and not again.loaded

    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    upgraded = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False)
    scores = upgraded.score(data)
    assert scores.stats["cache"] == "miss" and upgraded.forward_calls > 0
    assert scores.stats["stack"] == {**first.stats["stack"], "torch": "9.9.9+cpu"}
    assert len(list((tmp_path / "scores").rglob("*.json.gz"))) == 2  # the old entry is kept, not overwritten


def test_no_cache_always_computes(tiny_model_dir: Path, piqa_folder: Path) -> None:
    data = load_task("piqa", source=str(piqa_folder), limit=2)
    scorer = Scorer(str(tiny_model_dir), device="cpu", cache=None, progress=False)
    first = scorer.score(data)
    calls = scorer.forward_calls
    second = scorer.score(data)
    assert first.stats["cache"] == second.stats["cache"] == "off"
    assert first.stats["stack"] == scorer.stack
    assert scorer.forward_calls == 2 * calls > 0
    assert _same(first.records, second.records)


def test_a_damaged_entry_is_recomputed(tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path) -> None:
    from calib_checks.cache import ScoreCacheWarning

    data = load_task("piqa", source=str(piqa_folder), limit=3)
    Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False).score(data)
    (entry,) = (tmp_path / "scores").rglob("*.json.gz")
    entry.write_bytes(entry.read_bytes()[:100])
    scorer = Scorer(str(tiny_model_dir), device="cpu", cache=ScoreCache(tmp_path), progress=False)
    with pytest.warns(ScoreCacheWarning, match="unreadable"):
        assert scorer.score(data).stats["cache"] == "miss"
    assert scorer.forward_calls > 0


def test_write_records_refuses_non_finite_numbers(tmp_path: Path) -> None:
    record = ItemRecord(id="x", gold=0, scores={"choice": [math.nan, 0.0]}, probs={"choice": [0.5, 0.5]},
                        n_tokens=[1, 1], letter_token_ids=[3, 4])  # fmt: skip
    with pytest.raises(CalibChecksError, match="non-finite"):
        write_records_jsonl(tmp_path / "out.jsonl", [record])
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- CLI


def test_score_cli_end_to_end(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "records" / "tiny.jsonl"
    args = ("--model", str(tiny_model_dir), "--task", "piqa", "--data-source", str(piqa_folder), "--limit", "4",
            "--seed", "3", "--device", "cpu", "--batch-size", "2", "--out", str(out))  # fmt: skip
    env = {**os.environ, "CALIB_CHECKS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "calib_checks", "score", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cache miss" in done.stderr

    lines = out.read_text().splitlines()
    expected_ids = list(load_task("piqa", source=str(piqa_folder), limit=4, seed=3).item_ids)
    rows = [json.loads(line) for line in lines]
    assert [row["id"] for row in rows] == expected_ids  # data set order
    golds = {f"validation-{i}": label for i, (*_, label) in enumerate(GOALS)}
    for row in rows:
        assert row["gold"] == golds[row["id"]]
        assert set(row["scores"]) == set(row["probs"]) == set(EXTRACTORS)
        for name in EXTRACTORS:
            assert len(row["scores"][name]) == len(row["probs"][name]) == 2
            assert math.isclose(sum(row["probs"][name]), 1.0, abs_tol=1e-9)
        assert len(row["n_tokens"]) == 2 and len(row["letter_token_ids"]) == 2
        assert ItemRecord.from_json(row).to_json() == row
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # written by rename, no temp left

    # Again, in this process (the subprocess above covered the real entry point): a hit, then --no-cache.
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    assert main(["score", *args]) == 0
    assert "cache hit, 0 forward passes" in capsys.readouterr().err
    assert out.read_text().splitlines() == lines

    uncached = tmp_path / "uncached.jsonl"
    assert main(["score", *args[:-1], str(uncached), "--no-cache"]) == 0
    assert "cache off" in capsys.readouterr().err
    assert [json.loads(line)["probs"] for line in uncached.read_text().splitlines()] == [r["probs"] for r in rows]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "gpt2:temperature=0"], "temperature '0' is not a finite number > 0"),
        (["--model", "/no/such/folder"], "does not exist"),
        (["--task", "no_such_task"], "no_such_task"),
    ],
)
def test_score_cli_errors_are_one_line_and_exit_2(
    args: list[str], says: str, tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    options = {"--model": str(tiny_model_dir), "--task": "piqa", "--data-source": str(piqa_folder),
               "--out": str(tmp_path / "out.jsonl"), "--device": "cpu"}  # fmt: skip
    options.update(dict(zip(args[::2], args[1::2])))
    assert main(["score", *[part for pair in options.items() for part in pair]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("calib-checks score: error: ") and says in err and "\n" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_score_cli_rejects_a_bad_batch_size(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["score", "--model", "gpt2", "--task", "piqa", "--out", "x.jsonl", "--batch-size", "0"])
    assert info.value.code == 2
    assert "neither 'auto' nor a positive integer" in capsys.readouterr().err


def test_score_cli_on_a_task_file_feeds_the_gate_as_scores_folders(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task_registry: dict,
) -> None:  # fmt: skip
    from calib_checks.gate import GateOptions, run_gate

    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    example = REPO / "examples" / "support-tickets.toml"
    for name, spec in (("base", str(tiny_model_dir)), ("hot", f"{tiny_model_dir}:temperature=0.5")):
        assert main(["score", "--model", spec, "--task-file", str(example), "--task", "support_tickets",
                     "--device", "cpu", "--out", str(tmp_path / name / "{task}.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "base" / "support_tickets.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and rows[0]["id"] == "T-1001"
    # The files `score --out` writes are exactly what a scores:DIR side reads.
    outcome = run_gate(GateOptions(pairs=(f"scores:{tmp_path / 'base'},scores:{tmp_path / 'hot'}",),
                                   tasks=("support_tickets",), metrics=("ece", "overconfidence"),
                                   thresholds=REPO / "thresholds-demo.toml", report_dir=tmp_path / "reports"))
    assert {c.task for c in outcome.cases} == {"support_tickets"}
    # 40 items are below the demo rules' min_items: never a quiet pass, an error unless the change is clear.
    assert {c.verdict for c in outcome.cases} <= {"fail", "error"} and outcome.exit_code == 1


def _separately(spec: str, data) -> tuple[list[ItemRecord], int]:
    """Records of `spec` from a Scorer of its own, without a cache, and the forward passes they took."""
    scorer = Scorer(spec, device="cpu", cache=None, progress=False)
    return scorer.score(data).records, scorer.forward_calls


def _close(a: list[ItemRecord], b: list[ItemRecord]) -> None:
    assert [r.id for r in a] == [r.id for r in b]
    for x, y in zip(a, b):
        for name in EXTRACTORS:
            assert y.scores[name] == pytest.approx(x.scores[name], abs=1e-5), (x.id, name)


def test_a_pool_scores_sibling_temperatures_in_one_forward_pass_under_their_own_keys(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path
) -> None:
    from calib_checks.engine import ScorerPool

    data = load_task("piqa", source=str(piqa_folder))
    pool = ScorerPool(device="cpu", cache=ScoreCache(tmp_path), progress=False)
    base, hot = pool.scorer(str(tiny_model_dir)), pool.scorer(f"{tiny_model_dir}:temperature=0.5")
    assert pool.scorer(f"{tiny_model_dir}:temperature=0.50") is hot  # the same spec, written otherwise
    assert base.score(data).stats["cache"] == "miss"
    calls = base.forward_calls
    hot_scores = hot.score(data)
    assert hot_scores.stats["cache"] == "hit" and hot.forward_calls == calls  # no second pass
    assert hot_scores.stats["temperatures_in_pass"] == [1.0, 0.5] and hot_scores.model_label.endswith("@T0.5")
    alone, alone_calls = _separately(f"{tiny_model_dir}:temperature=0.5", data)
    assert alone_calls == calls  # the shared pass cost what one temperature alone costs
    _close(alone, hot_scores.records)
    # Keys unchanged: Scorers outside any pool find each temperature's entry on its own.
    for spec in (str(tiny_model_dir), f"{tiny_model_dir}:temperature=0.5"):
        fresh = Scorer(spec, device="cpu", cache=ScoreCache(tmp_path), progress=False)
        assert fresh.score(data).stats["cache"] == "hit" and not fresh.loaded
    # Another dtype is another model: not a sibling, scored by a pass of its own.
    half = pool.scorer(f"{tiny_model_dir}:dtype=bfloat16-weights")
    assert half.score(data).stats["cache"] == "miss" and half.forward_calls > 0 and base.forward_calls == calls


def test_a_pool_without_cache_hands_a_sibling_the_records_of_the_shared_pass(
    tiny_model_dir: Path, piqa_folder: Path
) -> None:
    from calib_checks.engine import ScorerPool

    data = load_task("piqa", source=str(piqa_folder), limit=4)
    pool = ScorerPool(device="cpu", cache=None, progress=False)
    hot, base = pool.scorer(f"{tiny_model_dir}:temperature=0.5"), pool.scorer(str(tiny_model_dir))
    hot_scores = hot.score(data)  # the sharpened side first: it computes the base's records too
    calls = hot.forward_calls
    base_scores = base.score(data)
    assert base.forward_calls == calls and base_scores.stats["cache"] == "off"
    _close(_separately(str(tiny_model_dir), data)[0], base_scores.records)
    _close(_separately(f"{tiny_model_dir}:temperature=0.5", data)[0], hot_scores.records)
    assert base.score(data).stats["cache"] == "off" and base.forward_calls > calls  # handed over once, not kept


def test_the_gate_forwards_a_model_once_for_its_temperature_sibling(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from calib_checks import scoring
    from calib_checks.gate import Gate, GateOptions

    passes = []
    real = scoring.score_temperatures
    monkeypatch.setattr(scoring, "score_temperatures", lambda model, items, temperatures, *args, **kwargs: (
        passes.append(tuple(temperatures)) or real(model, items, temperatures, *args, **kwargs)))
    options = GateOptions(pairs=(f"{tiny_model_dir},{tiny_model_dir}:temperature=0.5",), tasks=("piqa",),
                          data_source=str(piqa_folder), device="cpu", use_cache=False,
                          thresholds=REPO / "thresholds.toml", report_dir=tmp_path / "reports")
    gate = Gate(options)
    gate.score_all(gate.cases())
    assert passes == [(1.0, 0.5)]
    assert [event["cache"] for event in gate.events] == ["off", "off"]

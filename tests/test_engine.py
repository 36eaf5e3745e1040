"""The engine behind a checkpoint source: scores through the cache (a hit loads nothing and runs no forward pass,
more items compute only the new ones) and the `score` CLI (calib_checks/scorecli.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from calib_checks.__main__ import main
from calib_checks.cache import ScoreCache
from calib_checks.data import load_task
from calib_checks.engine import Scorer, ScorerPool
from calib_checks.scorecli import write_records_jsonl
from calib_checks.errors import CalibChecksError
from calib_checks.records import EXTRACTORS, ItemRecord
from calib_checks.sources import Source, SourceContext
from calib_checks.sources.registry import open_source
from calib_checks.sources.cached import CachedSource

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


def _cached(spec: str, cache: Path | ScoreCache | None, pool: ScorerPool | None = None) -> tuple[Source, Scorer]:
    """A checkpoint source as the gate opens it (through the score cache, or a cache at that root, unless `cache`
    is None; its scorer from the run's `ScorerPool` when `pool` is given), and the engine's scorer inside it (its
    forward counter and load state)."""
    cache = ScoreCache(cache) if isinstance(cache, Path) else cache
    source = open_source(spec, SourceContext(device="cpu", progress=False, cache=cache, scorers=pool))
    inner = source.inner if isinstance(source, CachedSource) else source
    return source, inner.scorer


def test_second_score_is_a_cache_hit_without_load_or_forward(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path
) -> None:
    data = load_task("piqa", source=str(piqa_folder))
    first, scorer = _cached(str(tiny_model_dir), tmp_path)
    scores = first.scores("piqa", data)
    assert scores.stats.cache == "miss" and scores.stats.computed == len(data.items)
    assert scorer.loaded and scorer.forward_calls > 0
    assert [r.id for r in scores.records] == list(data.item_ids)
    assert scores.model_label == tiny_model_dir.name and scores.task == "piqa"
    assert scores.data_fingerprint == data.fingerprint and scores.model_identity == scorer.identity

    calls = scorer.forward_calls
    assert first.scores("piqa", data).stats.cache == "hit" and scorer.forward_calls == calls

    # A new run (new source, new ScoreCache object on the same folder): nothing loaded, nothing forwarded.
    second, second_scorer = _cached(str(tiny_model_dir), tmp_path)
    again = second.scores("piqa", data)
    assert again.stats.cache == "hit" and again.stats.computed == 0
    assert second_scorer.forward_calls == 0 and not second_scorer.loaded
    assert _same(again.records, scores.records)
    assert again.labels().tolist() == scores.labels().tolist()
    assert (again.probs("choice") == scores.probs("choice")).all()
    assert again.stats.engine == scores.stats.engine and again.stats.stack == scores.stats.stack


def test_more_items_compute_only_the_new_ones(tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path) -> None:
    """A raised --calib-limit (or the gate's next look) extends the stored records: the items already scored
    are read, only the others are forwarded, and the records equal a one-shot run's within float32 rounding."""
    small, large = (load_task("piqa", source=str(piqa_folder), limit=n, seed=2) for n in (2, 5))
    assert set(small.item_ids) < set(large.item_ids)
    source, scorer = _cached(str(tiny_model_dir), tmp_path)
    source.scores("piqa", small)
    extended = source.scores("piqa", large)
    assert extended.stats.cache == "partial" and extended.stats.computed == 3
    assert [r.id for r in extended.records] == list(large.item_ids)
    fresh, _ = _cached(str(tiny_model_dir), None)
    for ours, theirs in zip(extended.records, fresh.scores("piqa", large).records):
        for name in EXTRACTORS:
            assert ours.scores[name] == pytest.approx(theirs.scores[name], abs=1e-5)
    # An item whose content changed (same id) is never served from the cache: it is scored again.
    changed = large.restricted([replace(large.items[0], context=large.items[0].context + " Really?")])
    assert source.scores("piqa", changed).stats.cache == "miss"


def test_a_new_aligned_candidate_reuses_the_base_entries(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path
) -> None:
    data = load_task("piqa", source=str(piqa_folder), limit=4, seed=1)
    cache_root = tmp_path / "cache"
    # Run 1: base + candidate A (the base, sharpened). Run 2: base + candidate B (flattened).
    for candidate in (":temperature=0.5", ":temperature=2"):
        base, base_scorer = _cached(str(tiny_model_dir), cache_root)
        aligned, aligned_scorer = _cached(str(tiny_model_dir) + candidate, cache_root)
        base_scores, aligned_scores = base.scores("piqa", data), aligned.scores("piqa", data)
        assert aligned_scores.stats.cache == "miss" and aligned_scorer.forward_calls > 0
        assert not _same(aligned_scores.records, base_scores.records)
    assert base_scores.stats.cache == "hit" and base_scorer.forward_calls == 0 and not base_scorer.loaded


def test_scores_carry_the_stack_and_another_torch_version_is_a_miss(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from calib_checks.models import software_stack

    data = load_task("piqa", source=str(piqa_folder), limit=2)
    first = _cached(str(tiny_model_dir), tmp_path)[0].scores("piqa", data)
    assert first.stats.stack == software_stack("cpu") and first.stats.stack["device"] == "cpu"
    again, again_scorer = _cached(str(tiny_model_dir), tmp_path)
    assert again.scores("piqa", data).stats.cache == "hit" and not again_scorer.loaded

    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    upgraded, upgraded_scorer = _cached(str(tiny_model_dir), tmp_path)
    scores = upgraded.scores("piqa", data)
    assert scores.stats.cache == "miss" and upgraded_scorer.forward_calls > 0
    assert scores.stats.stack == {**first.stats.stack, "torch": "9.9.9+cpu"}
    assert len(list((tmp_path / "scores").rglob("*.json.gz"))) == 2  # the old chunk is kept, not overwritten


def test_no_cache_always_computes(tiny_model_dir: Path, piqa_folder: Path) -> None:
    data = load_task("piqa", source=str(piqa_folder), limit=2)
    source, scorer = _cached(str(tiny_model_dir), None)
    first = source.scores("piqa", data)  # the load's self-check, then the pass
    calls = scorer.forward_calls
    second = source.scores("piqa", data)
    passes = scorer.forward_calls - calls
    third = source.scores("piqa", data)
    assert first.stats.cache == second.stats.cache == third.stats.cache == "off"
    assert first.stats.stack == scorer.stack
    assert scorer.forward_calls == calls + 2 * passes and passes > 0  # every request computes, checked once
    assert _same(first.records, second.records) and _same(first.records, third.records)
    assert first.stats.engine.self_checks == second.stats.engine.self_checks


def test_a_damaged_entry_is_recomputed(tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path) -> None:
    from calib_checks.cache import ScoreCacheWarning

    data = load_task("piqa", source=str(piqa_folder), limit=3)
    _cached(str(tiny_model_dir), tmp_path)[0].scores("piqa", data)
    (entry,) = (tmp_path / "scores").rglob("*.json.gz")
    entry.write_bytes(entry.read_bytes()[:100])
    source, scorer = _cached(str(tiny_model_dir), tmp_path)
    with pytest.warns(ScoreCacheWarning, match="unreadable"):
        assert source.scores("piqa", data).stats.cache == "miss"
    assert scorer.forward_calls > 0


def test_write_records_refuses_non_finite_numbers(tmp_path: Path) -> None:
    record = ItemRecord(id="x", gold=0, scores={"choice": [1.0, 0.0]}, n_options=2, n_tokens=[1, 1],
                        letter_token_ids=[3, 4], letter_mass=math.inf)  # fmt: skip
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
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
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
                                   thresholds=REPO / "thresholds-demo.toml", report_dir=tmp_path / "reports",
                                   task_files=(example,)))
    assert {c.task for c in outcome.cases} == {"support_tickets"}
    # 40 items are below the demo rules' min_items: never a quiet pass, an error unless the change is clear.
    assert {c.verdict for c in outcome.cases} <= {"fail", "error"} and outcome.exit_code == 1


def _separately(spec: str, data) -> tuple[list[ItemRecord], int]:
    """Records of `spec` from a Scorer of its own, without a cache, and the forward passes they took."""
    scorer = Scorer(spec, device="cpu", progress=False)
    return scorer.score(data)[0], scorer.forward_calls


def _close(a: list[ItemRecord], b: list[ItemRecord]) -> None:
    assert [r.id for r in a] == [r.id for r in b]
    for x, y in zip(a, b):
        for name in EXTRACTORS:
            assert y.scores[name] == pytest.approx(x.scores[name], abs=1e-5), (x.id, name)


def test_a_pool_scores_sibling_temperatures_in_one_forward_pass_under_their_own_keys(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path
) -> None:
    data = load_task("piqa", source=str(piqa_folder))
    pool = ScorerPool(device="cpu", progress=False)
    cache = ScoreCache(tmp_path)
    base, base_scorer = _cached(str(tiny_model_dir), cache, pool)
    hot, hot_scorer = _cached(f"{tiny_model_dir}:temperature=0.5", cache, pool)
    assert pool.scorer(f"{tiny_model_dir}:temperature=0.50") is hot_scorer  # the same spec, written otherwise
    assert base.scores("piqa", data).stats.cache == "miss"
    calls = base_scorer.forward_calls
    hot_scores = hot.scores("piqa", data)
    assert hot_scorer.forward_calls == calls  # no second pass: the base's pass scored it too
    assert hot_scores.model_label.endswith("@T0.5")
    alone, alone_calls = _separately(f"{tiny_model_dir}:temperature=0.5", data)
    assert alone_calls == calls  # the shared pass cost what one temperature alone costs
    _close(alone, hot_scores.records)
    # Each temperature's records are in the cache under its own key: a run outside any pool finds them.
    for spec in (str(tiny_model_dir), f"{tiny_model_dir}:temperature=0.5"):
        fresh, fresh_scorer = _cached(spec, tmp_path)
        assert fresh.scores("piqa", data).stats.cache == "hit" and not fresh_scorer.loaded
    # Another dtype is another model: not a sibling, scored by a pass of its own.
    half, half_scorer = _cached(f"{tiny_model_dir}:dtype=bfloat16-weights", cache, pool)
    assert half.scores("piqa", data).stats.cache == "miss" and half_scorer.forward_calls > 0
    assert base_scorer.forward_calls == calls


def test_a_sibling_is_handed_the_records_of_the_shared_pass_once(tiny_model_dir: Path, piqa_folder: Path) -> None:
    data = load_task("piqa", source=str(piqa_folder), limit=4)
    pool = ScorerPool(device="cpu", progress=False)
    hot, base = pool.scorer(f"{tiny_model_dir}:temperature=0.5"), pool.scorer(str(tiny_model_dir))
    hot_records, _ = hot.score(data)  # the sharpened side first: it computes the base's records too
    calls = hot.forward_calls
    base_records, _ = base.score(data)
    assert base.forward_calls == calls
    _close(_separately(str(tiny_model_dir), data)[0], base_records)
    _close(_separately(f"{tiny_model_dir}:temperature=0.5", data)[0], hot_records)
    base.score(data)
    assert base.forward_calls > calls  # handed over once, not kept
    # Items it was not handed (another sample) are scored, not served from another sample's pass: the hot side
    # scores `data` (its pass keeps the base's records of `data`), then the base asks for `more`.
    more = load_task("piqa", source=str(piqa_folder))
    hot.score(data)
    calls = base.forward_calls
    base.score(more)
    assert base.forward_calls > calls


def test_closing_a_temperature_keeps_the_model_its_open_sibling_uses(tiny_model_dir: Path, piqa_folder: Path) -> None:
    """The demo's T = 0.5 pair ends at its first look and closes its side; the base, still in the precision pair,
    must not load the model again, and its later passes stop scoring the closed temperature."""
    import calib_checks.engine as engine

    data = load_task("piqa", source=str(piqa_folder), limit=4)
    pool = ScorerPool(device="cpu", progress=False)
    hot, base = pool.scorer(f"{tiny_model_dir}:temperature=0.5"), pool.scorer(str(tiny_model_dir))
    hot.score(data)
    model = base.model
    hot.unload()
    assert base.loaded and base.model is model and hot.loaded  # one model, still in memory for the base
    more = load_task("piqa", source=str(piqa_folder))
    passes: list[list[float]] = []
    real = engine.Scorer._pass

    def recording(self, task_data, temperatures):
        passes.append(list(temperatures))
        return real(self, task_data, temperatures)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.Scorer, "_pass", recording)
        base.score(more)
    assert passes == [[1.0]]  # the closed temperature is not computed any more
    base.unload()
    assert not base.loaded  # the last open temperature closed: the weights go
    hot.score(data)  # a closed temperature reopens (and loads again)
    assert hot.loaded


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
                          data_source=str(piqa_folder), device="cpu", use_cache=False, sequential=False,
                          thresholds=REPO / "thresholds.toml", report_dir=tmp_path / "reports")
    gate = Gate(options)
    gate.judge(gate.cases())
    assert passes == [(1.0,), (1.0, 0.5)]  # the load's self-check (a few items at T = 1), then the one pass
    # Without the user's cache the run keeps a private one (so a later look scores only new items): both miss it.
    assert [event["cache"] for event in gate.events] == ["miss", "miss"]

"""The result cache: location, keys, atomic writes, untrusted entries, concurrent writers and the lock."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import pytest

from calib_checks import cache as cache_module
from calib_checks.cache import ScoreCache, ScoreCacheError, ScoreCacheWarning, cache_dir

IDENTITY = {"source": "folder", "name": "/m", "revision": None, "weights": "ab" * 32, "dtype": "float32",
            "temperature": 1.0}  # fmt: skip
IDS = ["q-0", "q-1", "q-2"]
STACK = {"calib_checks": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.24.0", "tokenizers": "0.23.3",
         "device": "cpu", "attention": ["sdpa", "eager"]}  # fmt: skip
INPUTS = {"model_identity": IDENTITY, "stack": STACK, "prompt_version": "lm-eval-0shot-v1", "scoring_version": "1"}


def _key(cache: ScoreCache, inputs: dict = INPUTS, task: str = "piqa") -> str:
    return cache.key(inputs, task)


def _items(ids: list[str] = IDS, digest: str = "d") -> list[tuple[str, str]]:
    return [(item, digest * 64) for item in ids]


def _records(ids: list[str] = IDS, scale: float = 1.0) -> list[dict]:
    return [
        {"id": item, "gold": i % 2, "scores": {"continuation-sum": [-scale * i, -0.1]}, "n_options": 2,
         "n_tokens": [3, 4], "letter_token_ids": [5, 6]}
        for i, item in enumerate(ids)
    ]  # fmt: skip


def _by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def test_cache_dir_from_env_then_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALIB_CHECKS_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "calib-checks"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "calib-checks"
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    assert ScoreCache().root == tmp_path / "explicit"


def test_key_is_deterministic_and_depends_on_every_input(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    base = _key(cache)
    assert base == _key(ScoreCache(tmp_path / "elsewhere"))
    assert len(base) == 64 and int(base, 16) >= 0
    reordered = {**INPUTS, "model_identity": dict(reversed(list(IDENTITY.items())))}
    assert _key(cache, reordered) == base
    variants = [
        _key(cache, {**INPUTS, "model_identity": {**IDENTITY, "temperature": 0.5}}),
        _key(cache, {**INPUTS, "model_identity": {**IDENTITY, "dtype": "bfloat16"}}),
        _key(cache, task="arc_easy"),
        _key(cache, {**INPUTS, "prompt_version": "lm-eval-0shot-v2"}),
        _key(cache, {**INPUTS, "scoring_version": "2"}),
        *(_key(cache, {**INPUTS, "stack": {**STACK, part: "other"}}) for part in STACK),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_a_chunk_made_by_another_software_stack_is_not_returned(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    old = _key(cache)
    cache.put(old, _items(), _records(), {"torch": STACK["torch"]})
    upgraded = _key(ScoreCache(tmp_path), {**INPUTS, "stack": {**STACK, "torch": "2.14.0+cpu"}})
    assert upgraded != old
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScoreCacheWarning)  # not a damaged chunk: simply another key
        assert ScoreCache(tmp_path).get(upgraded, _items()) == ({}, [])
    assert ScoreCache(tmp_path).get(old, _items()) == (_by_id(_records()), [{"torch": STACK["torch"]}])
    (chunk,) = cache.folder(old).iterdir()
    entry = json.loads(gzip.decompress(chunk.read_bytes()))
    assert entry["inputs"]["inputs"]["stack"] == STACK  # a chunk says which software made it


def test_put_then_get_round_trips_json_without_temp_files(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    key = _key(cache)
    assert cache.get(key, _items()) == ({}, [])
    path = cache.put(key, _items(), _records(), {"seconds": 1.5, "letter_tokens": {"A": 330}})
    assert path.parent == cache.folder(key) and path.is_file()
    records, stats = ScoreCache(tmp_path).get(key, _items())
    assert records == _by_id(_records()) and stats == [{"seconds": 1.5, "letter_tokens": {"A": 330}}]
    entry = json.loads(gzip.decompress(path.read_bytes()))
    assert entry["complete"] is True and [i for i, _ in entry["items"]] == IDS
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_chunks_add_up_and_serve_only_the_items_asked_for_with_their_content(tmp_path: Path) -> None:
    """A later request for more items finds the earlier ones (the next chunk holds only the new ones); an item
    stored under another content digest (its prompt changed) is not served."""
    cache = ScoreCache(tmp_path)
    key = _key(cache)
    more = [f"q-{i}" for i in range(5)]
    cache.put(key, _items(IDS), _records(IDS), {"chunk": 1})
    found, stats = cache.get(key, _items(more))
    assert sorted(found) == IDS and stats == [{"chunk": 1}]
    new = [i for i in more if i not in found]
    cache.put(key, _items(new), [r for r in _records(more) if r["id"] in new], {"chunk": 2})
    found, stats = ScoreCache(tmp_path).get(key, _items(more))
    assert found == _by_id(_records(more)) and sorted(s["chunk"] for s in stats) == [1, 2]
    found, stats = cache.get(key, _items(IDS[:1]))
    assert list(found) == IDS[:1] and stats == [{"chunk": 1}]  # only the chunks that served something
    assert cache.get(key, _items(IDS, digest="e")) == ({}, [])


def test_put_needs_a_key_made_by_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="call key\\(\\) first"):
        ScoreCache(tmp_path).put("0" * 64, _items(), _records(), {})


def test_a_failed_write_leaves_the_old_chunk_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ScoreCache(tmp_path)
    key = _key(cache)
    path = cache.put(key, _items(), _records(), {"run": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.os, "replace", crash)
    with pytest.raises(ScoreCacheError, match="disk full"):
        cache.put(key, _items(), _records(scale=2.0), {"run": 2})
    monkeypatch.undo()
    assert cache.get(key, _items()) == (_by_id(_records()), [{"run": 1}])
    assert [p.name for p in cache.folder(key).iterdir()] == [path.name]


def test_an_unusable_cache_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    cache = ScoreCache(tmp_path / "a-file" / "cache")
    key = _key(cache)
    for use in (lambda: cache.lock(key).__enter__(), lambda: cache.put(key, _items(), _records(), {})):
        with pytest.raises(ScoreCacheError, match="cannot write to the score cache .*--calib-no-cache"):
            use()


def _rewrite(path: Path, change) -> None:
    entry = json.loads(gzip.decompress(path.read_bytes()))
    change(entry)
    path.write_bytes(gzip.compress(json.dumps(entry).encode()))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable"),
        (lambda p: p.write_bytes(b"not gzip at all"), "unreadable"),
        (lambda p: p.write_bytes(gzip.compress(b'{"format": "calib-checks-score-cache", "records": [')), "unreadable"),
        (lambda p: _rewrite(p, lambda e: e.update(complete=False)), "not marked complete"),
        (lambda p: _rewrite(p, lambda e: e.pop("complete")), "not marked complete"),
        (lambda p: _rewrite(p, lambda e: e["records"].pop()), "differ from its item list"),
        (lambda p: _rewrite(p, lambda e: e["records"].reverse()), "differ from its item list"),
        (lambda p: _rewrite(p, lambda e: e["items"].append("x")), "item list is malformed"),
        (lambda p: _rewrite(p, lambda e: e["inputs"].update(task="arc_easy")), "do not hash to its key"),
        (lambda p: _rewrite(p, lambda e: e.update(version=99)), "format version 99"),
        (lambda p: _rewrite(p, lambda e: e.update(format="other")), "not a calib-checks score cache chunk"),
    ],
)
def test_damaged_chunks_are_ignored_with_a_warning_and_recomputed(tmp_path: Path, damage, reason: str) -> None:
    cache = ScoreCache(tmp_path)
    key = _key(cache)
    path = cache.put(key, _items(), _records(), {})
    damage(path)
    with pytest.warns(ScoreCacheWarning, match=reason):
        assert cache.get(key, _items()) == ({}, [])
    cache.put(key, _items(), _records(), {"again": True})
    assert cache.get(key, _items()) == (_by_id(_records()), [{"again": True}])


def test_a_chunk_stored_under_another_key_is_not_trusted(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    key, other = _key(cache), _key(cache, task="arc_easy")
    path = cache.put(key, _items(), _records(), {})
    cache.folder(other).mkdir(parents=True, exist_ok=True)
    (cache.folder(other) / path.name).write_bytes(path.read_bytes())
    with pytest.warns(ScoreCacheWarning, match="names key"):
        assert cache.get(other, _items()) == ({}, [])


# ---------------------------------------------------------------------------------------------- processes

MANY = [f"q-{i}" for i in range(2000)]


def _put_many(root: str, scale: float, rounds: int) -> None:
    cache = ScoreCache(root)
    key = _key(cache)
    for _ in range(rounds):
        cache.put(key, _items(MANY), _records(MANY, scale=scale), {"writer": scale})


def test_concurrent_puts_from_two_processes_leave_a_valid_chunk(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_put_many, args=(str(tmp_path), scale, 15)) for scale in (1.0, 2.0)]
    for writer in writers:
        writer.start()
    cache = ScoreCache(tmp_path)
    reads = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScoreCacheWarning)  # a reader must never meet a partial chunk
        while any(w.is_alive() for w in writers):
            found, _ = cache.get(_key(cache), _items(MANY))
            reads += bool(found)
            assert not found or len(found) == len(MANY)
    for writer in writers:
        writer.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert reads > 0
    records, stats = cache.get(_key(cache), _items(MANY))
    (stat,) = stats
    assert stat["writer"] in (1.0, 2.0)
    assert records == _by_id(_records(MANY, scale=stat["writer"]))  # one writer's whole chunk, never a mix
    assert len(list(cache.folder(_key(cache)).iterdir())) == 1  # same items: the same chunk, replaced


def _fill_once(root: str, counter: str, barrier, out: str) -> None:
    cache = ScoreCache(root)
    key = _key(cache)
    barrier.wait()  # both processes ask for the key at the same moment
    report = {"requested": time.time()}
    with cache.lock(key):
        found, _ = cache.get(key, _items())
        if found:
            report["records"] = [found[i] for i in IDS]
        else:
            with open(counter, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            time.sleep(1.0)  # a slow computation: the other process must wait on the lock meanwhile
            report["records"] = _records(scale=float(os.getpid()))
            cache.put(key, _items(), report["records"], {"by": os.getpid()})
            report["computed"] = True
        report["released"] = time.time()
    Path(out).write_text(json.dumps(report))


def test_the_lock_makes_the_second_process_reuse_the_first_ones_result(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, counter = context.Barrier(2), tmp_path / "computations.txt"
    outs = [tmp_path / f"process-{i}.json" for i in range(2)]
    workers = [context.Process(target=_fill_once, args=(str(tmp_path), str(counter), barrier, str(o))) for o in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    computed_by = counter.read_text().split()
    assert len(computed_by) == 1
    reports = sorted((json.loads(o.read_text()) for o in outs), key=lambda r: not r.get("computed"))
    first, second = reports
    assert first.get("computed") and not second.get("computed")
    assert second["requested"] < first["released"]  # it asked while the first was computing, and waited
    assert first["records"] == second["records"] == _records(scale=float(computed_by[0]))

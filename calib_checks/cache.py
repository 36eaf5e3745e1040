"""The score cache: per-item records of one score source on one task, stored once and extended, never recomputed.

Layout under the cache root (`cache_dir()`, or the `root` given to `ScoreCache`)::

    scores/<key[:2]>/<key>/<chunk>.json.gz   one chunk: header + engine stats + records, gzip-compressed JSON
    locks/<key>.lock                         file lock held while one process reads or extends that key
    models/<sha256>/                         GGUF checkpoints converted to safetensors (see `models.py`)
    hashes/                                  sha256 of large files (see `models.file_sha256`)

A key is the sha256 of the canonical JSON of everything a source's numbers depend on besides the items (for a
checkpoint: model identity, prompt version, scoring version and the software stack: torch / transformers /
tokenizers / calib-checks versions, device type, attention; `sources.Source.cache_inputs`) and the task. It holds
nothing pair-specific, so a new aligned candidate run against the same base reuses the base's records, while
records made by other software are never served as this software's.

Under a key, each computation is one chunk, and each record in it is filed under its item's id AND the digest of
the item's content (`data.item_digest`: prompts, options, gold), so a record is served only for exactly the item it
was computed on. A request for items some of which are stored computes only the others and adds them as a new
chunk: a `--calib-limit` raised from 100 to 200, or the gate's next sequential look, scores only the new items.
Scores do not depend on which items were computed together beyond float32 summation order (`scoring`).

Safety: chunks are JSON (never pickle), written to a temporary file in the same folder and renamed into place
(`os.replace`), so a reader sees either no chunk or a whole one; a killed run leaves at most a temporary file no
reader trusts. On read, a chunk is trusted only if it decompresses and parses, its header carries `complete: true`,
names this key, its recorded inputs hash to the key, and its records match its item list. Anything else is ignored
with a `ScoreCacheWarning` (its items are recomputed). The per-key lock makes concurrent processes (pytest-xdist
workers) that need the same key compute each item once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_bytes, canonical_json

ENTRY_FORMAT = "calib-checks-score-cache"
ENTRY_VERSION = 2  # 2: chunks of items under a key, records filed by item digest


class ScoreCacheError(CalibChecksError):
    """The cache folder cannot be used (not writable, not a folder)."""


class ScoreCacheWarning(UserWarning):
    """A cache chunk was unreadable or inconsistent and was ignored (its items will be recomputed)."""


def cache_dir() -> Path:
    """The cache root: `$CALIB_CHECKS_CACHE` if set, else `$XDG_CACHE_HOME/calib-checks`
    (`~/.cache/calib-checks` when `XDG_CACHE_HOME` is unset)."""
    explicit = os.environ.get("CALIB_CHECKS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "calib-checks"


class ScoreCache:
    """Per-item records on disk, keyed by everything they depend on (see the module docstring).

    Records and stats are plain JSON objects; callers rebuild their dataclasses, which keeps this module free of
    torch. Usage, so that concurrent processes extending one key compute each item once::

        key = cache.key(inputs, task)
        with cache.lock(key):
            stored, stats = cache.get(key, wanted)          # wanted: [(item id, item digest), ...]
            missing = [w for w in wanted if w[0] not in stored]
            if missing:
                cache.put(key, missing, compute(missing), stats_of_that)
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self._inputs: dict[str, dict] = {}

    def key(self, inputs: Mapping[str, Any], task: str) -> str:
        """sha256 (hex) of the canonical JSON of `inputs` and `task`; `put` records them in each chunk's header."""
        document = {"inputs": dict(inputs), "task": task}
        key = hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()
        self._inputs[key] = document
        return key

    def folder(self, key: str) -> Path:
        """Where the chunks of `key` live."""
        return self.root / "scores" / key[:2] / key

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an inter-process file lock on `key` (blocks while another process holds it).

        The OS releases the lock when its holder dies, so a crashed process leaves no stale lock.
        """
        lock_path = self.root / "locks" / f"{key}.lock"
        lock = FileLock(str(lock_path))
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:
            raise self._unusable(exc) from None
        try:
            yield
        finally:
            lock.release()

    def put(self, key: str, items: Sequence[tuple[str, str]], records: Sequence[Mapping[str, Any]],
            stats: Mapping[str, Any]) -> Path:
        """Store one chunk: `records` (JSON objects with an ``id``) of `items` ((id, digest) pairs, same order),
        and the `stats` of their computation, atomically. `key` must come from this object's `key()`."""
        if key not in self._inputs:
            raise ValueError(f"cache key {key[:16]}... was not made by this ScoreCache's key(); call key() first")
        listed = [[item_id, digest] for item_id, digest in items]
        entry = {
            "format": ENTRY_FORMAT,
            "version": ENTRY_VERSION,
            "key": key,
            "inputs": self._inputs[key],
            "items": listed,
            "stats": dict(stats),
            "records": [dict(r) for r in records],
            # Last on purpose: a reader that somehow got a cut-off document never sees it.
            "complete": True,
        }
        name = hashlib.sha256(canonical_json(listed).encode("utf-8")).hexdigest()[:32]
        path = self.folder(key) / f"{name}.json.gz"
        data = gzip.compress(json.dumps(entry, separators=(",", ":")).encode("utf-8"), compresslevel=6)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise self._unusable(exc) from None
        return path

    def _unusable(self, exc: OSError) -> ScoreCacheError:
        return ScoreCacheError(
            f"cannot write to the score cache {self.root} ({exc.strerror or exc}): set CALIB_CHECKS_CACHE to a "
            "writable folder, or run without the cache (--calib-no-cache; `score --no-cache`)"
        )

    def get(self, key: str, items: Sequence[tuple[str, str]]) -> tuple[dict[str, dict], list[dict]]:
        """The stored records of `items` ((id, digest) pairs) under `key`, by item id, and the stats of the chunks
        they came from. Items stored under another digest (the item changed) are not served."""
        wanted = dict(items)
        found: dict[str, dict] = {}
        stats: list[dict] = []
        folder = self.folder(key)
        for path in sorted(folder.glob("*.json.gz")) if folder.is_dir() else ():
            entry = self._read(key, path)
            if entry is None:
                continue
            used = False
            for (item_id, digest), record in zip(entry["items"], entry["records"]):
                if wanted.get(item_id) == digest and item_id not in found:
                    found[item_id] = record
                    used = True
            if used:
                stats.append(entry["stats"])
        return found, stats

    def _read(self, key: str, path: Path) -> dict | None:
        try:
            entry = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
        except (OSError, EOFError, ValueError) as exc:
            return self._reject(path, f"unreadable ({type(exc).__name__}: {exc})")
        problem = self._check(key, entry)
        return self._reject(path, problem) if problem else entry

    @staticmethod
    def _check(key: str, entry: Any) -> str | None:
        if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
            return "not a calib-checks score cache chunk"
        if entry.get("version") != ENTRY_VERSION:
            return f"chunk format version {entry.get('version')!r}, expected {ENTRY_VERSION}"
        if entry.get("complete") is not True:
            return "not marked complete"
        if entry.get("key") != key:
            return f"it names key {str(entry.get('key'))[:16]}..., not this one"
        records, stats, inputs, items = (entry.get(k) for k in ("records", "stats", "inputs", "items"))
        if not (isinstance(records, list) and isinstance(stats, dict) and isinstance(inputs, dict)
                and isinstance(items, list)):
            return "records, items, stats or inputs missing"
        if not all(isinstance(row, dict) for row in records):
            return "records are not JSON objects"
        if hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest() != key:
            return "its recorded inputs do not hash to its key"
        if not all(isinstance(it, list) and len(it) == 2 for it in items):
            return "its item list is malformed"
        if [row.get("id") for row in records] != [item_id for item_id, _ in items]:
            return "its records' item ids differ from its item list"
        return None

    @staticmethod
    def _reject(path: Path, problem: str) -> None:
        warnings.warn(
            f"ignoring score cache chunk {path}: {problem}; its items will be recomputed", ScoreCacheWarning,
            stacklevel=3,
        )
        return None

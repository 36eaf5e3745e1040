"""The result cache: per-item scores of one model on one task's items, stored once and reused.

Layout under the cache root (`cache_dir()`, or the `root` given to `ScoreCache`)::

    scores/<key[:2]>/<key>.json.gz   one entry: header + stats + records, gzip-compressed JSON
    locks/<key>.lock                 file lock held while one process computes that key
    models/<sha256>/                 GGUF checkpoints converted to safetensors (see `models.py`)
    hashes/                          sha256 of large files, keyed by path, device, inode, size, mtime, ctime
                                     (see `models.file_sha256`)

An entry's key is the sha256 of the canonical JSON of everything the scores depend on (model identity,
task, data fingerprint, item ids in order, prompt version, scoring version, and the software stack:
torch / transformers / tokenizers / calib-checks versions, device type, attention implementation, see
`models.software_stack`) and of nothing pair-specific, so a new aligned candidate run against the same base
reuses the base's entries, while scores made by other software are never served as this software's.

Safety: entries are JSON (never pickle), written to a temporary file in the same folder and renamed into
place (`os.replace`), so a reader sees either no entry or a whole one. On read, an entry is trusted only
if it decompresses and parses, its header carries `complete: true`, the key it names is the key asked for,
its recorded inputs hash to that key, and its record count and item ids match the header. Anything else is
ignored with a `ScoreCacheWarning` and recomputed (the next `put` overwrites it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_bytes, canonical_json

ENTRY_FORMAT = "calib-checks-score-cache"
ENTRY_VERSION = 1


class ScoreCacheError(CalibChecksError):
    """The cache folder cannot be used (not writable, not a folder)."""


class ScoreCacheWarning(UserWarning):
    """A cache entry was unreadable or inconsistent and was ignored (it will be recomputed)."""


def cache_dir() -> Path:
    """The cache root: `$CALIB_CHECKS_CACHE` if set, else `$XDG_CACHE_HOME/calib-checks`
    (`~/.cache/calib-checks` when `XDG_CACHE_HOME` is unset)."""
    explicit = os.environ.get("CALIB_CHECKS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "calib-checks"


def _record_json(record: Any) -> dict:
    return record.to_json() if hasattr(record, "to_json") else dict(record)


class ScoreCache:
    """Per-item scores on disk, keyed by everything they depend on.

    Records are stored as plain JSON objects (`ItemRecord.to_json()`); `get` returns them as dicts and the
    caller rebuilds its dataclasses (`ItemRecord.from_json`), which keeps this module free of torch.

    Usage, so that concurrent processes filling the same key compute it once::

        key = cache.key(identity, task, fingerprint, item_ids, PROMPT_VERSION, SCORING_VERSION, stack=stack)
        with cache.lock(key):
            hit = cache.get(key)
            if hit is None:
                records, stats = compute()
                cache.put(key, records, stats)
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self._inputs: dict[str, dict] = {}

    def key(
        self,
        model_identity: dict,
        task: str,
        data_fingerprint: str,
        item_ids: Sequence[str],
        prompt_version: str | int,
        scoring_version: str | int,
        *,
        stack: dict,
    ) -> str:
        """sha256 (hex) of the canonical JSON of the inputs; `put` records them in the entry's header.

        `stack` is the software the scores are computed with (`models.software_stack`); required, so that
        no caller can forget it and reuse scores made by another torch or transformers.
        """
        inputs = {
            "model_identity": model_identity,
            "task": task,
            "data_fingerprint": data_fingerprint,
            "item_ids": list(item_ids),
            "prompt_version": prompt_version,
            "scoring_version": scoring_version,
            "stack": stack,
        }
        key = hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()
        self._inputs[key] = inputs
        return key

    def path(self, key: str) -> Path:
        """Where the entry for `key` lives."""
        return self.root / "scores" / key[:2] / f"{key}.json.gz"

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

    def put(self, key: str, records: Sequence[Any], stats: dict) -> Path:
        """Store `records` (objects with `to_json()`, or dicts) and `stats` under `key`, atomically.

        `key` must come from this object's `key()`: the entry's header records the inputs it was made of,
        so that a reader can check the entry against them.
        """
        if key not in self._inputs:
            raise ValueError(f"cache key {key[:16]}... was not made by this ScoreCache's key(); call key() first")
        rows = [_record_json(record) for record in records]
        entry = {
            "format": ENTRY_FORMAT,
            "version": ENTRY_VERSION,
            "key": key,
            "inputs": self._inputs[key],
            "n_records": len(rows),
            "stats": stats,
            "records": rows,
            # Last on purpose: a reader that somehow got a cut-off document never sees it.
            "complete": True,
        }
        data = gzip.compress(json.dumps(entry, separators=(",", ":")).encode("utf-8"), compresslevel=6)
        path = self.path(key)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise self._unusable(exc) from None
        return path

    def _unusable(self, exc: OSError) -> ScoreCacheError:
        return ScoreCacheError(
            f"cannot write to the score cache {self.root} ({exc.strerror or exc}): set CALIB_CHECKS_CACHE to a "
            "writable folder, or run without the cache (--no-cache)"
        )

    def get(self, key: str) -> tuple[list[dict], dict] | None:
        """The stored `(records, stats)` for `key`, or None when absent or not trustworthy (warned)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
        except (OSError, EOFError, ValueError) as exc:
            return self._reject(path, f"unreadable ({type(exc).__name__}: {exc})")
        problem = self._check(key, entry)
        if problem:
            return self._reject(path, problem)
        return entry["records"], entry["stats"]

    @staticmethod
    def _check(key: str, entry: Any) -> str | None:
        if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
            return "not a calib-checks score cache entry"
        if entry.get("version") != ENTRY_VERSION:
            return f"entry format version {entry.get('version')!r}, expected {ENTRY_VERSION}"
        if entry.get("complete") is not True:
            return "not marked complete"
        if entry.get("key") != key:
            return f"it names key {str(entry.get('key'))[:16]}..., not this one"
        records, stats, inputs = entry.get("records"), entry.get("stats"), entry.get("inputs")
        if not isinstance(records, list) or not isinstance(stats, dict) or not isinstance(inputs, dict):
            return "records, stats or inputs missing"
        if entry.get("n_records") != len(records):
            return f"header says {entry.get('n_records')} records, found {len(records)}"
        if not all(isinstance(row, dict) for row in records):
            return "records are not JSON objects"
        if hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest() != key:
            return "its recorded inputs do not hash to its key"
        if [row.get("id") for row in records] != inputs.get("item_ids"):
            return "its records' item ids differ from the ids it was keyed on"
        return None

    @staticmethod
    def _reject(path: Path, problem: str) -> None:
        warnings.warn(
            f"ignoring score cache entry {path}: {problem}; it will be recomputed", ScoreCacheWarning, stacklevel=3
        )
        return None

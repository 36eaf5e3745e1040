"""Work split between a run's processes (pytest-xdist workers) through files in its run directory, each piece
done once over all of them.

Every worker needs every case's judgement (the family correction and the sequential stop span all cases), but
judging is the bootstrap: worth doing once. `SharedWork.run` takes keyed pieces of work; each process does its
share first (every n-th piece, rotated by its number) and then the others': under a per-piece file lock it reads
the piece's result when another process has written it, else does it and writes it (atomically). A process that
dies releases its locks, so a piece it left undone is done by the next process that reaches it: nothing waits on
a dead worker, and no piece is done twice unless two processes reach it at once after such a death. One process
alone does every piece in memory, no files.

Results are JSON: a piece read back equals the piece as computed (JSON keeps every float).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from calib_checks.fileio import atomic_write_text


class SharedWork:
    """Pieces of work shared by `n_workers` processes through `folder` (module docstring)."""

    def __init__(self, folder: Path | None, worker: int = 0, n_workers: int = 1) -> None:
        self.folder = folder if n_workers > 1 else None
        self.worker, self.n_workers = worker, max(1, n_workers)
        self.done_here = 0  # pieces this process computed (the rest it read): results.json counts them

    def run(self, pieces: Sequence[tuple[str, Callable[[], Any]]]) -> list[Any]:
        """The result of every (key, work) piece, in order; each `work()` returns something JSON-able."""
        results: dict[int, Any] = {}
        order = [i for i in range(len(pieces)) if i % self.n_workers == self.worker]
        order += [i for i in range(len(pieces)) if i % self.n_workers != self.worker]
        for i in order:
            key, work = pieces[i]
            results[i] = self._one(key, work)
        return [results[i] for i in range(len(pieces))]

    def _one(self, key: str, work: Callable[[], Any]) -> Any:
        if self.folder is None:
            self.done_here += 1
            return work()
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()
        path = self.folder / f"{name}.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / f"{name}.lock")):
            if path.is_file():
                return json.loads(path.read_text(encoding="utf-8"))
            result = work()
            atomic_write_text(path, json.dumps(result))
        self.done_here += 1
        return result

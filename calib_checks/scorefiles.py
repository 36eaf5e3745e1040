"""Precomputed scores as a model: the `scores:DIR` model spec of the gate.

A team that scores elsewhere gates here by pointing a pair side at a folder holding ``<task>.jsonl`` in the
format `python -m calib_checks score --out` writes: one JSON object per item with ``id``, ``gold`` and
``scores`` (extractor name -> one log-score per option, data set option order). ``probs`` is optional and
recomputed from ``scores`` (softmax across options) when absent; other keys (``n_tokens``,
``letter_token_ids``, ``letter_mass``, ...) are kept when present. No data set is loaded for such a side: the
items are the records, matched by id with the other side (`align_by_id`).

The identity of a scores side is the folder and the sha256 of the task file, so two different folders are two
models, and the same folder on both sides is the same model (the gate refuses it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import read_jsonl

PREFIX = "scores:"


class ScoreFileError(CalibChecksError):
    """A scores folder or one of its task files cannot be used as written (one line: file, line, fix)."""


def scores_dir(text: str) -> Path | None:
    """The folder of a `scores:DIR` spec (absolute), or None when `text` is not such a spec."""
    if not text.startswith(PREFIX):
        return None
    folder = Path(text[len(PREFIX):]).expanduser()
    return folder.resolve()


def check_dir(folder: Path) -> None:
    """Raise ScoreFileError unless `folder` is a folder of `<task>.jsonl` files."""
    if not folder.is_dir():
        raise ScoreFileError(f"scores folder {str(folder)!r} does not exist: pass scores:DIR with DIR holding "
                             "<task>.jsonl files written by `python -m calib_checks score --out`")
    if not any(folder.glob("*.jsonl")):
        raise ScoreFileError(f"scores folder {str(folder)!r} holds no <task>.jsonl file")


def task_file(folder: Path, task: str) -> Path:
    """The task's file in a scores folder; ScoreFileError naming what is there when it is missing."""
    path = folder / f"{task}.jsonl"
    if not path.is_file():
        present = ", ".join(sorted(p.stem for p in folder.glob("*.jsonl"))) or "none"
        raise ScoreFileError(f"scores folder {str(folder)!r} has no {task}.jsonl (tasks present: {present}); "
                             f"score the task there or drop it from --calib-tasks")
    return path


def identity(folder: Path, task: str) -> dict[str, Any]:
    """What the side's numbers are: the folder and the content hash of its task file."""
    path = task_file(folder, task)
    return {"source": "scores", "name": str(folder), "task_file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def folder_identity(folder: Path) -> dict[str, Any]:
    """The whole folder's identity: the sha256 of its task files' names and contents (two folders holding the
    same files are the same model, whatever their paths)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.jsonl")):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return {"source": "scores", "name": str(folder), "content_sha256": digest.hexdigest()}


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _record(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One row made into an `ItemRecord.to_json()` dict: probs recomputed where absent, defaults filled."""
    for key in ("id", "gold", "scores"):
        if key not in row:
            raise ScoreFileError(f"{where}: no {key!r} (each line needs id, gold and scores per extractor)")
    scores = row["scores"]
    if not isinstance(scores, Mapping) or not scores:
        raise ScoreFileError(f"{where}: 'scores' must map extractor names to one number per option")
    n_options = {len(v) for v in scores.values() if isinstance(v, list)}
    if len(n_options) != 1 or len(scores) != sum(isinstance(v, list) for v in scores.values()):
        raise ScoreFileError(f"{where}: every extractor in 'scores' must list one number per option, the same count")
    (k,) = n_options
    try:
        probs = row.get("probs") or {name: _softmax([float(v) for v in values]) for name, values in scores.items()}
    except (TypeError, ValueError):
        raise ScoreFileError(f"{where}: 'scores' holds a value that is not a number") from None
    return {
        "id": row["id"], "gold": row["gold"], "scores": scores, "probs": probs,
        "n_tokens": row.get("n_tokens") or [1] * k,
        "letter_token_ids": row.get("letter_token_ids") or [],
        "truncated": row.get("truncated", False), "prefix_fallback": row.get("prefix_fallback", False),
        "letter_mass": row.get("letter_mass"),
    }


def read_task_scores(folder: Path, task: str, label: str) -> Any:
    """The side's `scoring.TaskScores` on `task`, read from `folder/<task>.jsonl` (no model, no data set)."""
    from calib_checks.scoring import ItemRecord, ScoringError, TaskScores

    path = task_file(folder, task)
    rows = read_jsonl(path, ScoreFileError, "scores")
    if not rows:
        raise ScoreFileError(f"{path} is empty: an empty data set cannot be gated")
    records = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        where = f"{path} line {number}"
        if not isinstance(row, Mapping):
            raise ScoreFileError(f"{where}: expected a JSON object per line")
        try:
            record = ItemRecord.from_json(_record(row, where))
        except ScoringError as exc:
            raise ScoreFileError(f"{where}: {exc}") from None
        if record.id in seen:
            raise ScoreFileError(f"{where}: item id {record.id!r} appears twice")
        seen.add(record.id)
        records.append(record)
    ident = identity(folder, task)
    return TaskScores(model_label=label, model_identity=ident, task=task,
                      data_fingerprint=ident["task_file_sha256"], records=records,
                      stats={"cache": "scores-file", "source": str(path)})


def align_by_id(base: Any, aligned: Any) -> tuple[Any, Any, str | None]:
    """Both sides' TaskScores on the same items in the base's order, or a reason why they cannot be.

    A side read from a scores folder may list its items in another order; what matters is that both sides
    scored the same ids. Returns (base, aligned, None), or (base, aligned, problem) when an item is missing on
    one side (the case then errors; it is never judged on the items both happen to share).
    """
    from dataclasses import replace

    base_ids = [r.id for r in base.records]
    aligned_by_id = {r.id: r for r in aligned.records}
    if base_ids == list(aligned_by_id):
        return base, aligned, None
    missing = [i for i in base_ids if i not in aligned_by_id]
    extra = sorted(set(aligned_by_id) - set(base_ids))
    if missing or extra:
        which = (f"item {missing[0]!r} is missing on the aligned side" if missing
                 else f"item {extra[0]!r} is missing on the base side")
        return base, aligned, (f"base and aligned scored different items ({len(base_ids)} vs {len(aligned_by_id)}; "
                               f"{which}); score both on the same items")
    return base, replace(aligned, records=[aligned_by_id[i] for i in base_ids]), None

"""Precomputed scores: the ``scores:DIR`` side of a gate pair.

A team that scores elsewhere gates here by pointing a side at a folder holding ``<task>.jsonl`` in the format
`python -m calib_checks score --out` writes: one JSON object per item with ``id``, ``gold`` and ``scores``
(extractor name -> one log-score per option, data set option order). Other keys (``n_tokens``,
``letter_token_ids``, ``letter_mass``, ...) are kept when present. No data set is loaded for such a side: its items
are its records (`item_ids`): when it is the first side of a comparison holding its own records, the gate draws
its `--calib-limit` sample and its looks among them (`collect.decide_items`), and the other side must hold or
score every one of them.

``probs`` is never taken from the file: the gate judges `records.probabilities` of the scores, which the
report's temperature fit also reads, so the two cannot disagree. A file that carries ``probs`` must agree with
them within the precision such numbers are stored in (`PROBS_RTOL`: bfloat16's, the coarsest in use), else the
line is refused: scores and probabilities that disagree mean the file is not what it claims to be.

The identity of a folder is the sha256 of its task files' names and contents, so two folders holding the same
files are the same model (the gate refuses to compare them), wherever they lie.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calib_checks.fileio import read_jsonl
from calib_checks.records import ItemRecord, RecordError, ScoreStats, TaskScores, probabilities
from calib_checks.sources import Source, SourceContext, SourceError, safe_label

if TYPE_CHECKING:
    from calib_checks.data import TaskData

#: Largest relative difference accepted between a file's ``probs`` and the softmax of its ``scores``:
#: 2 units in the last place of bfloat16 (8 significant bits, unit roundoff 2^-8), so probabilities stored in
#: bfloat16, float16 or float32 pass and probabilities of other scores do not. An absolute floor of 1e-6 lets
#: tiny probabilities round to 0.
PROBS_RTOL = 2.0**-7
PROBS_ATOL = 1e-6


class ScoreFolderSource(Source):
    """``scores:DIR``: a folder of ``<task>.jsonl`` files."""

    prefix = "scores:"

    def __init__(self, text: str, context: SourceContext) -> None:
        super().__init__(text, context)
        self.folder = Path(self.location).expanduser().resolve()
        if not self.folder.is_dir():
            raise SourceError(f"scores folder {str(self.folder)!r} does not exist: pass scores:DIR with DIR holding "
                              "<task>.jsonl files written by `python -m calib_checks score --out`")
        if not any(self.folder.glob("*.jsonl")):
            raise SourceError(f"scores folder {str(self.folder)!r} holds no <task>.jsonl file")
        self._parsed: dict[str, tuple[dict[str, ItemRecord], str, Path]] = {}
        self._identity: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return safe_label(self.folder.name)

    @property
    def label_context(self) -> tuple[str, ...]:
        return tuple(safe_label(p) for p in reversed(self.folder.parts[1:-1]))

    def identity(self) -> dict[str, Any]:
        if self._identity is None:  # hashed once per run: every look's records carry the same identity
            digest = hashlib.sha256()
            for path in sorted(self.folder.glob("*.jsonl")):
                digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
            self._identity = {"source": "scores", "name": str(self.folder), "content_sha256": digest.hexdigest()}
        return self._identity

    def describe(self, identity: Mapping[str, Any]) -> str:
        return f"scores folder {identity.get('name')} (content {str(identity.get('content_sha256'))[:12]})"

    def _task_file(self, task: str) -> Path:
        path = self.folder / f"{task}.jsonl"
        if not path.is_file():
            present = ", ".join(sorted(p.stem for p in self.folder.glob("*.jsonl"))) or "none"
            raise SourceError(f"scores folder {str(self.folder)!r} has no {task}.jsonl (tasks present: {present}); "
                              f"score the task there or drop it from --calib-tasks")
        return path

    def _read(self, task: str) -> tuple[dict[str, ItemRecord], str, Path]:
        """The task file's records by id, its content hash and path, read and checked once."""
        if task not in self._parsed:
            path = self._task_file(task)
            body = path.read_bytes()
            rows = read_jsonl(path, SourceError, "scores")
            if not rows:
                raise SourceError(f"{path} is empty: an empty data set cannot be gated")
            records: dict[str, ItemRecord] = {}
            for number, row in enumerate(rows, start=1):
                record = _record(row, f"{path} line {number}")
                if record.id in records:
                    raise SourceError(f"{path} line {number}: item id {record.id!r} appears twice")
                records[record.id] = record
            self._parsed[task] = (records, hashlib.sha256(body).hexdigest(), path)
        return self._parsed[task]

    def item_ids(self, task: str) -> list[str]:
        return list(self._read(task)[0])

    def scores(self, task: str, data: TaskData | None, ids: Sequence[str] | None = None) -> TaskScores:
        records, content, path = self._read(task)
        wanted = ids if ids is not None else data.item_ids if data is not None else list(records)
        return TaskScores(model_label=self.label, model_identity=self.identity(), task=task,
                          data_fingerprint=content, records=[records[i] for i in wanted if i in records],
                          stats=ScoreStats(source=f"scores file {path}", files=(str(path),),
                                           n_available=len(records)))


def _record(row: Any, where: str) -> ItemRecord:
    """One line as an ItemRecord; SourceError naming the line for anything malformed."""
    if not isinstance(row, Mapping):
        raise SourceError(f"{where}: expected a JSON object per line")
    for key in ("id", "gold", "scores"):
        if key not in row:
            raise SourceError(f"{where}: no {key!r} (each line needs id, gold and scores per extractor)")
    scores = row["scores"]
    if not isinstance(scores, Mapping) or not scores or not all(isinstance(v, list) for v in scores.values()):
        raise SourceError(f"{where}: 'scores' must map extractor names to one number per option")
    counts = {len(v) for v in scores.values()}
    if len(counts) != 1:
        raise SourceError(f"{where}: every extractor in 'scores' must list one number per option, the same count")
    try:
        record = ItemRecord.from_json({**row, "n_options": counts.pop()})
    except RecordError as exc:
        raise SourceError(f"{where}: {exc}") from None
    given = row.get("probs")
    if given is not None:
        _check_probs(record, given, where)
    return record


def _check_probs(record: ItemRecord, given: Any, where: str) -> None:
    if not isinstance(given, Mapping):
        raise SourceError(f"{where}: 'probs' must map extractor names to one probability per option")
    for name, values in given.items():
        if name not in record.scores:
            raise SourceError(f"{where}: 'probs' has {name!r}, which 'scores' lacks")
        expected = probabilities(record.scores[name])
        try:
            pairs = list(zip(expected, (float(v) for v in values), strict=True))
        except (TypeError, ValueError):
            raise SourceError(f"{where}: 'probs' of {name} must be one number per option") from None
        for k, (want, got) in enumerate(pairs):
            if not math.isclose(want, got, rel_tol=PROBS_RTOL, abs_tol=PROBS_ATOL):
                raise SourceError(
                    f"{where}: 'probs' of {name} disagree with the softmax of its 'scores' (option {k}: {got:.6g} "
                    f"given, {want:.6g} from the scores); the gate judges the softmax of 'scores', so fix the file "
                    f"or drop 'probs'")

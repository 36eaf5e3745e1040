"""A worked example of a score source: per-option log-scores in CSV files, the ``csv:DIR`` side of a gate pair.

docs/ARCHITECTURE.md ("Adding a score source") walks through it; tests/test_sources.py registers it through an
entry point, exactly as a third-party package would, and gates a pair of it end to end.

``DIR/<task>.csv`` holds one row per item, option and extractor, with the header
``id,gold,extractor,option,score`` (``option`` counts from 0, ``score`` is a log-score). Such files are what a
spreadsheet or a SQL export of another harness's logs gives.

Registering it is one line in the package that ships it::

    [project.entry-points."calib_checks.sources"]
    csv = "csv_source:CsvSource"

(an in-tree source would instead add one line to `calib_checks.sources.registry.BUILTIN`).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calib_checks.data import TaskData
from calib_checks.records import ItemRecord, RecordError, ScoreStats, TaskScores
from calib_checks.sources import Source, SourceContext, SourceError, safe_label


class CsvSource(Source):
    """``csv:DIR``: one ``<task>.csv`` per task (see the module docstring)."""

    prefix = "csv:"  # the entry point's name and ':'; the gate passes the whole side text, prefix included

    def __init__(self, text: str, context: SourceContext) -> None:
        super().__init__(text, context)
        self.folder = Path(self.location).expanduser().resolve()
        if not self.folder.is_dir():  # fail when the side is opened, before anything is scored
            raise SourceError(f"{text}: {self.folder} is not a folder of <task>.csv files")
        self._records: dict[str, dict[str, ItemRecord]] = {}

    @property
    def label(self) -> str:  # records go under records/<label>/; the gate makes clashing labels distinct
        return safe_label(self.folder.name)

    def identity(self) -> dict[str, Any]:  # what the numbers are: two folders with the same files are one model
        digest = hashlib.sha256()
        for path in sorted(self.folder.glob("*.csv")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return {"source": "csv", "name": str(self.folder), "content_sha256": digest.hexdigest()}

    def _read(self, task: str) -> tuple[dict[str, ItemRecord], Path]:
        """Every record of ``<task>.csv`` by id (read once: the gate asks again at each sequential look)."""
        if task in self._records:
            return self._records[task], self.folder / f"{task}.csv"
        path = self.folder / f"{task}.csv"
        if not path.is_file():
            raise SourceError(f"{self.text}: no {task}.csv in {self.folder}")
        rows: dict[str, dict[str, Any]] = {}
        with open(path, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    item = rows.setdefault(row["id"], {"gold": int(row["gold"]), "scores": {}})
                    values = item["scores"].setdefault(row["extractor"], {})
                    values[int(row["option"])] = float(row["score"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise SourceError(f"{path}:{line}: {exc!r}; rows are id,gold,extractor,option,score") from None
        records = {}
        for item_id, item in rows.items():
            scores = {name: [by_option[k] for k in sorted(by_option)] for name, by_option in item["scores"].items()}
            try:
                records[item_id] = ItemRecord(id=item_id, gold=item["gold"], scores=scores,
                                              n_options=len(next(iter(scores.values()))))
            except RecordError as exc:
                raise SourceError(f"{path}: {exc}") from None
        self._records[task] = records
        return records, path

    def item_ids(self, task: str) -> list[str]:  # the items this side holds: the gate samples and looks among them
        return list(self._read(task)[0])

    def scores(self, task: str, data: TaskData | None, ids: Sequence[str] | None = None) -> TaskScores:
        # The contract: a record for every asked id (the gate's sample and look). Never sample here; an asked id
        # the file lacks is simply absent, and the gate names the side and how many are missing.
        records, path = self._read(task)
        wanted = ids if ids is not None else data.item_ids if data is not None else list(records)
        return TaskScores(model_label=self.label, model_identity=self.identity(), task=task,
                          data_fingerprint=hashlib.sha256(path.read_bytes()).hexdigest(),
                          records=[records[i] for i in wanted if i in records],
                          stats=ScoreStats(source=f"CSV file {path}", files=(str(path),), n_available=len(records)))

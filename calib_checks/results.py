"""The run's records on disk: the run directory, the `results.json` schema, atomic writes, `reports/latest`.

Layout of one run (docs/RESULTS.md documents every field)::

    reports/<run-id>/results.json                      the run: identity, pairs, tasks, every case, verdict
    reports/<run-id>/report.html                       the self-contained page rendered from the above
    reports/<run-id>/records/<model-label>/<task>.jsonl     one ItemRecord JSON object a line: every record any
                                                       verdict used, merged over looks and comparisons
    reports/<run-id>/records/<model-label>/<task>.meta.json model identity, data fingerprint, scoring stats
    reports/<run-id>/items/<task>.jsonl                one item a line: id, gold, options, context, subject
    reports/<run-id>/items/<task>.meta.json            the task's data source, fingerprint and counts
    reports/<run-id>/items/families/<family>/<task>.json   the ids a comparison family is judged on, in order
    reports/latest -> <run-id>                         the newest COMPLETE run (a `LATEST` text file where
                                                       symlinks are unavailable)

Every file is written to a unique temporary name in its final folder and renamed with `os.replace`, so a
reader sees the old file or the new one, never half of one. Several pytest-xdist workers may write records
at once; a lock per records file keeps the `.jsonl` and its `.meta.json` from two writers consistent.
`results.json` is written last, by the controller process, with `"complete": true` only when the session
ended normally; an interrupted run therefore leaves a run directory without `results.json` (or with
`"complete": false`) and never moves `reports/latest`. report.html is rendered from results.json by the
caller (calib_checks.gate), after it is written: this module never imports the presentation.

This module imports neither torch nor the scoring code: it duck-types `TaskScores`, `TaskData` and
`CaseResult` through the attributes named in docs/ARCHITECTURE.md, so the report can be rebuilt anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_text, canonical_json, read_jsonl
from calib_checks.verdicts import RUN_VERDICTS, VERDICTS, run_verdict

SCHEMA_VERSION = 3
"""Bumped on any change a reader of results.json must know about (renamed/removed field, changed meaning)."""


RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
LATEST_LINK = "latest"
LATEST_FILE = "LATEST"

# Run ids, model labels and task names become path components: keep them to a safe alphabet.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@=+-]*$")
_REQUIRED_KEYS = ("schema_version", "run_id", "complete", "verdict", "run", "models", "pairs", "tasks", "cases")
_VERSIONED_PACKAGES = ("calib-checks", "torch", "transformers", "numpy", "jinja2")


class ResultsError(CalibChecksError):
    """A run directory or results.json that cannot be written or read as documented."""


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a short random suffix, e.g. `20260123T045901Z-3fa9c1`."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def safe_name(value: str, what: str) -> str:
    """Return `value` if it can be a single path component here, else raise ResultsError naming `what`."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in (LATEST_LINK, LATEST_FILE):
        raise ResultsError(
            f"{what} {value!r} cannot name a file in the run directory: use letters, digits and ._@=+- only, "
            f"not starting with a dot (model labels come from models.LoadedModel.label)"
        )
    return value


def _dumps(value: Any, what: str, indent: int | None = None) -> str:
    # allow_nan=False: a NaN/inf would make the file invalid JSON for every other reader; fail here instead.
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent, sort_keys=indent is not None)
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"{what} is not JSON-able ({exc}); records and cases must hold finite numbers") from exc


def _as_dict(obj: Any, what: str) -> dict:
    """The JSON dict of a contract dataclass (its `to_json()`), or a dict as it is."""
    value = obj.to_json() if hasattr(obj, "to_json") else obj
    if not isinstance(value, dict):
        raise ResultsError(f"{what} must be a dict or have to_json(); got {type(obj).__name__}")
    return value


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that change numbers, plus Python; None where not installed.

    Read from package metadata, so recording them imports nothing heavy (no torch).
    """
    versions: dict[str, str | None] = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def describe_task(task_data: Any) -> dict:
    """The `tasks[<task>]` entry of results.json for a `data.TaskData` (see docs/RESULTS.md)."""
    items = list(task_data.items)
    return {
        "source": task_data.source,
        "fingerprint": task_data.fingerprint,
        "n_available": int(task_data.n_available),
        "n_items": len(items),
        "limit": task_data.limit,
        "seed": task_data.seed,
        "item_ids": [item.id for item in items],
        # Rows left out on purpose (e.g. MedMCQA's unlabeled rows), by reason: never a silent drop.
        "skipped": dict(getattr(task_data, "skipped", {}) or {}),
    }


class RunWriter:
    """Writes one run directory `report_dir/run_id` (layout in the module docstring and docs/RESULTS.md).

    Workers call `write_records` / `write_items` (each file is atomic, any process may call them, the same
    file twice included); the controller calls `finish` once at the end of the session.
    """

    def __init__(self, report_dir: str | Path, run_id: str) -> None:
        self.report_dir = Path(report_dir)
        self.run_id = safe_name(run_id, "run id")
        self.run_dir = self.report_dir / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()

    def _lock(self, name: str) -> FileLock:
        locks = self.run_dir / ".locks"
        locks.mkdir(exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"))

    def write_records(self, scores: Any) -> Path:
        """Add `scores`' records to `records/<model-label>/<task>.jsonl` (one ItemRecord a line) and describe the
        file in its `.meta.json`.

        `scores` is a `records.TaskScores`. Records are merged per item, never replaced: every look and every
        comparison family that judged this side on this task adds its items, so the file holds every record any
        verdict used (`python -m calib_checks recompute` judges from it again). An item already there with
        other numbers is refused (ResultsError): one side cannot have given two answers to one item. Returns the
        `.jsonl` path.
        """
        label = safe_name(scores.model_label, "model label")
        task = safe_name(scores.task, "task name")
        what = f"records of {label} on {task}"
        path = self.run_dir / "records" / label / f"{task}.jsonl"
        with self._lock(f"records--{label}--{task}"):
            rows = {row["id"]: row for row in read_jsonl(path, ResultsError, what)} if path.exists() else {}
            for record in scores.records:
                row = json.loads(_dumps(_as_dict(record, what), what))
                if rows.setdefault(row["id"], row) != row:
                    raise ResultsError(f"{what}: item {row['id']!r} was recorded with other numbers earlier in "
                                       "this run; one side cannot give two answers to one item")
            body = "".join(_dumps(row, what) + "\n" for row in rows.values())
            meta = {
                "model_label": label,
                "task": task,
                "model_identity": scores.model_identity,
                "data_fingerprint": scores.data_fingerprint,
                "stats": scores.stats.to_json(),
                "n_records": len(rows),
                "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
            }
            atomic_write_text(path, body)
            atomic_write_text(path.with_suffix(".meta.json"), _dumps(meta, what, indent=2) + "\n")
        return path

    def write_item_set(self, family: str, item_set: dict) -> Path:
        """Write `items/families/<family>/<task>.json`: the ids a comparison family is judged on for one task, in
        their order, and who decided them (`collect.ItemSet.to_json`). Each look judges the first items of it in
        the run's seeded order (calib_checks/sampling.py), so with the records this recomputes every verdict."""
        family = safe_name(family, "comparison family")
        task = safe_name(item_set["task"], "task name")
        path = self.run_dir / "items" / "families" / family / f"{task}.json"
        with self._lock(f"item-set--{family}--{task}"):
            atomic_write_text(path, _dumps(item_set, f"items of {family} on {task}") + "\n")
        return path

    def write_items(self, task_data: Any) -> Path:
        """Add `task_data`'s items to `items/<task>.jsonl` (id, gold, options, context, subject per item) and
        describe them in its `.meta.json` (`describe_task`).

        `task_data` is a `data.TaskData`. The report shows option texts from here; `finish` fills a task's entry
        from the `.meta.json`. Comparisons judged on different items of one task (e.g. two lm-eval runs with
        different `--limit`) add up: the file holds every item any of them was judged on. Returns the path.
        """
        rows = [{"id": item.id, "gold": int(item.gold), "options": list(item.options), "context": item.context,
                 "subject": item.subject} for item in task_data.items]
        return self._add_items(task_data.task, rows, describe_task(task_data))

    def write_record_items(self, scores: Any) -> Path:
        """Add the items of a side that decides no items and needs none (a scores folder), as its records name
        them (id and gold; no texts are known), so that the run records which items it gated."""
        rows = [{"id": r.id, "gold": int(r.gold)} for r in scores.records]
        ids = [row["id"] for row in rows]
        description = {"source": scores.stats.source, "fingerprint": None, "n_available": scores.stats.n_available,
                       "n_items": len(ids), "limit": None, "seed": None, "item_ids": ids, "skipped": {}}
        return self._add_items(scores.task, rows, description)

    def _add_items(self, task: str, rows: list[dict], description: dict) -> Path:
        task = safe_name(task, "task name")
        what = f"items of {task}"
        path = self.run_dir / "items" / f"{task}.jsonl"
        meta_path = path.with_suffix(".meta.json")
        with self._lock(f"items--{task}"):
            if path.exists() and meta_path.exists():
                old_rows = read_jsonl(path, ResultsError, what)
                old = _read_json(meta_path, "items metadata")
                known = {row["id"] for row in old_rows}
                added = [row for row in rows if row["id"] not in known]
                if not added and old.get("fingerprint") == description.get("fingerprint"):
                    return path
                rows = old_rows + added
                if old.get("fingerprint") != description.get("fingerprint"):
                    sources = [s for s in dict.fromkeys([old.get("source"), description.get("source")]) if s]
                    description = {**old, "source": " + ".join(sources), "n_items": len(rows),
                                   "item_ids": [row["id"] for row in rows],
                                   "fingerprint": hashlib.sha256(canonical_json(rows).encode()).hexdigest()}
            atomic_write_text(path, "".join(_dumps(row, what) + "\n" for row in rows))
            atomic_write_text(meta_path, _dumps(description, what, indent=2) + "\n")
        return path

    def _record_files(self) -> list[dict]:
        entries = []
        for path in sorted((self.run_dir / "records").glob("*/*.jsonl")):
            meta = _read_json(path.with_suffix(".meta.json"), "records metadata")
            entries.append(
                {
                    "model": path.parent.name,
                    "task": path.stem,
                    "path": path.relative_to(self.run_dir).as_posix(),
                    "n_records": meta.get("n_records"),
                    "sha256": _sha256_file(path),
                }
            )
        return entries

    def _models(self, given: dict) -> dict:
        """`models` of results.json: what the caller gave, completed from the records' metadata."""
        models = {label: dict(info) for label, info in given.items()}
        for meta_path in sorted((self.run_dir / "records").glob("*/*.meta.json")):
            meta = _read_json(meta_path, "records metadata")
            entry = models.setdefault(meta["model_label"], {})
            entry.setdefault("identity", meta.get("model_identity"))
        return models

    def _tasks(self, given: dict) -> dict:
        tasks = {}
        for meta_path in sorted((self.run_dir / "items").glob("*.meta.json")):
            tasks[meta_path.name[: -len(".meta.json")]] = _read_json(meta_path, "items metadata")
        for name, entry in given.items():
            tasks[name] = {**tasks.get(name, {}), **entry}
        return tasks

    def finish(self, identity: dict, pairs: list[dict], tasks: dict, cases: list[Any], complete: bool,
               verdict: tuple[str, str] | None = None, chains: list[dict] | None = None) -> Path:
        """Write results.json (atomically). report.html is the caller's (calib_checks.gate renders it after this
        returns: persistence never calls presentation); `publish` then repoints `latest` if the run is complete.

        identity: the run's identity (docs/RESULTS.md, "run"): `models` (label -> {spec, revision, identity,
        ...}), `dtype`, `device`, `thresholds_file`, optional `started_at` (epoch seconds; default: when this
        writer was made) and `argv` (default `sys.argv`); other JSON-able keys are kept under `run`.
        pairs: `[{"name", "base", "aligned", ...}, ...]` (model labels), one per comparison. chains:
        `[{"name", "checkpoints", "comparisons"}]` (labels, comparison names). tasks: task -> `describe_task(...)`.
        cases: `verdicts.CaseResult` objects. verdict: the run's (verdict, reason) as `verdicts.run_verdict`
        gives it (default: under the built-in policy). Returns the results.json path.
        """
        identity = dict(identity)
        for pair in pairs:
            missing = {"name", "base", "aligned"} - set(pair)
            if missing:
                raise ResultsError(f"pair {pair!r} lacks {sorted(missing)}: each pair needs name, base, aligned")
        case_dicts = [_as_dict(case, "case") for case in cases]
        for case in case_dicts:
            if case.get("verdict") not in VERDICTS:
                raise ResultsError(f"case verdict {case.get('verdict')!r} is not one of {VERDICTS}")
        verdict, reason = verdict or run_verdict([case["verdict"] for case in case_dicts], complete)
        if verdict not in RUN_VERDICTS:
            raise ResultsError(f"run verdict {verdict!r} is not one of {RUN_VERDICTS}")
        summary = {v: sum(case["verdict"] == v for case in case_dicts) for v in VERDICTS}

        started = identity.pop("started_at", self.started_at)
        if isinstance(started, bool) or not isinstance(started, (int, float)):
            raise ResultsError(f"identity started_at must be epoch seconds (time.time()), got {started!r}")
        finished = time.time()
        thresholds_file = identity.pop("thresholds_file", None)
        thresholds_sha = identity.pop("thresholds_sha256", None)
        if thresholds_file is not None and thresholds_sha is None and Path(thresholds_file).is_file():
            thresholds_sha = _sha256_file(Path(thresholds_file))
        models = self._models(identity.pop("models", {}))
        run = {
            "started_at": _utc_iso(started),
            "finished_at": _utc_iso(finished),
            "duration_s": round(finished - started, 3),
            "argv": list(identity.pop("argv", sys.argv)),
            "dtype": identity.pop("dtype", None),
            "device": identity.pop("device", None),
            "thresholds": {"file": None if thresholds_file is None else str(thresholds_file),
                           "sha256": thresholds_sha},
            "versions": package_versions(),
            **identity,
        }
        results = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "complete": bool(complete),
            "verdict": verdict,
            "verdict_reason": reason,
            "summary": summary,
            "run": run,
            "models": models,
            "pairs": [dict(pair) for pair in pairs],
            "chains": [dict(chain) for chain in chains or ()],
            "tasks": self._tasks(tasks),
            "cases": case_dicts,
            "records": self._record_files(),
            "report": REPORT_FILE,
        }
        path = atomic_write_text(self.run_dir / RESULTS_FILE, _dumps(results, "results", indent=2) + "\n")
        # Every writer is done by now (finish runs once, at the end of the session): the empty lock files
        # would only clutter the artifact.
        shutil.rmtree(self.run_dir / ".locks", ignore_errors=True)
        return path

    def publish(self) -> Path | None:
        """Point `reports/latest` at this run if its results.json says it is complete (call it last, once the
        report is rendered, so that `latest` never shows a run without its page). Returns the link or None."""
        if not load_results(self.run_dir)["complete"]:
            return None
        return point_latest(self.report_dir, self.run_id)


def point_latest(report_dir: Path, run_id: str) -> Path:
    """Atomically point `report_dir/latest` at `run_id` (a relative symlink, replaced via a temporary one).

    Where symlinks are unavailable (some Windows set-ups, some mounted file systems) writes the run id to
    `report_dir/LATEST` instead. Returns the path that now names the latest run.
    """
    report_dir = Path(report_dir)
    link = report_dir / LATEST_LINK
    if link.exists() and not link.is_symlink():
        raise ResultsError(f"{link} exists and is not a symlink: remove it so it can point at the newest run")
    tmp = report_dir / f".{LATEST_LINK}-{secrets.token_hex(4)}"
    try:
        os.symlink(run_id, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        return atomic_write_text(report_dir / LATEST_FILE, run_id + "\n")
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return link


def resolve_run_dir(path: str | Path) -> Path:
    """The run directory named by `path`: a run dir, its results.json, or `reports/latest` (link or LATEST)."""
    path = Path(path)
    if path.name == RESULTS_FILE and path.is_file():
        return path.parent
    if path.name == LATEST_LINK and not path.exists() and (path.parent / LATEST_FILE).is_file():
        run_id = (path.parent / LATEST_FILE).read_text(encoding="utf-8").strip()
        return path.parent / safe_name(run_id, "run id in LATEST")
    return path


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{what} file {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{what} file {path} is not readable JSON ({exc})") from None


def load_results(run_dir: str | Path) -> dict:
    """Read and check `results.json` of a run directory (or the file itself, or `reports/latest`)."""
    run_dir = resolve_run_dir(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(
            f"{path} does not exist: the run was interrupted before it finished, or {run_dir} is not a run "
            f"directory (reports/<run-id>/)"
        )
    results = _read_json(path, "results")
    if not isinstance(results, dict) or "schema_version" not in results:
        raise ResultsError(f"{path} is not a calib-checks results file (no schema_version)")
    if results["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(
            f"{path} has schema_version {results['schema_version']!r}; this calib-checks reads "
            f"{SCHEMA_VERSION}: re-run with the calib-checks version that wrote it"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in results]
    if missing:
        raise ResultsError(f"{path} lacks {missing}: the file is truncated or was edited by hand")
    if results["verdict"] not in RUN_VERDICTS:
        raise ResultsError(f"{path} has verdict {results['verdict']!r}, not one of {RUN_VERDICTS}")
    for case in results["cases"]:
        if not isinstance(case, dict) or case.get("verdict") not in VERDICTS:
            raise ResultsError(f"{path} holds a case without a valid verdict: {str(case)[:120]}")
    return results


def load_records(run_dir: str | Path, model: str, task: str) -> list[dict] | None:
    """The ItemRecord dicts of `model` on `task` in a run directory, or None where that file is absent."""
    path = Path(run_dir) / "records" / safe_name(model, "model label") / f"{safe_name(task, 'task name')}.jsonl"
    if not path.is_file():
        return None
    return read_jsonl(path, ResultsError, "records")


def load_items(run_dir: str | Path, task: str) -> dict[str, dict] | None:
    """The items of `task` by id (`id`, `gold`, and where known `options`, `context`, `subject`), or None where
    absent (items known only from score files carry id and gold)."""
    path = Path(run_dir) / "items" / f"{safe_name(task, 'task name')}.jsonl"
    if not path.is_file():
        return None
    return {item["id"]: item for item in read_jsonl(path, ResultsError, "items")}



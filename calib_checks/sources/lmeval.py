"""lm-evaluation-harness output as a score source: the ``lm-eval:PATH`` side of a gate pair (docs/LMEVAL.md).

Teams that score big checkpoints with lm-eval (vLLM, SGLang, HF + accelerate) gate them here without
scoring again: a pair side ``lm-eval:PATH`` reads the ``samples_<task>_<date>.jsonl`` files that
``lm_eval --log_samples --output_path OUT`` writes (reference facts, section 8), and the ``results_<date>.json``
beside them.

- Each sample's ``doc`` goes through calib-checks' own row adapter for the task (`tasks.TaskSpec.convert`), so
  ids, gold and prompts are calib-checks'. A ``doc`` that already is a calib-checks item (``id``, ``gold``,
  ``options``, ``context``, ``choice_prompt``, ``letters``: the items file bench/run_bench.py writes for its
  generated task YAMLs) is taken as that item.
- Each sample's requests (``arguments``: context and continuation per option) must be calib-checks' prompt for
  the item, option by option: a mismatch raises `LmEvalError` showing both, so numbers computed from another
  prompt never reach a verdict. A sample is lettered when its continuations are ``" A"``, ``" B"``, ... (one per
  option): its log-likelihoods are the ``choice`` extractor; any other sample is the continuation formulation
  and gives ``continuation-sum``. lm-eval logs only the sum per option, so ``continuation-min`` and
  ``continuation-mean`` are absent from the records (the gate makes such a case an error, never a pass).
- lm-eval task names map to calib-checks tasks by `calib_task_of` (built-in table below), or by the spec's
  ``?tasks=NAME=TASK+NAME=TASK`` suffix for a team's own task names.
- The identity is the lm-eval version, model and model_args from the results file, and the sha256 of every
  samples file used, keyed by lm-eval task name (two runs of the same model that logged the same samples are
  the same model; the gate refuses to compare them unless asked).
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calib_checks.errors import CalibChecksError
from calib_checks.fileio import read_jsonl
from calib_checks.tasks import MMLU_SUBJECTS, TASKS, DataError, Item, Skip, TaskSpec

from calib_checks.sources import Source, SourceContext, SourceError, safe_label

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.records import TaskScores

PREFIX = "lm-eval:"
TASKS_OPTION = "?tasks="
CONTINUATION, CHOICE = "continuation-sum", "choice"

_SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl$")
_ITEM_KEYS = frozenset({"id", "gold", "options", "context", "choice_prompt", "letters"})
# lm-eval's own tasks whose name is the calib-checks task's (their prompts are the ones tasks.py reproduces).
_SAME_NAME = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "medmcqa")
_BENCH_NAME = re.compile(r"^bench_(?P<task>.+)_(?:cont|choice)$")  # bench/run_bench.py's generated task YAMLs
_MMLU_NAME = re.compile(r"^mmlu_(?P<subject>.+?)(?:_continuation)?$")  # lm-eval's mmlu / mmlu_continuation


class LmEvalError(CalibChecksError):
    """lm-eval output that cannot be gated as written (one line: which file, doc or task, and the fix)."""


def calib_task_of(lmeval_task: str, custom: Mapping[str, str] | None = None,
                  tasks: Mapping[str, TaskSpec] = TASKS) -> str | None:
    """The calib-checks task an lm-eval task's samples belong to, or None when it maps to none.

    `custom` (the spec's ``?tasks=`` mapping) wins. Built in: ``arc_easy``, ``arc_challenge``, ``hellaswag``,
    ``piqa``, ``medmcqa`` map to themselves; ``bench_<task>_cont`` / ``bench_<task>_choice`` (the bench's
    generated tasks) to ``<task>``; ``mmlu_<subject>`` (lm-eval's lettered MMLU) and
    ``mmlu_<subject>_continuation`` to ``mmlu`` (the pooled groups take them through `feeds`).
    """
    if custom and lmeval_task in custom:
        return custom[lmeval_task]
    if lmeval_task in _SAME_NAME:
        return lmeval_task
    bench = _BENCH_NAME.match(lmeval_task)
    if bench and bench["task"] in tasks:
        return bench["task"]
    mmlu = _MMLU_NAME.match(lmeval_task)
    if mmlu and mmlu["subject"] in MMLU_SUBJECTS:
        return "mmlu"
    return None


def mmlu_subject(lmeval_task: str) -> str | None:
    """The MMLU subject of one of lm-eval's per-subject MMLU task names, else None."""
    mmlu = _MMLU_NAME.match(lmeval_task)
    return mmlu["subject"] if mmlu and mmlu["subject"] in MMLU_SUBJECTS else None


def feeds(lmeval_task: str, task: str, custom: Mapping[str, str] | None = None,
          tasks: Mapping[str, TaskSpec] = TASKS) -> bool:
    """Whether an lm-eval task's samples are items of calib-checks task `task`.

    An MMLU group (``mmlu_stem``, ...) is fed by the per-subject tasks of its subjects; anything else by the
    names `calib_task_of` maps to it.
    """
    if custom and lmeval_task in custom:
        return custom[lmeval_task] == task
    subject = mmlu_subject(lmeval_task)
    spec = tasks.get(task)
    if subject is not None and spec is not None and spec.per_subject and calib_task_of(lmeval_task) == "mmlu":
        return subject in spec.subjects
    return calib_task_of(lmeval_task, custom, tasks) == task


# ------------------------------------------------------------------------------------------------ the spec


def parse_spec(text: str, tasks: Mapping[str, TaskSpec] = TASKS) -> tuple[str, dict[str, str]] | None:
    """(PATH text, custom task mapping) of ``lm-eval:PATH[?tasks=NAME=TASK+NAME=TASK]``; None when `text` is not
    an lm-eval spec. The mapping is checked against the registered tasks (`LmEvalError` with a close name)."""
    if not text.startswith(PREFIX):
        return None
    path, _, mapping = text[len(PREFIX):].partition(TASKS_OPTION)
    if not path:
        raise LmEvalError(f"{text!r}: no path; pass lm-eval:OUT with OUT the --output_path of a --log_samples run")
    custom: dict[str, str] = {}
    for entry in filter(None, mapping.split("+")):
        name, sep, task = entry.partition("=")
        if not sep or not name or not task:
            raise LmEvalError(f"{text!r}: {entry!r} is not NAME=TASK (e.g. lm-eval:OUT?tasks=my_arc=arc_easy)")
        if task not in tasks:
            close = difflib.get_close_matches(task, list(tasks), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LmEvalError(f"{text!r}: unknown task {task!r}{hint}; known: {', '.join(tasks)}")
        custom[name] = task
    return path, custom


@dataclass(frozen=True)
class SamplesFile:
    """One ``samples_<task>_<date>.jsonl`` and the ``results_<date>.json`` of its run."""

    path: Path
    lmeval_task: str
    date: str
    results_path: Path


@dataclass
class LmEvalRun:
    """What an ``lm-eval:PATH`` side points at: its samples files (one per lm-eval task) and their results.

    `open_run` builds it; `task_scores` reads one calib-checks task from it; `identity` is what the side is.
    """

    spec: str
    where: str  # the PATH as given, resolved
    folder: Path  # PATH's folder, the part of its path before any wildcard: what the side is named after
    custom: dict[str, str]
    files: dict[str, SamplesFile]  # lm-eval task name -> its file
    tasks: Mapping[str, TaskSpec] = field(default_factory=lambda: TASKS)  # the run's task registry
    results: dict[Path, dict[str, Any]] = field(default_factory=dict)  # results file -> parsed
    # calib-checks task -> task_items' answer: the gate asks for it twice (items, then scores) per task.
    parsed: dict[str, tuple[list[Item], dict[str, dict[str, tuple[float, ...]]]]] = field(default_factory=dict)

    def config(self, lmeval_task: str) -> Mapping[str, Any]:
        """lm-eval's task config (``configs[task]`` of the results file), {} when the file has none."""
        results = self.results[self.files[lmeval_task].results_path]
        return (results.get("configs") or {}).get(lmeval_task) or {}

    def sources(self, task: str) -> list[SamplesFile]:
        """The samples files holding items of calib-checks task `task`, by lm-eval task name."""
        return [f for name, f in sorted(self.files.items()) if feeds(name, task, self.custom, self.tasks)]

    def calib_tasks(self) -> list[str]:
        """The calib-checks tasks this run has samples of (for messages)."""
        found = {calib_task_of(name, self.custom, self.tasks) for name in self.files}
        return sorted(t for t in found if t is not None)


def open_run(spec: str, tasks: Mapping[str, TaskSpec] = TASKS) -> LmEvalRun:
    """The run(s) an ``lm-eval:PATH`` spec names: PATH is an ``--output_path`` folder (searched below), one
    samples file, or a glob pattern of samples files. Every samples file needs its run's ``results_<date>.json``
    beside it, and each lm-eval task may come from one run only. Raises `LmEvalError`."""
    parsed = parse_spec(spec, tasks)
    if parsed is None:
        raise LmEvalError(f"{spec!r} is not an lm-eval:PATH spec")
    text, custom = parsed
    base = Path(text).expanduser()
    if base.is_dir():
        paths = sorted(base.rglob("samples_*.jsonl"))
    elif base.is_file():
        paths = [base]
    else:
        paths = sorted(Path(p) for p in glob.glob(str(base)))
        if not paths:
            raise LmEvalError(f"{spec}: {text!r} is no folder, file or pattern that matches anything; pass the "
                              "--output_path of an `lm_eval ... --log_samples` run")
    files: dict[str, SamplesFile] = {}
    for path in paths:
        match = _SAMPLES_NAME.match(path.name)
        if match is None:
            raise LmEvalError(f"{spec}: {path} is not an lm-eval samples file (samples_<task>_<date>.jsonl)")
        results_path = path.parent / f"results_{match['date']}.json"
        if not results_path.is_file():
            raise LmEvalError(f"{spec}: {path} has no {results_path.name} beside it (lm-eval writes both; the "
                              "lm-eval version and model_args of the identity come from it)")
        task = match["task"]
        if task in files:
            raise LmEvalError(f"{spec}: two runs hold lm-eval task {task!r} ({files[task].path.name} and "
                              f"{path.name} in {path.parent}); pass one run's files, e.g. "
                              f"lm-eval:'{path.parent}/samples_*_{match['date']}.jsonl'")
        files[task] = SamplesFile(path.resolve(), task, match["date"], results_path.resolve())
    if not files:
        raise LmEvalError(f"{spec}: no samples_*.jsonl under {text!r}; run lm_eval with --log_samples")
    folder = base if base.is_dir() else next(p for p in base.parents if not glob.has_magic(str(p)))
    run = LmEvalRun(spec, str(base.resolve()) if base.exists() else text, folder.resolve(), custom, files, tasks)
    for results_path in sorted({f.results_path for f in files.values()}):
        try:
            run.results[results_path] = json.loads(results_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LmEvalError(f"{spec}: {results_path} is not readable JSON ({exc})") from None
    models = {_model_of(r) for r in run.results.values()}
    if len(models) > 1:
        raise LmEvalError(f"{spec}: the samples come from runs of different models ({'; '.join(sorted(models))}); "
                          "one side is one model")
    unmapped = [name for name in files if calib_task_of(name, custom, tasks) is None]
    if len(unmapped) == len(files):
        raise LmEvalError(f"{spec}: none of its lm-eval tasks ({', '.join(sorted(files))}) maps to a calib-checks "
                          f"task; name them with lm-eval:PATH?tasks={unmapped[0]}=TASK (docs/LMEVAL.md)")
    return run


def _model_of(results: Mapping[str, Any]) -> str:
    config = results.get("config") or {}
    return f"{config.get('model')} {config.get('model_args')}"


def identity(run: LmEvalRun) -> dict[str, Any]:
    """What the side is: lm-eval version, model and model_args (from the results files), and the sha256 of
    each samples file by lm-eval task name (the content: a copy elsewhere is the same model)."""
    results = next(iter(run.results.values()))
    config = results.get("config") or {}
    return {
        "source": "lm-eval",
        "name": run.where,
        "lm_eval_version": results.get("lm_eval_version"),
        "model": config.get("model"),
        "model_args": config.get("model_args"),
        "samples_sha256": {name: _sha256(f.path) for name, f in sorted(run.files.items())},
    }


def describe(ident: Mapping[str, Any]) -> str:
    """The short name of an lm-eval side for messages and the report."""
    digest = hashlib.sha256(json.dumps(ident.get("samples_sha256"), sort_keys=True).encode()).hexdigest()
    args = ident.get("model_args")
    # lm-eval 0.4.13 logs model_args parsed (a dict); older versions log the command line's string.
    shown = ",".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, Mapping) else args
    return (f"lm-eval {ident.get('lm_eval_version')} run {ident.get('name')} ({ident.get('model')} {shown}; "
            f"samples {digest[:12]})")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ samples -> items


@dataclass(frozen=True)
class _Scored:
    """One sample made into calib-checks' item and the log-likelihood per option of one formulation."""

    item: Item
    formulation: str  # CONTINUATION or CHOICE
    scores: tuple[float, ...]
    where: str  # "samples_x.jsonl line n (doc_id d)", for messages


def _eval_split(config: Mapping[str, Any], spec: TaskSpec) -> str:
    """The split lm-eval evaluated (its test split, else its validation split), which the default ids name."""
    return str(config.get("test_split") or config.get("validation_split") or spec.split)


def _item(doc: Any, doc_id: int, spec: TaskSpec, split: str, subject: str | None, where: str) -> Item:
    """A sample's doc -> calib-checks' item: its row adapter, with the ids `data.load_task` gives that row.

    The id rules are docs/TASKS.md's ("Item ids"), written out here for one row: `data._to_items` applies them
    while it walks a whole split, and lm-eval's doc_id is the row's index in the split it evaluated.
    """
    if not isinstance(doc, Mapping):
        raise LmEvalError(f"{where}: 'doc' is {type(doc).__name__}, not the data set row")
    if _ITEM_KEYS <= doc.keys():  # already a calib-checks item (the bench's items files)
        return Item(id=str(doc["id"]), gold=int(doc["gold"]), options=tuple(doc["options"]),
                    context=doc["context"], choice_prompt=doc["choice_prompt"], letters=tuple(doc["letters"]),
                    subject=doc.get("subject"), target_delimiter=spec.target_delimiter)
    own = doc.get(spec.id_field) if spec.id_field is not None else None
    if subject is None and spec.subject_field is not None and isinstance(doc.get(spec.subject_field), str):
        subject = doc[spec.subject_field]
    if own not in (None, ""):
        item_id = str(own)
    elif spec.per_subject and subject is not None:
        item_id = f"{subject}/{split}-{doc_id}"
    elif spec.data_file is not None:
        item_id = f"row-{doc_id}"
    else:
        item_id = f"{split}-{doc_id}"
    try:
        converted = spec.convert(doc, item_id, subject if spec.per_subject else None, doc_id)
    except DataError as exc:
        raise LmEvalError(f"{where}: {exc}") from None
    if isinstance(converted, Skip):
        raise LmEvalError(f"{where}: calib-checks skips this row ({converted.reason}), lm-eval scored it")
    return converted


def _requests(sample: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    """(context, continuation) per option from the samples file's ``arguments``
    (``{"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}``)."""
    args = sample.get("arguments")
    if not isinstance(args, Mapping) or not args:
        raise LmEvalError(f"{where}: no 'arguments' (lm-eval's requests); is this a --log_samples file?")
    out = []
    for k in range(len(args)):
        request = args.get(f"gen_args_{k}")
        if not isinstance(request, Mapping) or not {"arg_0", "arg_1"} <= request.keys():
            raise LmEvalError(f"{where}: arguments lack gen_args_{k} with arg_0 and arg_1: not a loglikelihood "
                              "(multiple_choice) task")
        out.append((str(request["arg_0"]), str(request["arg_1"])))
    return out


def _loglikelihoods(sample: Mapping[str, Any], n: int, where: str) -> tuple[float, ...]:
    """The log-likelihood per option from ``resps`` (per option ``[[loglikelihood, is_greedy]]``, as strings)."""
    resps = sample.get("resps")
    try:
        if not isinstance(resps, list) or len(resps) != n:
            raise ValueError(f"{n} requests but {len(resps) if isinstance(resps, list) else 'no'} resps")
        return tuple(float(resp[0][0]) for resp in resps)
    except (ValueError, TypeError, IndexError) as exc:
        raise LmEvalError(f"{where}: 'resps' is not one [loglikelihood, is_greedy] per option ({exc})") from None


def _shown(text: str, at: int, width: int = 60) -> str:
    """`text` around position `at` (the first difference), as a Python literal with ellipses where cut."""
    start = max(0, at - width // 3)
    cut = text[start:start + width]
    return ("..." if start else "") + repr(cut) + ("..." if start + width < len(text) else "")


def _difference(expected: str, got: str) -> str:
    """Both texts around their first differing character, for a one-line message."""
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return f"at character {at}: calib-checks {_shown(expected, at)} vs lm-eval {_shown(got, at)}"


def _check_prompt(item: Item, requests: list[tuple[str, str]], lmeval_task: str, where: str) -> str:
    """The sample's formulation after checking its requests are calib-checks' prompt for `item`, option by
    option; `LmEvalError` showing both texts otherwise."""
    letters = [" " + letter for letter in item.letters]
    lettered = [cont for _, cont in requests] == letters
    formulation, prompt, continuations = (
        (CHOICE, item.choice_prompt, letters) if lettered
        else (CONTINUATION, item.context, [item.target_delimiter + option for option in item.options]))
    name = "lettered prompt" if lettered else "continuation prompt"
    if len(requests) != len(continuations):
        raise LmEvalError(f"{where}: lm-eval task {lmeval_task} scored {len(requests)} options, calib-checks' item "
                          f"{item.id!r} has {len(continuations)}: not the same question")
    for k, ((context, cont), want) in enumerate(zip(requests, continuations)):
        for part, expected, got in (("context", prompt, context), ("continuation", want, cont)):
            if expected != got:
                raise LmEvalError(
                    f"{where}: lm-eval task {lmeval_task} did not score calib-checks' {name} for item {item.id!r} "
                    f"(option {k} {part} {_difference(expected, got)}); gate lm-eval output only of tasks whose "
                    "prompts are calib-checks' (docs/LMEVAL.md)")
    return formulation


def _read_samples(run: LmEvalRun, source: SamplesFile, spec: TaskSpec) -> list[_Scored]:
    rows = read_jsonl(source.path, LmEvalError, f"lm-eval samples of {source.lmeval_task}")
    # A generative task logs one line per doc and filter; multiple_choice has the one filter "none".
    filters = {row.get("filter") for row in rows if isinstance(row, Mapping)}
    if len(filters) > 1:
        rows = [row for row in rows if row.get("filter") == "none"]
    split = _eval_split(run.config(source.lmeval_task), spec)
    subject = mmlu_subject(source.lmeval_task) if spec.per_subject else None
    out = []
    for number, sample in enumerate(rows, start=1):
        where = f"{source.path.name} line {number}"
        if not isinstance(sample, Mapping) or not isinstance(sample.get("doc_id"), int):
            raise LmEvalError(f"{where}: expected an object with doc_id, doc, arguments and resps per line")
        where += f" (doc_id {sample['doc_id']})"
        item = _item(sample.get("doc"), sample["doc_id"], spec, split, subject, where)
        requests = _requests(sample, where)
        formulation = _check_prompt(item, requests, source.lmeval_task, where)
        out.append(_Scored(item, formulation, _loglikelihoods(sample, len(requests), where), where))
    return out


def task_items(run: LmEvalRun, task: str) -> tuple[list[Item], dict[str, dict[str, tuple[float, ...]]]]:
    """The items of calib-checks task `task` that the run scored, in lm-eval's order (lm-eval task name, then
    doc_id), and per item id the log-likelihoods by extractor ("continuation-sum" and/or "choice").

    Raises `LmEvalError` when the run has no samples of the task, when an MMLU group lacks a subject, when an
    item is scored twice in one formulation, when the two formulations cover different items, or on any bad
    sample (see `_check_prompt`).
    """
    if task not in run.parsed:
        run.parsed[task] = _task_items(run, task)
    return run.parsed[task]


def _task_items(run: LmEvalRun, task: str) -> tuple[list[Item], dict[str, dict[str, tuple[float, ...]]]]:
    spec = run.tasks[task]
    sources = run.sources(task)
    if not sources:
        raise LmEvalError(f"{run.spec} has no samples of task {task} (it has: "
                          f"{', '.join(run.calib_tasks()) or 'none'}; lm-eval tasks {', '.join(sorted(run.files))}); "
                          f"run lm-eval on it, map a custom name with ?tasks=NAME={task}, or drop it from the tasks")
    items: dict[str, Item] = {}
    scores: dict[str, dict[str, tuple[float, ...]]] = {}
    seen: dict[tuple[str, str], str] = {}  # (item id, formulation) -> where first scored
    per_formulation: dict[str, set[str]] = {}
    subjects: dict[str, set[str]] = {}  # formulation -> MMLU subjects seen (per-subject files)
    for source in sources:
        for scored in _read_samples(run, source, spec):
            item = scored.item
            key = (item.id, scored.formulation)
            if key in seen:
                raise LmEvalError(f"{scored.where}: item {item.id!r} of {task} is scored twice in the "
                                  f"{scored.formulation} formulation (first at {seen[key]}); pass one run")
            seen[key] = scored.where
            if item.id in items and items[item.id] != item:
                raise LmEvalError(f"{scored.where}: item {item.id!r} differs between lm-eval tasks (another doc "
                                  "under the same id): the two formulations must be run on the same data")
            items.setdefault(item.id, item)
            scores.setdefault(item.id, {})[scored.formulation] = scored.scores
            per_formulation.setdefault(scored.formulation, set()).add(item.id)
            subject = mmlu_subject(source.lmeval_task)
            if subject is not None and source.lmeval_task not in run.custom:
                subjects.setdefault(scored.formulation, set()).add(subject)
    if spec.per_subject:
        for formulation, found in subjects.items():
            missing = sorted(set(spec.subjects) - found)
            if missing:
                raise LmEvalError(f"{run.spec}: {task} pools {len(spec.subjects)} MMLU subjects but the run's "
                                  f"{formulation} samples lack {len(missing)} (first: mmlu_{missing[0]}); run "
                                  f"lm-eval on the whole group (e.g. --tasks {task}) or gate a task it covers")
    covered = list(per_formulation.values())
    if len(covered) == 2 and covered[0] != covered[1]:
        only = sorted(covered[0] ^ covered[1])
        raise LmEvalError(f"{run.spec}: on {task} the continuation and lettered samples cover different items "
                          f"({len(per_formulation[CONTINUATION])} vs {len(per_formulation[CHOICE])}; first "
                          f"unmatched {only[0]!r}); run both formulations with the same --limit")
    return list(items.values()), scores


def task_data(run: LmEvalRun, task: str) -> TaskData:
    """The run's items of `task` as a `data.TaskData`, every one of them (the gate draws its sample).

    What a checkpoint the gate scores itself is scored on when it is compared with this run: the very items
    (and so the very prompts) lm-eval scored.
    """
    from calib_checks.data import TaskData, fingerprint_items

    items, _ = task_items(run, task)
    names = ", ".join(f.lmeval_task for f in run.sources(task))
    return TaskData(task=task, items=tuple(items), source=f"{PREFIX}{run.where} ({names})",
                    fingerprint=fingerprint_items(items), n_available=len(items), limit=None, seed=0)


def task_scores(run: LmEvalRun, task: str, label: str, ids: Sequence[str] | None = None) -> TaskScores:
    """The side's `records.TaskScores` on `task`: one `ItemRecord` per item of `ids` that the run scored (every
    item when `ids` is None), with the extractors lm-eval's samples give (the gate errors the cases of the
    others)."""
    from calib_checks.data import fingerprint_items
    from calib_checks.records import ItemRecord, ScoreStats, TaskScores

    items, scores = task_items(run, task)
    by_id = {item.id: item for item in items}
    chosen = [by_id[i] for i in (ids if ids is not None else by_id) if i in by_id]
    present = [e for e in (CONTINUATION, CHOICE) if any(e in s for s in scores.values())]
    records = [ItemRecord(id=item.id, gold=item.gold, scores={e: list(scores[item.id][e]) for e in present},
                          n_options=len(item.options)) for item in chosen]
    return TaskScores(
        model_label=label, model_identity=identity(run), task=task, data_fingerprint=fingerprint_items(chosen),
        records=records,
        stats=ScoreStats(source=f"lm-eval run {run.where}", files=tuple(str(f.path) for f in run.sources(task)),
                         n_available=len(items)),
    )


class LmEvalSource(Source):
    """``lm-eval:PATH[?tasks=NAME=TASK+...]``: the samples of an ``lm_eval --log_samples`` run. It holds its items'
    texts (`items`): the checkpoints compared with it are scored on them."""

    prefix = PREFIX

    def __init__(self, text: str, context: SourceContext) -> None:
        super().__init__(text, context)
        try:
            self.run = open_run(text, context.tasks or TASKS)
        except LmEvalError as exc:
            raise SourceError(str(exc)) from None

    @property
    def label(self) -> str:
        return safe_label(self.run.folder.name)

    @property
    def label_context(self) -> tuple[str, ...]:
        return tuple(safe_label(p) for p in reversed(self.run.folder.parts[1:-1]))

    def identity(self) -> dict[str, Any]:
        return identity(self.run)

    def describe(self, identity: Mapping[str, Any]) -> str:
        return describe(identity)

    def items(self, task: str) -> TaskData | None:
        return task_data(self.run, task)

    def scores(self, task: str, data: TaskData | None, ids: Sequence[str] | None = None) -> TaskScores:
        return task_scores(self.run, task, self.label, ids if ids is not None or data is None else data.item_ids)

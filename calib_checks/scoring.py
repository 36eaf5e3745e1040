"""The scoring engine: per-option scores of multiple-choice items, one forward pass per item, four extractors.

Extractors (`records.EXTRACTORS`, computed by `records.extract`), all read from per-token log-probabilities
``log p(t_j | t_<j) = z[t_j] - logsumexp(z)``, where ``z = softcap(W h) / T`` is computed in float32:
``W h`` is the model's output head applied to the final hidden state, ``softcap(x) = c * tanh(x / c)`` where the
config sets ``final_logit_softcapping = c`` (Gemma 2/3) and the identity otherwise, and ``T`` is
``LoadedModel.temperature`` (1.0 leaves the model untouched).

Several temperatures of one model (`score_temperatures`): the temperature acts only in the head, so one
forward pass serves them all: per chunk of scored positions the float32 logits ``softcap(W h)`` are computed
once, then divided by each T and given one ``logsumexp`` each. The records of each temperature equal a
separate `score_items` run at that temperature within float32 rounding (the head's chunks are half as long,
so that the extra divided copy of a chunk fits the same memory).

- ``continuation-sum``: option k is the continuation ``item.target_delimiter + options[k]`` (lm-eval's " " unless
  a task file sets another) of ``item.context`` and scores
  ``sum_j log p(c_j)`` over its n_k tokens: lm-evaluation-harness's loglikelihood.
- ``continuation-min``: ``min_j log p(c_j)`` from the same forward pass.
- ``continuation-mean``: ``sum_j log p(c_j) / n_k`` from the same forward pass (HELM's length-normalised score).
- ``choice``: ``log p(letter_k)`` at the answer position of ``item.choice_prompt``, the letter read as the
  continuation ``" " + letters[k]``, which must be exactly one token after the prompt (``"ĠA"`` in byte-level
  BPE, ``"▁A"`` in SentencePiece); the ids read are recorded per item and in the stats.

Probabilities are the softmax of the scores across options (`records.probabilities`).

Letter mass: the choice extractor renormalises over the letters, so a model that would rather answer "The ..."
after "Answer:" still gets confident letter probabilities. Each record keeps ``letter_mass = sum_k
p(letter_k)`` under the full-vocabulary softmax at the answer position (temperature applied), i.e.
``exp(logsumexp_k choice_k)`` (`records.letter_mass`; summarised per model and task by
`records.letter_mass_summary`), and
`score_items` warns (`LowLetterMassWarning`) when the mean is below `LETTER_MASS_FLOOR`.

Numerics: ``logsumexp`` in float32 is within ~1e-6 of the float64 value, while torch's float32 ``log_softmax``
on CPU (what lm-eval calls) is biased by about -4e-6 per token (measured over a 49152-token vocabulary), which
adds up to 5e-4 on a 58-token HellaSwag ending; so compare with lm-eval at ~1e-5 per token, not bit for bit.

Tokenisation follows lm-eval v0.4 (reference facts, section 3): trailing whitespace of the context moves to the
front of the continuation; ``context + continuation`` is encoded once and split at ``len(encode(context))``.
Departure: lm-eval never checks that ``encode(context)`` is a prefix of the joint encoding; here, where it is
not, the pair is encoded separately (``prefix_fallback``), so that every option of an item shares one context.
When ``LoadedModel.add_bos`` is set, the BOS id is prepended to the context (lm-eval does so for Gemma). The
scored input of an option is ``(context + continuation)[:-1]`` left-truncated to ``max_length`` tokens, as in
lm-eval; options that need different truncations get their own copy of the truncated context.

Efficiency (departure from lm-eval, same numbers): each item is one token tree, forwarded once. Its trunk is
the leading token ids its context and lettered prompt have in common (BOS, "Question: ..."; only where they
agree id for id, and only when neither is truncated); then come the rest of the context followed by every
option's tokens but the last (the last token is only ever a target), and the rest of the lettered prompt. A 4D
mask lets each token attend causally to the trunk, its own branch's body and its own option, never to another
option or branch; position ids continue from the trunk into each branch and restart every option after its
body. Several items' trees are packed into one row up to a row budget (best-fit decreasing; the mask is
block-diagonal across them and their position ids restart at 0), so rows come out nearly full and batches of
them need little padding (1-3 % at the CPU defaults). Only the scored positions go through the output
head, in chunks, so no ``[batch, seq, vocab]`` logits tensor exists; padding is never attended. The head's
product and the log-softmax run in float32 whatever the model's dtype (a bf16 head would round the logits).

Attention: the mask rule is one function (`_visibility`). With sdpa / eager it is materialised as a dense
``[batch, 1, seq, seq]`` mask; with ``flex_attention`` (`models.attention_order`: the default on CUDA where a
model class has it) it becomes a `BlockMask`, so the kernel skips the blocks no query of a packed row sees and
no dense mask is built. Where the flex kernel fails (it compiles on first use), the run warns, records
``attention_fallback`` and goes on through sdpa. Flex runs on CUDA only (`models.attention_order` says why). A
kernel or mask that is wrong without raising is caught by the engine's self-check (calib_checks/selfcheck.py),
which compares a few items per model load with a plain reference before `engine.Scorer` scores with this path.
The KV-cache alternative (forward the context, then the options against its cache) needs a second forward per
batch and a cache expanded per option; the packed row gets the same sharing in one call and batches freely.
"""

from __future__ import annotations

import bisect
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from calib_checks.errors import CalibChecksError
from calib_checks.records import (
    LETTER_MASS_FLOOR,
    EngineStats,
    ItemRecord,
    RecordError,
    extract,
    letter_mass,
    letter_mass_summary,
)

if TYPE_CHECKING:
    import torch

    from calib_checks.models import LoadedModel
    from calib_checks.tasks import Item

# Bump when a change alters any number written into a record: the result cache's key includes it.
SCORING_VERSION = "5"  # 2: records carry letter_mass; 3: packed rows, shared prompt prefixes, timing stats;
# 4: the output head in float32 for bf16 / fp16 models; 5: the stats carry the self-check (selfcheck.py): the numbers
# are the same, but a cached score from before cannot say which path made it, so it is scored again

# Rows * longest row per batch when batch_size="auto"; halved on out-of-memory. Tokens per packed row (a longer
# sequence gets a row of its own): the dense mask makes attention cost grow with the square of the row length,
# so rows stay short and a batch holds several. SmolLM2-135M's decoder on 2 CPU cores, best of 5 calls (ms per
# token): 1 x 256 tokens 0.91, 4 x 256 0.78, 16 x 64 0.74, 40 x 96 0.82, 1 x 1024 1.00, 8 x 512 0.89. Rows of
# 256 in batches of 1024 tokens pad 1-3 % (the rows' fills differ) on the bench's 60 items per task, against
# 0 % at one row a batch, which costs 15 % more per token. The GPU figures are a guess, not measured yet:
# scripts/gpu-check.sh prints the items/s and peak GPU memory per row and batch budget that will set them.
_AUTO_TOKEN_BUDGET = {"cuda": 1 << 16, "other": 1 << 10}
_ROW_TOKENS = {"cuda": 1 << 11, "other": 1 << 8}
# Float32 logits computed at once by the output head: positions per chunk = this // vocabulary size. 256 MiB:
# gemma-3-270m's head (262144 x 640) runs at 230 GFLOP/s on 128 positions and 268 on 512 (2 Xeon cores).
_HEAD_CHUNK_ELEMENTS = 1 << 26
# Attention implementations that apply a user-given mask as is (transformers' masking_utils returns a 4D mask or
# a BlockMask unchanged): sdpa and eager take the dense mask (additive for eager, which adds it to the scores),
# flex_attention a BlockMask of the same rule.
_MASKABLE_ATTENTION = ("flex_attention", "sdpa", "eager")
_PROBE_TOKENS = 16

class ScoringError(CalibChecksError):
    """A model or item that cannot be scored (tokenizer without letter tokens, NaN scores, out of memory)."""


class LowLetterMassWarning(UserWarning):
    """A model's mean letter mass on a task is below `LETTER_MASS_FLOOR`: read its choice numbers with care."""


def encode_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], move_whitespace: bool = True
) -> list[tuple[list[int], list[int], bool]]:
    """Token ids of (context, continuation) pairs the lm-eval way: ``[(context_ids, continuation_ids, fell_back)]``.

    Trailing whitespace of the context moves to the front of the continuation (unless `move_whitespace` is
    False: a chat template's text ends its generation prompt with a newline that belongs to it); the joint string is encoded
    once and split at ``len(encode(context))``. Where ``encode(context)`` is not a prefix of the joint encoding
    (a merge across the boundary), the continuation is encoded on its own and ``fell_back`` is True, so that
    ``context_ids == encode(context)`` always. No special tokens are added (BOS is the caller's business).
    """
    moved: list[tuple[str, str]] = []
    for context, continuation in pairs:
        stripped = context.rstrip() if move_whitespace else context
        moved.append((stripped, context[len(stripped) :] + continuation))
    texts = sorted({c for c, _ in moved} | {c + x for c, x in moved})
    ids = dict(zip(texts, _encode(tokenizer, texts)))
    out = []
    for context, continuation in moved:
        context_ids, joint = ids[context], ids[context + continuation]
        if joint[: len(context_ids)] == context_ids:
            out.append((context_ids, joint[len(context_ids) :], False))
        else:
            out.append((context_ids, _encode(tokenizer, [continuation])[0], True))
    return out


def score_items(
    model: LoadedModel,
    items: Sequence[Item],
    batch_size: int | Literal["auto"] = "auto",
    progress: bool | Callable[[int, int], None] = True,
    row_tokens: int | None = None,
) -> tuple[list[ItemRecord], EngineStats]:
    """Score every item with all `records.EXTRACTORS` at the model's temperature; return the records in item order and
    the stats (`score_temperatures` with the one temperature ``model.temperature``)."""
    return score_temperatures(model, items, (model.temperature,), batch_size, progress, row_tokens)[model.temperature]


def score_temperatures(
    model: LoadedModel,
    items: Sequence[Item],
    temperatures: Sequence[float],
    batch_size: int | Literal["auto"] = "auto",
    progress: bool | Callable[[int, int], None] = True,
    row_tokens: int | None = None,
) -> dict[float, tuple[list[ItemRecord], EngineStats]]:
    """Score every item with all `records.EXTRACTORS` at each of `temperatures` (``model.temperature`` is not used),
    in ONE forward pass through the decoder; return ``{T: (records in item order, stats)}``.

    Each item is a token tree (its context with the options and its lettered prompt with the letters, their
    common leading tokens once; a truncated item is one sequence per truncation instead). The sequences are
    packed into rows of up to ``row_tokens`` tokens (None: `_ROW_TOKENS` for the device; a longer sequence gets
    a row of its own) and the rows batched ``batch_size`` at a time ("auto": as many as fit
    `_AUTO_TOKEN_BUDGET` tokens).

    stats: ``tokens_forwarded`` (non-pad tokens run through the model by the scoring batches),
    ``tokens_padded`` (what went through the model, padding included: rows * longest row, summed over batches),
    ``token_lower_bound`` (what any exact method must run: per item the context once, each option's tokens but
    its last once, the lettered prompt once; for truncated items the least-truncated context),
    ``token_tree_lower_bound`` (the same where an untruncated item's context and lettered prompt forward their
    common leading tokens once, as here: what a token tree must run),
    ``probe_tokens`` (the one short forward that checks the output-head path against the model's own logits),
    ``truncated`` and ``prefix_fallbacks`` (item counts), ``letter_tokens`` (``{letter: id}``, a sorted list of
    ids where items disagree), ``seconds`` (all of it) and where they went: ``seconds_tokenise``
    (tokenising and planning), ``seconds_forward`` (the decoder, its inputs and masks), ``seconds_head`` (the
    output head, log-softmax and gathering); ``rows``, ``batches`` and ``sequences`` (how many of each were
    forwarded),
    ``batch_size`` (most rows in one batch), ``row_tokens`` (the final row budget) and ``token_budget`` (auto
    mode's final rows * longest row, else None); ``attention`` (the implementation the batches went through:
    ``flex_attention`` with a block mask, else ``sdpa`` / ``eager`` with a dense one) and
    ``attention_fallback`` (why flex attention was given up for sdpa mid-run, else None);
    ``attention_pairs`` (query-key pairs one layer's attention computed, summed over batches: rows * width^2
    for a dense mask, computed blocks * block area for a block mask) and ``head_positions`` (hidden states
    through the output head), which with the model's shapes give the run's FLOPs (bench/run_bench.py).
    A `LowLetterMassWarning` when the records' mean letter mass (`records.letter_mass_summary`) is below
    `records.LETTER_MASS_FLOOR`.
    ``progress``: True draws a tqdm bar on a terminal; a callable is called ``(items done, items)`` after every
    batch (the gate's live progress, calib_checks/progress.py); False is silent.
    Scores depend on the packing and batching only through floating-point summation order (float32: within
    1e-5 on the tiny test models); for fixed settings they are deterministic.
    With several temperatures every stats dict holds the same pass's numbers (tokens, seconds, ...: one pass,
    not one per temperature) except ``letter_mass``, and ``temperatures_in_pass`` lists the temperatures the
    pass served (one for `score_items`).
    """
    import torch

    started = time.perf_counter()
    if isinstance(batch_size, bool) or not (batch_size == "auto" or (isinstance(batch_size, int) and batch_size > 0)):
        raise ScoringError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    if row_tokens is not None and (isinstance(row_tokens, bool) or not isinstance(row_tokens, int) or row_tokens < 1):
        raise ScoringError(f"row_tokens must be a positive integer or None, got {row_tokens!r}")
    temperatures = tuple(temperatures)
    bad = [t for t in temperatures if isinstance(t, bool) or not (isinstance(t, (int, float)) and 0 < t < math.inf)]
    if not temperatures or bad or len(set(temperatures)) != len(temperatures):
        raise ScoringError(f"model {model.label}: temperatures must be distinct positive numbers, got "
                           f"{list(temperatures)}")
    plan = _Plan(model, items, len(temperatures))
    mask_kind = _mask_kind(model)
    clock = _Clock(model.input_device, tokenise=time.perf_counter() - started)

    with torch.inference_mode():
        probe_tokens = _check_output_head(model, plan.segments[0].first_sequence() if plan.segments else [])
        run = _run_batches(model, plan, batch_size, row_tokens, mask_kind, progress, clock, temperatures)

    labels = [_label_at(model, temperature) for temperature in temperatures]
    records = [plan.records(label, index) for index, label in enumerate(labels)]
    seconds = time.perf_counter() - started
    return {temperature: (records[index], _stats(records[index], labels[index], plan, run, probe_tokens, clock,
                                                 seconds))
            for index, temperature in enumerate(temperatures)}


def _label_at(model: LoadedModel, temperature: float) -> str:
    """The label of `model` at `temperature` (its spec's label at that temperature; its own at its own)."""
    if temperature == model.temperature:
        return model.label
    if model.spec is None:  # a model built in code, without a spec
        return f"{model.label}@T{temperature:g}"
    return replace(model.spec, temperature=temperature).label


def _stats(records: list[ItemRecord], label: str, plan: _Plan, run: _Run, probe_tokens: int, clock: _Clock,
           seconds: float) -> EngineStats:
    """`score_temperatures`' stats for one temperature's records; warns when their letter mass is low."""
    mass = letter_mass_summary(records)
    if mass is not None and mass["mean"] < LETTER_MASS_FLOOR:
        warnings.warn(
            f"model {label}: the letters get {mass['mean']:.3f} of the probability at the answer "
            f"position on average over {len(records)} items (least {mass['min']:.3g}; "
            f"{mass['below_floor']:.0%} of items below {LETTER_MASS_FLOOR}): the model mostly answers "
            f"something else than a letter, so its choice-extractor probabilities (renormalised over the letters) "
            f"say little about it",
            LowLetterMassWarning,
            stacklevel=4,
        )
    return EngineStats(
        tokens_forwarded=run.tokens_forwarded, tokens_padded=run.tokens_padded, token_lower_bound=plan.lower_bound,
        token_tree_lower_bound=plan.lower_bound - plan.shared_tokens, probe_tokens=probe_tokens,
        truncated=sum(r.truncated for r in records), prefix_fallbacks=sum(r.prefix_fallback for r in records),
        letter_tokens=plan.letter_tokens(), seconds=seconds, seconds_tokenise=clock.tokenise,
        seconds_forward=clock.forward, seconds_head=clock.head, rows=run.rows, batches=run.batches,
        sequences=len(plan.segments), batch_size=run.most_rows, row_tokens=run.row_tokens,
        token_budget=run.token_budget, attention=run.attention, attention_fallback=run.attention_fallback,
        attention_pairs=run.attention_pairs, head_positions=run.head_positions,
    )


@dataclass
class _Branch:
    """Options scored after ``body``: ``targets[j]`` are the continuation tokens of option ``options[j]``.

    ``kind`` is "continuation" or "choice" (the targets are then single letters)."""

    kind: str
    body: list[int]
    options: list[int]
    targets: list[list[int]]


@dataclass
class _Segment:
    """One sequence of an item as a token tree: a ``trunk`` from position 0, then each branch's body, then
    each of its options' tokens but the last. A token sees the trunk, its branch's body and its own option,
    causally; nothing of another branch or option. Without sharing there is one branch with an empty body."""

    item: int
    trunk: list[int]
    branches: list[_Branch]

    @property
    def length(self) -> int:
        """Tokens the sequence puts in a row."""
        return len(self.trunk) + sum(len(b.body) + sum(len(t) - 1 for t in b.targets) for b in self.branches)

    def first_sequence(self) -> list[int]:
        """The trunk and the first branch's body: a plain causal sequence from position 0."""
        return self.trunk + self.branches[0].body


@dataclass
class _Clock:
    """Seconds spent per phase; on CUDA the device is synchronised before each reading, so that a phase's
    kernels are counted in it and not in the next."""

    device: torch.device
    tokenise: float = 0.0
    forward: float = 0.0
    head: float = 0.0

    def now(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class _Plan:
    """Tokenised items, the rows to forward, and the per-token log-probabilities as they come back."""

    def __init__(self, model: LoadedModel, items: Sequence[Item], n_temperatures: int = 1) -> None:
        from calib_checks.models import render_prompt

        self.items = list(items)
        self.segments: list[_Segment] = []
        self.lower_bound = 0
        self.shared_tokens = 0  # trunk tokens that a context and its lettered prompt have in common
        label, max_len = model.label, model.max_length
        bos: list[int] = []
        # A chat template writes its own BOS into the text where the model wants one: never a second one.
        if model.add_bos and not model.chat:
            if model.tokenizer.bos_token_id is None:
                raise ScoringError(f"model {label} asks for a BOS token but its tokenizer has none; fix add_bos")
            bos = [int(model.tokenizer.bos_token_id)]
        pairs: list[tuple[str, str]] = []
        for item in self.items:
            _check_item(item, label)
            context, choice_prompt = render_prompt(model, item.context), render_prompt(model, item.choice_prompt)
            # Under a chat template the assistant's turn starts right after the generation prompt: its answer
            # is the bare option or letter, not a continuation of the user's text.
            option_delimiter, letter_delimiter = ("", "") if model.chat else (item.target_delimiter, " ")
            pairs += [(context, option_delimiter + option) for option in item.options]
            pairs += [(choice_prompt, letter_delimiter + letter) for letter in item.letters]
        encoded = iter(encode_pairs(model.tokenizer, pairs, move_whitespace=not model.chat))

        self.n_tokens: list[list[int]] = []
        self.letter_ids: list[list[int]] = []
        self.truncated: list[bool] = []
        self.fallback: list[bool] = []
        for i, item in enumerate(self.items):
            k = len(item.options)
            options = [next(encoded) for _ in range(k)]
            letters = [next(encoded) for _ in range(k)]
            self.fallback.append(any(fb for *_, fb in options + letters))
            for letter, (_, ids, _) in zip(item.letters, letters):
                if len(ids) != 1:
                    pieces = model.tokenizer.convert_ids_to_tokens(ids)
                    raise ScoringError(
                        f"model {label}: letter {letter!r} of item {item.id!r} (scored as {letter_delimiter + letter!r} after "
                        f"the lettered prompt) is {len(ids)} tokens {pieces}, not one, so the choice extractor "
                        f"cannot read it; score a model whose tokenizer has single-token letters "
                        f"(byte-level 'ĠA', SentencePiece '▁A')"
                    )
            self.letter_ids.append([ids[0] for _, ids, _ in letters])
            self.n_tokens.append([len(ids) for _, ids, _ in options])

            if not options[0][0] or not letters[0][0]:
                raise ScoringError(f"item {item.id!r} has an empty context or lettered prompt; fix the task's prompt")
            # encode_pairs gives every option the same context ids (encode(context)), so the rows can share it.
            context = bos + options[0][0]
            prompt = bos + letters[0][0]
            cuts: dict[int, list[int]] = {}
            for option, (_, ids, _) in enumerate(options):
                if not 1 <= len(ids) <= max_len:
                    raise ScoringError(
                        f"model {label}: option {option} of item {item.id!r} is {len(ids)} tokens, outside "
                        f"1..max_length={max_len}; fix the item or use a model with a longer context"
                    )
                cuts.setdefault(max(0, len(context) + len(ids) - 1 - max_len), []).append(option)
            prompt_cut = max(0, len(prompt) - max_len)
            letters_branch = _Branch("choice", [], list(range(k)), [[t] for t in self.letter_ids[i]])
            if list(cuts) == [0] and prompt_cut == 0:
                # The context and the lettered prompt mostly start alike (BOS, "Question: ..."): one trunk
                # forwards their common tokens once for both. Truncated ones start at different positions.
                shared = _common_prefix(context, prompt)
                continuation = _Branch("continuation", context[shared:], cuts[0], [options[o][1] for o in cuts[0]])
                letters_branch.body = prompt[shared:]
                self.segments.append(_Segment(i, context[:shared], [continuation, letters_branch]))
                self.shared_tokens += shared
            else:
                for cut, group in sorted(cuts.items()):
                    branch = _Branch("continuation", [], group, [options[o][1] for o in group])
                    self.segments.append(_Segment(i, context[cut:], [branch]))
                self.segments.append(_Segment(i, prompt[prompt_cut:], [letters_branch]))
            self.truncated.append(max(cuts) > 0 or prompt_cut > 0)
            self.lower_bound += len(context) - min(cuts) + sum(n - 1 for n in self.n_tokens[i])
            self.lower_bound += len(prompt) - prompt_cut

        # Per temperature (index into score_temperatures' list), per item, per option.
        self.token_logprobs: list[list[list[list[float] | None]]] = [
            [[None] * len(it.options) for it in self.items] for _ in range(n_temperatures)]
        self.choice_logprobs: list[list[list[float | None]]] = [
            [[None] * len(it.options) for it in self.items] for _ in range(n_temperatures)]

    def store(self, segment: _Segment, values: list[list[list[list[float]]]]) -> None:
        """Keep the per-token log-probabilities of `segment`: ``values[t][branch][j]`` for option j of the branch
        at the t-th temperature."""
        for t, per_branch in enumerate(values):
            for branch, per_option in zip(segment.branches, per_branch):
                for option, logprobs in zip(branch.options, per_option):
                    if branch.kind == "continuation":
                        self.token_logprobs[t][segment.item][option] = logprobs
                    else:
                        self.choice_logprobs[t][segment.item][option] = logprobs[0]

    def records(self, label: str, temperature_index: int = 0) -> list[ItemRecord]:
        """The records at the `temperature_index`-th temperature; `label` names the model in errors."""
        out = []
        for i, item in enumerate(self.items):
            scores = extract(self.token_logprobs[temperature_index][i], self.choice_logprobs[temperature_index][i])
            try:
                out.append(ItemRecord(
                    id=item.id, gold=item.gold, scores=scores, n_options=len(item.options), n_tokens=self.n_tokens[i],
                    letter_token_ids=self.letter_ids[i], truncated=self.truncated[i],
                    prefix_fallback=self.fallback[i], letter_mass=letter_mass(scores["choice"]),
                ))
            except RecordError as exc:  # a non-finite score: the model's logits hold NaN or inf
                raise ScoringError(f"model {label}: {exc}") from None
        return out

    def letter_tokens(self) -> dict[str, int | list[int]]:
        seen: dict[str, set[int]] = {}
        for item, ids in zip(self.items, self.letter_ids):
            for letter, token in zip(item.letters, ids):
                seen.setdefault(letter, set()).add(token)
        return {letter: next(iter(ids)) if len(ids) == 1 else sorted(ids) for letter, ids in sorted(seen.items())}


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _check_item(item: Item, label: str) -> None:
    k = len(item.options)
    if k == 0 or len(item.letters) != k or not 0 <= item.gold < k:
        raise ScoringError(
            f"item {item.id!r} has {k} options, {len(item.letters)} letters and gold {item.gold}; "
            f"each option needs one letter and gold must index an option (scoring {label})"
        )


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _progress_bar(total: int, label: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"scoring {label}", unit="seq", disable=not (enabled and sys.stderr.isatty()))


def _mask_kind(model: LoadedModel) -> str:
    """The attention implementation, checked to honour a custom 4D mask, with layer types it can mask."""
    config = model.model.get_decoder().config
    kind = getattr(config, "_attn_implementation", None) or "eager"
    if kind not in _MASKABLE_ATTENTION:
        raise ScoringError(
            f"model {model.label} uses attention implementation {kind!r}, which cannot take the block mask that "
            f"scores all options against one pass of the context; load it with attn_implementation='sdpa'"
        )
    unsupported = set(getattr(config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"}
    if unsupported:
        raise ScoringError(
            f"model {model.label} has layers of type {sorted(unsupported)}, which the packed-options scoring "
            f"cannot mask; only full and sliding-window attention are supported"
        )
    return kind


def _pack(lengths: Sequence[tuple[int, int]], budget: int) -> list[list[int]]:
    """Group ``(id, length)`` sequences into rows of at most `budget` tokens; return the rows' ids, longest row
    first. Best-fit decreasing: longest sequence first, each into the row it leaves the least room in, a new row
    where none has room (a sequence longer than `budget` gets a row of its own)."""
    rows: list[list[int]] = []
    used: list[int] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted, rows with room only
    for seq, n in sorted(lengths, key=lambda x: (-x[1], x[0])):
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            _, row = free.pop(at)
        else:
            row = len(rows)
            rows.append([])
            used.append(0)
        rows[row].append(seq)
        used[row] += n
        if used[row] < budget:
            bisect.insort(free, (budget - used[row], row))
    order = sorted(range(len(rows)), key=lambda r: (-used[r], r))
    return [rows[r] for r in order]


@dataclass
class _Run:
    attention: str  # the implementation the batches went through (its mask kind)
    row_tokens: int
    token_budget: int | None
    tokens_forwarded: int = 0
    tokens_padded: int = 0
    batches: int = 0
    rows: int = 0
    most_rows: int = 0
    attention_pairs: int = 0  # (query, key) pairs the attention kernels computed: rows * width^2 for a dense mask
    head_positions: int = 0  # hidden states that went through the output head
    attention_fallback: str | None = None  # why flex_attention was given up for sdpa, if it was


def _run_batches(
    model: LoadedModel,
    plan: _Plan,
    batch_size: int | Literal["auto"],
    row_tokens: int | None,
    mask_kind: str,
    progress: bool | Callable[[int, int], None],
    clock: _Clock,
    temperatures: tuple[float, ...],
) -> _Run:
    """Pack every sequence of `plan` into rows, forward the rows longest first, store what comes back.

    A fixed batch size takes that many rows at a time. "auto" takes as many rows as fit ``budget`` tokens
    (rows * longest row); on out-of-memory it halves the budget and re-runs the failed batch, and where that
    batch is a single row of several sequences, re-packs what is left into rows of half its length.
    """
    import torch

    device = "cuda" if model.input_device.type == "cuda" else "other"
    auto = batch_size == "auto"
    budget = _AUTO_TOKEN_BUDGET[device] if auto else None
    row_budget = row_tokens or _ROW_TOKENS[device]
    segments = plan.segments
    rows = _pack([(s, segments[s].length) for s in range(len(segments))], row_budget)
    run = _Run(mask_kind, row_budget, budget)
    pending = Counter(segment.item for segment in segments)  # an item is done once all its sequences are
    items_done = 0
    with _progress_bar(len(segments), model.label, progress is True) as bar:
        start = 0
        while start < len(rows):
            width = sum(segments[s].length for s in rows[start])
            n_rows = max(1, min(len(rows) - start, budget // width)) if auto else batch_size
            batch = [[segments[s] for s in row] for row in rows[start : start + n_rows]]
            try:
                values = _forward_batch(model, batch, run, clock, temperatures)
            except Exception as exc:
                if run.attention == "flex_attention" and "out of memory" not in str(exc).lower():
                    # Flex attention compiles its (triton) kernel on first use; where that fails the dense mask
                    # computes the same scores, slower: say so and carry on with it.
                    run.attention_fallback = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                    warnings.warn(f"model {model.label}: flex attention failed ({run.attention_fallback}); "
                                  "using sdpa with a dense mask", RuntimeWarning, stacklevel=2)
                    model.model.set_attn_implementation("sdpa")
                    run.attention = _mask_kind(model)
                    continue
                if not isinstance(exc, RuntimeError) or "out of memory" not in str(exc).lower():
                    raise  # torch.cuda.OutOfMemoryError is a RuntimeError
                if model.input_device.type == "cuda":
                    torch.cuda.empty_cache()
                if auto and len(batch) > 1:
                    budget //= 2
                    continue
                if auto and len(batch[0]) > 1:
                    row_budget = max(1, width // 2)
                    left = [(s, segments[s].length) for row in rows[start:] for s in row]
                    rows[start:] = _pack(left, row_budget)
                    continue
                raise ScoringError(
                    f"model {model.label} ran out of memory on a batch of {len(batch)} rows of up to {width} "
                    f"tokens; use a smaller batch size (or 'auto'), a smaller dtype or a bigger device"
                ) from exc
            for segment, per_temperature in zip((s for row in batch for s in row), values):
                plan.store(segment, per_temperature)
            lengths = [sum(s.length for s in row) for row in batch]
            run.tokens_forwarded += sum(lengths)
            run.tokens_padded += len(batch) * max(lengths)
            run.batches += 1
            run.rows += len(batch)
            run.most_rows = max(run.most_rows, len(batch))
            start += len(batch)
            bar.update(sum(len(row) for row in batch))
            if callable(progress):
                for segment in (s for row in batch for s in row):
                    pending[segment.item] -= 1
                    items_done += pending[segment.item] == 0
                progress(items_done, len(pending))
    run.row_tokens, run.token_budget = row_budget, budget
    return run


def _forward_batch(
    model: LoadedModel, batch: Sequence[Sequence[_Segment]], run: _Run, clock: _Clock,
    temperatures: tuple[float, ...],
) -> list[list[list[list[list[float]]]]]:
    """Per segment (rows in order, segments in row order), per temperature, per branch, per option: the float32
    log-probabilities of the option's continuation tokens. Adds the batch's attention pairs and head
    positions to `run`."""
    import torch

    started = clock.now()
    width = max(sum(s.length for s in row) for row in batch)
    # Per token of the batch, row after row: id, position, sequence in its row (-1 = padding), branch (0 = trunk)
    # and option (0 = body); the values padding gets.
    padding = {"ids": 0, "positions": 0, "seqs": -1, "branches": 0, "options": 0}
    columns: dict[str, list[int]] = {name: [] for name in padding}
    scored: list[int] = []  # flat index (row * width + column) of the position predicting each target
    targets: list[int] = []
    lengths: list[list[list[int]]] = []  # per segment, per branch: option lengths

    def add(ids: list[int], first: int, seq: int, branch: int, option: int) -> None:
        columns["ids"] += ids
        columns["positions"] += range(first, first + len(ids))
        columns["seqs"] += [seq] * len(ids)
        columns["branches"] += [branch] * len(ids)
        columns["options"] += [option] * len(ids)

    for r, row in enumerate(batch):
        for q, segment in enumerate(row):
            trunk_end = len(columns["ids"]) + len(segment.trunk)
            add(segment.trunk, 0, q, 0, 0)
            per_branch = []
            for b, branch in enumerate(segment.branches, start=1):
                add(branch.body, len(segment.trunk), q, b, 0)
                # The last token before the options (the body's, else the trunk's) predicts each first token;
                # option token i predicts token i + 1.
                last = len(columns["ids"]) - 1 if branch.body else trunk_end - 1
                first = len(segment.trunk) + len(branch.body)
                for j, option in enumerate(branch.targets):
                    column = len(columns["ids"])
                    add(option[:-1], first, q, b, j + 1)
                    scored += [last, *range(column, column + len(option) - 1)]
                    targets += option
                per_branch.append([len(t) for t in branch.targets])
            lengths.append(per_branch)
        pad = (r + 1) * width - len(columns["ids"])
        for name, value in padding.items():
            columns[name] += [value] * pad

    device = model.input_device
    shaped = {name: torch.tensor(v, dtype=torch.long).view(len(batch), width).to(device) for name, v in columns.items()}
    decoder = model.model.get_decoder()
    mask = _attention_mask(decoder.config, shaped, run.attention, model.dtype)
    hidden = decoder(
        input_ids=shaped["ids"], attention_mask=mask, position_ids=shaped["positions"], use_cache=False
    ).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    between = clock.now()
    clock.forward += between - started
    where_, inverse = torch.unique(torch.tensor(scored, device=flat.device), return_inverse=True)
    run.attention_pairs += _attention_pairs(mask, len(batch), width)
    run.head_positions += len(where_)
    logprobs = _target_logprobs(model, flat[where_], inverse, torch.tensor(targets), temperatures).tolist()
    clock.head += clock.now() - between

    out: list[list[list[list[list[float]]]]] = []
    offset = 0
    for per_branch in lengths:
        per_temperature: list[list[list[list[float]]]] = [[] for _ in temperatures]
        for option_lengths in per_branch:
            values: list[list[list[float]]] = [[] for _ in temperatures]
            for n in option_lengths:
                for t, row in enumerate(logprobs):
                    values[t].append(row[offset : offset + n])
                offset += n
            for t in range(len(temperatures)):
                per_temperature[t].append(values[t])
        out.append(per_temperature)
    return out


def _attention_mask(
    config: Any, rows: Mapping[str, torch.Tensor], kind: str, dtype: torch.dtype
) -> Any:
    """The attention mask of a batch: a query sees keys of its own sequence that are the trunk, or its own
    branch's body, or its own option, at positions <= its own (and within the sliding window, on sliding
    layers); padding sees itself only. Sequences packed in one row see nothing of each other.

    For sdpa and eager a dense [batch, 1, seq, seq] tensor (boolean, additive for eager); for flex_attention
    a `BlockMask` built from the same rule (`_visibility`), which lets the kernel skip blocks no query sees
    and never holds the dense mask through the layers.

    Where the model mixes full and sliding-window layers (Gemma 3) and a row reaches past the window, the
    layer types get their own masks in the dict those models accept; a model without ``layer_types`` but with
    ``sliding_window`` (Mistral) slides on every layer.
    """
    import torch

    positions = rows["positions"]
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or ())
    slides = not (window is None or int(positions.max()) < window or layer_types == {"full_attention"})

    def build(window: int | None) -> Any:
        visible = _visibility(rows, window)
        batch, width = positions.shape
        if kind == "flex_attention":
            from torch.nn.attention.flex_attention import create_block_mask

            return create_block_mask(
                lambda b, h, q, kv: visible(b, q, kv), batch, None, width, width, device=positions.device
            )
        index = torch.arange(width, device=positions.device)
        keep = visible(torch.arange(batch, device=positions.device)[:, None, None], index[:, None], index)[:, None]
        if kind == "sdpa":
            return keep
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)

    if not slides:
        return build(None)
    if not layer_types:
        return build(window)
    masks = {"full_attention": build(None), "sliding_attention": build(window)}
    return {name: masks[name] for name in layer_types}


def _attention_pairs(mask: Any, rows: int, width: int) -> int:
    """(query, key) pairs one layer's attention computes under `mask`: every pair of every row for a dense mask;
    for a BlockMask, its computed (partial or full) blocks times the block area, at the first layer type's."""
    if isinstance(mask, dict):
        mask = next(iter(mask.values()))
    if not hasattr(mask, "kv_num_blocks"):
        return rows * width * width
    full = mask.full_kv_num_blocks
    blocks = int(mask.kv_num_blocks.sum()) + (0 if full is None else int(full.sum()))
    q_block, kv_block = mask.BLOCK_SIZE
    return blocks * q_block * kv_block


def _visibility(rows: Mapping[str, torch.Tensor], window: int | None) -> Callable[..., torch.Tensor]:
    """``visible(b, q, kv)``: whether query column q of row b attends to key column kv, for index tensors that
    broadcast (the dense mask) or scalars (a flex_attention ``mask_mod``), so both kinds of mask follow one
    rule."""
    seqs, branches, options, positions = (rows[name] for name in ("seqs", "branches", "options", "positions"))

    def visible(b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        key_branch, key_option = branches[b, kv], options[b, kv]
        own_branch = (key_branch == branches[b, q]) & ((key_option == 0) | (key_option == options[b, q]))
        seen = (seqs[b, q] == seqs[b, kv]) & (seqs[b, kv] >= 0) & (positions[b, kv] <= positions[b, q])
        seen = (seen & ((key_branch == 0) | own_branch)) | (q == kv)
        if window is not None:
            seen = seen & (positions[b, q] - positions[b, kv] < window)
        return seen

    return visible


def _head_weights(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output head's weight and bias in float32 (a copy when the model is in bf16 / fp16)."""
    head = model.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight.float(), None if bias is None else bias.float()


def _head_logits(
    model: LoadedModel, hidden: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor | None] | None = None
) -> torch.Tensor:
    """float32 ``softcap(W h)`` for hidden states [n, d] (temperature not applied).

    The product runs in float32 whatever the model's dtype: a bf16 head would round every logit to 8 bits of
    mantissa (an error of ~0.1 on a logit of 20, which a log-softmax passes on to every score). Only scored
    positions reach the head, so the float32 product (and, for a bf16 / fp16 model, the float32 copy of the
    head, `_head_weights`) costs little beside the decoder.
    """
    import torch

    weight, bias = weights or _head_weights(model)
    logits = torch.nn.functional.linear(hidden.to(weight.device, torch.float32), weight, bias)
    cap = getattr(model.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = logits.div_(cap).tanh_().mul_(cap)
    return logits


def _target_logprobs(
    model: LoadedModel, hidden: torch.Tensor, inverse: torch.Tensor, targets: torch.Tensor,
    temperatures: tuple[float, ...],
) -> torch.Tensor:
    """``out[t, i] = log_softmax(head(hidden[inverse[i]]) / temperatures[t])[targets[i]]``, chunked over the
    positions: the head's product once per chunk, a division and a logsumexp per temperature."""
    import torch

    weights = _head_weights(model)
    weight = weights[0]
    # Several temperatures hold a divided copy of the chunk beside it: half as many positions per chunk.
    chunk = max(1, _HEAD_CHUNK_ELEMENTS // weight.shape[0] // (1 if len(temperatures) == 1 else 2))
    inverse, targets = inverse.to(weight.device), targets.to(weight.device)
    out = torch.empty(len(temperatures), len(targets), dtype=torch.float32, device=weight.device)
    for first in range(0, hidden.shape[0], chunk):
        raw = _head_logits(model, hidden[first : first + chunk], weights)
        here = (inverse >= first) & (inverse < first + chunk)
        local = inverse[here] - first
        for t, temperature in enumerate(temperatures):
            if temperature == 1.0:
                logits = raw
            elif len(temperatures) == 1:  # in place: a pass over [chunk, vocab] floats costs a fifth of the product
                logits = raw.div_(temperature)
            else:
                logits = raw / temperature
            out[t, here] = logits[local, targets[here]] - torch.logsumexp(logits, dim=-1)[local]
    return out.cpu()


def _check_output_head(model: LoadedModel, prefix: list[int]) -> int:
    """Compare the hidden-state + head path with the model's own logits on a few tokens; return tokens run.

    Catches output post-processing this module does not reproduce (a logit scale, an unknown cap), which
    would otherwise shift every score silently.
    """
    import torch

    if not prefix:
        return 0
    ids = torch.tensor([prefix[:_PROBE_TOKENS]], device=model.input_device)
    mine = _head_logits(model, model.model.get_decoder()(input_ids=ids).last_hidden_state[0, -1:])
    theirs = model.model(input_ids=ids).logits[0, -1:].float().to(mine.device)
    tolerance = 1e-4 if model.dtype == torch.float32 else 2e-2
    error = float((mine - theirs).abs().max())
    # Non-finite logits are reported per item by the scoring itself, with the item's id.
    if torch.isfinite(theirs).all() and not error <= tolerance * (1 + float(theirs.abs().max())):
        raise ScoringError(
            f"model {model.label}: logits from its hidden states and output head differ from its own logits by "
            f"{error:.3g}; it post-processes logits in a way scoring does not reproduce (supported: "
            f"final_logit_softcapping); report this model"
        )
    return 2 * ids.shape[1]

"""The scoring engine checks the path it scores with: once per model load, a few items scored both by that path
(its attention kernel, its packed rows, its masks, its dtype) and by a plain reference; a path that disagrees
scores nothing.

Why (issue 32): the CUDA default is flex attention over packed rows with the engine's own block masks, in bf16.
A kernel or a mask that is wrong on some GPU, driver or torch version would move every score of that machine,
silently (torch's compiled flex kernel for CPU with AVX2 code was off by up to 3.0: `models.attention_order`).
An exception was the only fallback before.

The reference (`reference_records`) is the run's own token trees (`scoring._Plan`: the same tokenisation, BOS,
truncation and chat template) un-treed: every option's sequence (its context, then the option's tokens but the
last) and every lettered prompt a sequence of its own (several a forward, right-padded: under a causal mask no
token sees the padding after it), no mask of the engine's: the model's own causal mask (sliding windows
included) and position ids, through eager attention
(plain matmuls and a softmax in torch), with float32 weights where memory allows (`_float32`). Its output head is
the engine's float32 head (`scoring._head_logits`), which `scoring._check_output_head` compares with the model's
own logits at every scoring call. So the reference shares the tokenisation and the head with the path, never its
kernel, mask, packing or batching. It forwards each context once per option, the cost the engine exists to
avoid, which is why it sees only `CHECK_ITEMS` items.

The path (`run_self_check`): `scoring.score_temperatures` of the same items at temperature 1 with the run's batch
size and row budget, so they are packed as the run packs them. Every extractor's option scores are compared; a
bf16 / fp16 path twice, as it runs (its dtype's tolerance) and with its weights in float32 (float32's), so that
the reduced dtype's own noise hides no mask error.
Where the path disagrees, the next one is checked: the next implementation in `models.attention_order` after
the model's, then the same implementations with unpacked rows (a row per sequence: no two items share a mask).
The first that agrees is what the run scores with; the failures are warned once per model load
(`SelfCheckWarning`, naming each kernel, its largest difference and the item) and recorded
(`records.SelfCheck`); where none agrees the run stops (`ScoringError`).

The tolerance (`token_tolerance`), derived. Rounding to a format of unit roundoff u changes a value by at most u
relatively (bf16 keeps 8 significant bits: u = 2^-8). In a reduced-precision model the decoder's activations are
rounded after every operation; the output head does not round (float32 on the scored positions), so a logit
``z_j = w_j . h`` carries only the error of the final hidden state h. That error gathers along the residual
stream, which is rounded after each of the 2L sublayer additions of an L-layer decoder and once more at the final
norm: 2L + 1 roundings of at most u each, independent and of either sign, so they add in quadrature to a relative
error of about ``e = u * sqrt(2L + 1)`` on h (the sublayers' own roundings enter the stream scaled by their
outputs, smaller than the stream in a pre-norm decoder). A relative error e on h moves each logit by about
``e * Z``, where Z is the largest logit magnitude over the scored positions (the reference's), and a
log-probability ``z_t - logsumexp(z)`` by at most twice the largest logit error. So per scored token:

    tolerance = 2 * sqrt(2L + 1) * u * Z

and per option: continuation-sum n_k tokens (n_k * tolerance); continuation-min, continuation-mean and choice one
token's worth (a min or mean of values each within the tolerance). u is the arithmetic's: 2^-8 for bf16; 2^-11
for fp16, and for float32 matmuls that CUDA runs in TF32 (10 explicit mantissa bits); for float32 its rounding
(2^-24) is not what differs between two kernels, the order of their sums is: a dot product of length d summed
in another order differs by about ``sqrt(d) * 2^-24`` relatively (a random walk of roundings), d the longest sum
of the decoder (the hidden size, or the MLP's intermediate size, the down projection's length), so
``u = sqrt(d) * 2^-24``. Where the reference must run in the model's own reduced dtype (no memory for
float32 weights), path and reference are each within the tolerance of the float32 arithmetic: twice it apart.
tests/test_cuda.py checks the bf16 floor on CPU and CUDA against float32, and that an option seeing its
neighbours (a mask bug) exceeds it; tests/test_selfcheck.py measures the float32 one (figures there).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from calib_checks.records import EXTRACTORS, ItemRecord, SelfCheck, describe_fallback

if TYPE_CHECKING:
    import torch

    from calib_checks.models import LoadedModel
    from calib_checks.tasks import Item

# Items per check: the reference forwards each of their contexts once per option (module docstring).
CHECK_ITEMS = 4
# Padded tokens (rows * longest) per forward of the reference.
_REFERENCE_BATCH_TOKENS = 512
# Free memory the float32 weights may take, as a share of what the device has free (the rest is for activations).
_UPCAST_SHARE = 0.5


class SelfCheckWarning(RuntimeWarning):
    """A scoring path disagreed with the plain reference: the run scores with the next path that agrees."""


def unit_roundoff(dtype: torch.dtype, longest_sum: int, device_type: str) -> float:
    """u of the arithmetic a model of `dtype` computes in; `longest_sum`: the decoder's longest dot product
    (module docstring, "The tolerance")."""
    import torch

    if dtype == torch.bfloat16:
        return 2.0**-8
    tf32 = device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    if dtype == torch.float16 or tf32:
        return 2.0**-11
    return math.sqrt(longest_sum) * 2.0**-24


def token_tolerance(model: LoadedModel, z: float) -> float:
    """Largest difference per scored token between `model`'s scores and the float32 arithmetic of its weights, Z
    being the largest logit magnitude over the scored positions: ``2 * sqrt(2L + 1) * u * Z`` (module docstring,
    "The tolerance")."""
    text = model.model.config.get_text_config()
    longest = max(text.hidden_size, getattr(text, "intermediate_size", None) or 0)
    u = unit_roundoff(model.dtype, longest, model.input_device.type)
    return 2 * math.sqrt(2 * text.num_hidden_layers + 1) * u * z


def run_self_check(
    model: LoadedModel, items: Sequence[Item], order: Sequence[str], batch_size: int | Literal["auto"] = "auto",
) -> tuple[SelfCheck, int | None]:
    """Check the model's scoring path on the first `CHECK_ITEMS` of `items`, falling back along `order` (the
    model's `models.attention_order`) and then to unpacked rows; return the outcome and the row budget the run
    must score with (None: the device's default; 1: a row per sequence). The model is left on the kernel that
    agreed. Raises `ScoringError` where no path agrees.

    A bf16 / fp16 model's path is compared twice: as it runs, within its dtype's tolerance, and with its weights
    in float32 (where memory allows), within float32's. The first catches a kernel that is wrong in the reduced
    dtype only; the second what the reduced dtype's own noise would hide: one wrong mask entry moved the tiny
    Llama's scores by 0.06: 0.16 of its bf16 tolerance, over 1000 times its float32 one.
    """
    import torch

    from calib_checks.scoring import ScoringError, _mask_kind

    started = time.perf_counter()
    items = list(items[:CHECK_ITEMS])
    reference, z, described, upcast = reference_records(model, items)
    # Reference in the model's own reduced dtype: both sides within the tolerance of float32, twice it apart.
    tolerance = token_tolerance(model, z) * (2 if upcast is False else 1)
    exact = replace(model, dtype=torch.float32)
    tolerance32 = token_tolerance(exact, z) if upcast else None
    first = _mask_kind(model)
    kinds = list(order[order.index(first):]) if first in order else [first, *order]
    failures: list[dict] = []
    tried: set[tuple[str, bool]] = set()
    for packed in (True, False):
        for kind in kinds:
            if (kind, packed) in tried:
                continue
            try:
                if _mask_kind(model) != kind:
                    model.model.set_attn_implementation(kind)
            except (ValueError, ImportError) as exc:  # the model class lacks it (transformers names it)
                failures.append({"kernel": kind, "packed": packed, "error": str(exc).splitlines()[0][:200]})
                tried.add((kind, packed))
                continue
            row_tokens = None if packed else 1
            records, ran, raised = _score_path(model, items, batch_size, row_tokens)
            if raised is not None:  # flex raised and scoring went on through sdpa: that is what was compared
                failures.append({"kernel": kind, "packed": packed, "error": raised})
            tried.update({(kind, packed), (ran, packed)})
            found = _found(records, reference, tolerance, _dtype_text(model.dtype))
            if tolerance32 is not None:
                with _float32(model):
                    in_float32, _, _ = _score_path(exact, items, batch_size, row_tokens)
                worse = _found(in_float32, reference, tolerance32, "float32")
            else:
                worse = None
            failed = [f for f in (found, worse) if f is not None and not f["share"] <= 1.0]
            if not failed:
                check = SelfCheck(
                    status="passed" if not failures else "fell back", kernel=ran, packed=packed,
                    reference=described, items=tuple(it.id for it in items), max_difference=found["max_difference"],
                    share=found["share"], where=found["where"], tolerance=tolerance, float32=worse,
                    fallbacks=tuple(failures), seconds=time.perf_counter() - started,
                )
                if any("share" in f for f in failures):  # (flex raising was warned by scoring itself)
                    warnings.warn(f"model {model.label}: scoring with {check.describe()}", SelfCheckWarning,
                                  stacklevel=3)
                return check, row_tokens
            failures.append({"kernel": ran, "packed": packed, **max(failed, key=lambda f: f["share"])})
    raise ScoringError(
        f"model {model.label}: no scoring path agrees with the plain reference ({described}) on items "
        f"{', '.join(it.id for it in items)}: {'; '.join(describe_fallback(f) for f in failures)}; scores of "
        "this machine cannot be trusted: report it with the torch, transformers and device versions "
        "(--calib-no-self-check, or score --no-self-check, scores without the check, at your own risk)"
    )


def _found(records: Sequence[ItemRecord], reference: Sequence[ItemRecord], tolerance: float, arithmetic: str
           ) -> dict[str, Any]:
    """One comparison with the reference as `records.SelfCheck` keeps it."""
    difference, share, where = compare(records, reference, tolerance)
    return {"arithmetic": arithmetic, "max_difference": difference, "share": share, "where": where,
            "tolerance": tolerance}


def _score_path(
    model: LoadedModel, items: Sequence[Item], batch_size: int | Literal["auto"], row_tokens: int | None
) -> tuple[list[ItemRecord], str, str | None]:
    """The path's records of `items` at temperature 1, the kernel they went through, and why flex attention was
    given up for sdpa on the way (None where it was not)."""
    from calib_checks import scoring

    with warnings.catch_warnings():
        # Said, where it applies, by the run's own scoring of every item.
        warnings.simplefilter("ignore", scoring.LowLetterMassWarning)
        results = scoring.score_temperatures(model, items, (1.0,), batch_size, progress=False, row_tokens=row_tokens)
    records, stats = results[1.0]
    return records, stats.attention, stats.attention_fallback


def compare(records: Sequence[ItemRecord], reference: Sequence[ItemRecord], tolerance: float
            ) -> tuple[float, float, str]:
    """(largest |difference|, largest share of its tolerance, where that share is) over every extractor's option
    scores; a continuation-sum of n tokens is allowed n tolerances."""
    largest, share, where = 0.0, 0.0, ""
    for ours, theirs in zip(records, reference, strict=True):
        for name in EXTRACTORS:
            for k, (a, b) in enumerate(zip(ours.scores[name], theirs.scores[name], strict=True)):
                tokens = ours.n_tokens[k] if name == "continuation-sum" and ours.n_tokens else 1
                difference = abs(a - b)
                allowed = tokens * tolerance
                ratio = difference / allowed if allowed > 0 else (0.0 if difference == 0 else math.inf)
                largest = max(largest, difference)
                if ratio > share or not where:
                    share, where = ratio, f"item {ours.id!r}, {name}, option {k}"
    return largest, share, where


def reference_records(model: LoadedModel, items: Sequence[Item]
                      ) -> tuple[list[ItemRecord], float, str, bool | None]:
    """The plain reference's records of `items` at temperature 1 (module docstring), the largest float32 logit
    magnitude over its scored positions (Z of the tolerance), a description of it, and whether a reduced-precision
    model's weights went to float32 for it (None: they are float32; False: no memory for it)."""
    import torch

    from calib_checks.scoring import _head_logits, _Plan

    plan = _Plan(model, items)
    # Per option of every branch of every segment: its plain sequence (the branch's prefix, then the option's
    # tokens but the last) and where the prefix ends. The letters of a prompt share one sequence.
    options = [[[(tuple(segment.trunk + branch.body + target[:-1]), len(segment.trunk + branch.body), target)
                 for target in branch.targets] for branch in segment.branches] for segment in plan.segments]
    sequences = sorted({ids for per_segment in options for per_branch in per_segment for ids, _, _ in per_branch},
                       key=len, reverse=True)
    hidden: dict[tuple[int, ...], torch.Tensor] = {}
    z = 0.0
    with _float32(model) as upcast, _eager(model), torch.inference_mode():
        decoder = model.model.get_decoder()
        start = 0
        while start < len(sequences):
            # Several sequences a forward, right-padded and without an attention mask: under the model's causal
            # mask no real token sees the padding after it, so nothing of the engine's masks is needed (packing
            # would need them). One sequence a forward took 2-5x longer on SmolLM2 on CPU.
            width = len(sequences[start])
            batch = sequences[start : start + max(1, _REFERENCE_BATCH_TOKENS // width)]
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, sequence in enumerate(batch):
                ids[row, : len(sequence)] = torch.tensor(sequence)
            out = decoder(input_ids=ids.to(model.input_device), use_cache=False).last_hidden_state
            hidden.update({sequence: out[row, : len(sequence)] for row, sequence in enumerate(batch)})
            start += len(batch)
        for segment, per_segment in zip(plan.segments, options):
            values = []
            for per_branch in per_segment:
                per_option = []
                for ids, prefix, target in per_branch:
                    # Position prefix - 1 predicts the option's first token, each of its tokens the next.
                    logits = _head_logits(model, hidden[ids][prefix - 1 : prefix - 1 + len(target)])
                    z = max(z, float(logits.abs().max()))
                    picked = logits[torch.arange(len(target)), torch.tensor(target, device=logits.device)]
                    per_option.append((picked - torch.logsumexp(logits, dim=-1)).tolist())
                values.append(per_option)
            plan.store(segment, [values])
    weights = "float32" if upcast is not False else f"{_dtype_text(model.dtype)} (no memory for float32 weights)"
    described = f"eager attention with the model's causal mask, one sequence per option, {weights}"
    return plan.records(model.label), z, described, upcast


@contextmanager
def _eager(model: LoadedModel) -> Iterator[None]:
    """The model on eager attention (plain matmuls and a softmax), its own implementation again on exit."""
    attention = model.model.config._attn_implementation
    model.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.model.set_attn_implementation(attention)


@contextmanager
def _float32(model: LoadedModel) -> Iterator[bool | None]:
    """A reduced-precision model's weights and buffers in float32 where each device has the memory, restored on
    exit bit for bit (bf16 and fp16 values are exact in float32). Yields whether they went to float32 (None: they
    are float32 already)."""
    import torch

    tensors = [t for t in (*model.model.parameters(), *model.model.buffers())
               if t.is_floating_point() and t.dtype != torch.float32]
    if not tensors:
        yield None
        return
    kept = [(t, t.data) for t in tensors] if _fits_in_float32(tensors) else []
    try:
        for tensor, data in kept:
            tensor.data = data.float()
        yield bool(kept)
    finally:
        for tensor, data in kept:
            tensor.data = data


def _fits_in_float32(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether float32 copies of `tensors` fit in `_UPCAST_SHARE` of each device's free memory (never for
    weights offloaded to the meta device)."""
    import torch

    needed: dict[torch.device, int] = {}
    for tensor in tensors:
        needed[tensor.device] = needed.get(tensor.device, 0) + tensor.numel() * 4
    for device, size in needed.items():
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        elif device.type == "cpu":
            import psutil

            free = psutil.virtual_memory().available
        else:  # meta (offloaded), mps, ...: no measure of free memory, or nothing to upcast
            return False
        if size > _UPCAST_SHARE * free:
            return False
    return True


def _dtype_text(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

"""Scored items: the record schema every score source writes and every consumer reads (imports no torch).

A source (calib_checks/sources/) turns a task's items into one `ItemRecord` per item: the item's id and gold
option, and per extractor one score per option. Everything downstream (metrics, verdicts, results, report) reads
these records and nothing else about where they came from.

Extractors (`EXTRACTORS`), from the per-token log-probabilities of option k's continuation tokens
``c_1 .. c_n`` and the log-probability of its letter at the answer position:

- ``continuation-sum``: ``sum_j log p(c_j)`` (lm-evaluation-harness's loglikelihood);
- ``continuation-min``: ``min_j log p(c_j)``;
- ``continuation-mean``: ``sum_j log p(c_j) / n`` (HELM's length-normalised score);
- ``choice``: ``log p(letter_k)``.

`extract` computes all four from those values; the scoring engine and the bench both call it.

Probabilities: ``probs[k] = exp(s_k - max s) / sum_l exp(s_l - max s)`` in float64 (`probabilities`), the softmax
across options, for every extractor and every source: a record stores scores, and its probabilities are always
derived from them, so the numbers the gate judges and the scores the report's temperature fit reads can never
disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any

import numpy as np

from calib_checks.errors import CalibChecksError

__all__ = ["CONTINUATION_EXTRACTORS", "EXTRACTORS", "LETTER_MASS_FLOOR", "EngineStats", "ItemRecord", "RecordError",
           "ScoreStats", "SelfCheck", "TaskScores", "continuation_mean", "continuation_min", "continuation_sum",
           "describe_fallback", "distinct_self_checks", "extract", "letter_mass", "letter_mass_summary", "probabilities"]

EXTRACTORS = ("continuation-sum", "continuation-min", "continuation-mean", "choice")


class RecordError(CalibChecksError):
    """A record that is malformed or inconsistent (one line naming the item and the fix)."""


def continuation_sum(logprobs: Sequence[float]) -> float:
    """``sum_j logprobs[j]`` (exactly rounded: math.fsum), lm-eval's loglikelihood of a continuation."""
    return math.fsum(logprobs)


def continuation_min(logprobs: Sequence[float]) -> float:
    """``min_j logprobs[j]``: the continuation's least likely token."""
    return min(logprobs)


def continuation_mean(logprobs: Sequence[float]) -> float:
    """``sum_j logprobs[j] / n``: the length-normalised score."""
    return math.fsum(logprobs) / len(logprobs)


#: The continuation extractors, by name: each maps an option's per-token log-probabilities to its score.
CONTINUATION_EXTRACTORS: dict[str, Callable[[Sequence[float]], float]] = {
    "continuation-sum": continuation_sum,
    "continuation-min": continuation_min,
    "continuation-mean": continuation_mean,
}


def extract(option_logprobs: Sequence[Sequence[float]], letter_logprobs: Sequence[float]) -> dict[str, list[float]]:
    """Every extractor's per-option scores: ``option_logprobs[k]`` holds option k's per-token log-probabilities,
    ``letter_logprobs[k]`` the log-probability of its letter at the answer position."""
    if len(option_logprobs) != len(letter_logprobs) or any(not tokens for tokens in option_logprobs):
        raise RecordError(f"extract needs one non-empty token list and one letter per option, got "
                          f"{[len(t) for t in option_logprobs]} tokens and {len(letter_logprobs)} letters")
    scores = {name: [f(tokens) for tokens in option_logprobs] for name, f in CONTINUATION_EXTRACTORS.items()}
    scores["choice"] = [float(x) for x in letter_logprobs]
    return scores


def probabilities(scores: Sequence[float]) -> list[float]:
    """Softmax across options, float64: ``exp(s_k - max s) / sum_l exp(s_l - max s)``."""
    values = np.asarray(scores, dtype=np.float64)
    weights = np.exp(values - values.max())
    return (weights / weights.sum()).tolist()


def letter_mass(choice_scores: Sequence[float]) -> float:
    """``sum_k p(letter_k)`` under the full-vocabulary softmax at the answer position: the choice scores are
    full-vocabulary log-probabilities at one position, so this is ``exp(logsumexp_k choice_k)``."""
    return float(np.exp(np.logaddexp.reduce(np.asarray(choice_scores, dtype=np.float64))))


LETTER_MASS_FLOOR = 0.5
"""Mean letter mass below which the choice extractor's numbers describe the model poorly.

Below one half the model puts more probability on answers that are not a letter than on the letters, so the
renormalised choice probabilities are drawn from the minority of its belief: their calibration says more about
the prompt format than about the model (an instruct model answering in words, a base model continuing the list).
Above it the letters are what the model mostly answers, and the renormalisation changes confidences by less than
a factor of two."""


@dataclass
class ItemRecord:
    """Scores of one item under one model.

    ``scores[extractor][k]`` is option k's score (data set option order); a source gives the extractors it can
    (lm-eval logs only sums: no ``continuation-min``). ``n_options`` is the item's option count. The rest is
    what the scoring engine knows and file sources may lack: ``n_tokens[k]`` (option k's continuation tokens,
    None when unknown), ``letter_token_ids[k]`` (the token read for letter k), ``truncated``, ``prefix_fallback``
    and ``letter_mass`` (`letter_mass`; None when unknown). ``probs`` is derived (`probabilities`), never stored.
    """

    id: str
    gold: int
    scores: dict[str, list[float]]
    n_options: int
    n_tokens: list[int] | None = None
    letter_token_ids: list[int] = field(default_factory=list)
    truncated: bool = False
    prefix_fallback: bool = False
    letter_mass: float | None = None

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.scores.values()}
        if self.n_tokens is not None:
            lengths.add(len(self.n_tokens))
        if not self.scores or lengths != {self.n_options} or not 0 <= self.gold < self.n_options:
            raise RecordError(f"item record {self.id!r} is inconsistent: {self.n_options} options, gold {self.gold}, "
                              f"score lists of lengths {sorted(lengths)}; re-score the item")
        for name, values in self.scores.items():
            if not all(math.isfinite(v) for v in values):
                raise RecordError(f"item record {self.id!r} has a non-finite {name} score {values}; check the "
                                  "model's logits and dtype (fp16 overflows; try bf16 or fp32)")

    @cached_property
    def probs(self) -> dict[str, list[float]]:
        """``probabilities`` of every extractor's scores."""
        return {name: probabilities(values) for name, values in self.scores.items()}

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (one line of a records file); ``probs`` is written for readers, never read back."""
        return {
            "id": self.id,
            "gold": self.gold,
            "n_options": self.n_options,
            "scores": {name: [float(v) for v in values] for name, values in self.scores.items()},
            "probs": self.probs,
            "n_tokens": None if self.n_tokens is None else [int(n) for n in self.n_tokens],
            "letter_token_ids": [int(t) for t in self.letter_token_ids],
            "truncated": bool(self.truncated),
            "prefix_fallback": bool(self.prefix_fallback),
            "letter_mass": None if self.letter_mass is None else float(self.letter_mass),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemRecord:
        """Inverse of `to_json` (``probs`` ignored: derived from the scores); `RecordError` on a malformed record.

        Records written before ``n_options`` existed take it from ``n_tokens``.
        """
        try:
            n_tokens = None if data.get("n_tokens") is None else [int(n) for n in data["n_tokens"]]
            n_options = data.get("n_options")
            return cls(
                id=str(data["id"]),
                gold=int(data["gold"]),
                scores={str(k): [float(v) for v in vs] for k, vs in data["scores"].items()},
                n_options=int(n_options if n_options is not None else len(n_tokens or ())),
                n_tokens=n_tokens,
                letter_token_ids=[int(t) for t in data.get("letter_token_ids") or ()],
                truncated=bool(data.get("truncated", False)),
                prefix_fallback=bool(data.get("prefix_fallback", False)),
                letter_mass=None if data.get("letter_mass") is None else float(data["letter_mass"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordError(f"malformed item record {dict(data)!r:.200}: {exc!r}; re-score the item") from exc


def letter_mass_summary(records: Iterable[ItemRecord]) -> dict[str, float] | None:
    """``{"mean", "min", "below_floor"}`` of the records' letter masses (``below_floor``: the share of items
    under `LETTER_MASS_FLOOR`); None when no record has one (file sources, records scored before it existed)."""
    masses = np.array([r.letter_mass for r in records if r.letter_mass is not None], dtype=np.float64)
    if not len(masses):
        return None
    return {"mean": float(masses.mean()), "min": float(masses.min()),
            "below_floor": float((masses < LETTER_MASS_FLOOR).mean())}


@dataclass(frozen=True)
class SelfCheck:
    """How the scoring engine checked the path it scored with against a plain reference, once per model load
    (calib_checks/selfcheck.py defines every number here).

    ``status``: ``"passed"`` (the first path agreed), ``"fell back"`` (``kernel`` / ``packed`` is the first path
    that agreed, after those in ``fallbacks`` failed) or ``"off"`` (not checked: ``--calib-no-self-check``);
    ``kernel``: the attention implementation the scores were computed with; ``packed``: several items a row
    (False: every sequence in a row of its own); ``reference``: what the reference was; ``items``: the ids
    compared; ``max_difference``: the largest |path - reference| over every extractor's option scores;
    ``share``: the largest ratio of a difference to its tolerance (the path passes at <= 1), at ``where``
    (item, extractor, option); ``tolerance``: per scored token (a continuation-sum of n tokens is allowed n);
    ``float32``: for a bf16 / fp16 model, the same path with its weights in float32 against float32's tolerance,
    ``{"arithmetic", "max_difference", "share", "where", "tolerance"}`` (None for a float32 model, or without the
    memory); ``fallbacks``: per path that failed, its worse comparison (``{"kernel", "packed", "arithmetic",
    "max_difference", "share", "where", "tolerance"}``), or ``{"kernel", "packed", "error"}`` where it could not
    run; ``seconds``: the check's cost.
    """

    status: str
    kernel: str
    packed: bool = True
    reference: str = ""
    items: tuple[str, ...] = ()
    max_difference: float | None = None
    share: float | None = None
    where: str | None = None
    tolerance: float | None = None
    float32: dict[str, Any] | None = None
    fallbacks: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["items"], data["fallbacks"] = list(self.items), [dict(f) for f in self.fallbacks]
        return data

    def describe(self) -> str:
        """One line: the path that scored, and how far it was from the reference (or that nobody looked)."""
        path = f"{self.kernel} with {'packed' if self.packed else 'unpacked'} rows"
        if self.status == "off":
            return f"{path}; self-check off: not compared with a reference"
        line = (f"{path}; self-check {self.status}: largest difference {self.max_difference:.3g} from the plain "
                f"reference ({self.reference}) on {len(self.items)} items, {self.share:.3g} of the tolerance "
                f"({self.tolerance:.3g} per token)")
        if self.float32:
            line += (f", and with float32 weights {self.float32['max_difference']:.3g}, {self.float32['share']:.3g} "
                     f"of float32's ({self.float32['tolerance']:.3g})")
        failed = "; ".join(describe_fallback(f) for f in self.fallbacks)
        return line + (f"; failed first: {failed}" if failed else "")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SelfCheck:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["items"] = tuple(values.get("items") or ())
        values["fallbacks"] = tuple(dict(f) for f in values.get("fallbacks") or ())
        return cls(**values)


def describe_fallback(failure: Mapping[str, Any]) -> str:
    """One of `SelfCheck.fallbacks` in words: the path, and its largest difference and where, or why it could not
    run."""
    path = f"{failure['kernel']} with {'packed' if failure['packed'] else 'unpacked'} rows"
    if "error" in failure:
        return f"{path} could not run ({failure['error']})"
    return (f"{path} differed from the reference by up to {failure['max_difference']:.3g} in "
            f"{failure['arithmetic']} ({failure['share']:.3g} times its tolerance, at {failure['where']})")


def distinct_self_checks(checks: Iterable[SelfCheck]) -> tuple[SelfCheck, ...]:
    """`checks` without repeats, in order (one model load's check is in the stats of every task it scored)."""
    seen: dict[str, SelfCheck] = {}
    for check in checks:
        seen.setdefault(json.dumps(check.to_json(), sort_keys=True), check)
    return tuple(seen.values())


@dataclass(frozen=True)
class EngineStats:
    """What one scoring-engine computation did (`scoring.score_items`; definitions in its docstring).

    Counts are additive over computations (`combine`); ``batch_size`` is the most rows one batch held,
    ``row_tokens`` / ``token_budget`` / ``attention`` / ``attention_fallback`` are the last computation's.
    """

    tokens_forwarded: int = 0
    tokens_padded: int = 0
    token_lower_bound: int = 0
    token_tree_lower_bound: int = 0
    probe_tokens: int = 0
    truncated: int = 0
    prefix_fallbacks: int = 0
    letter_tokens: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_tokenise: float = 0.0
    seconds_forward: float = 0.0
    seconds_head: float = 0.0
    rows: int = 0
    batches: int = 0
    sequences: int = 0
    batch_size: int = 0
    row_tokens: int = 0
    token_budget: int | None = None
    attention: str = ""
    attention_fallback: str | None = None
    attention_pairs: int = 0
    head_positions: int = 0
    # The self-checks of the model loads that computed these records (one, or one per cached chunk of another
    # load); empty for records computed before the check existed.
    self_checks: tuple[SelfCheck, ...] = ()

    _ADDITIVE = ("tokens_forwarded", "tokens_padded", "token_lower_bound", "token_tree_lower_bound", "probe_tokens",
                 "truncated", "prefix_fallbacks", "seconds", "seconds_tokenise", "seconds_forward", "seconds_head",
                 "rows", "batches", "sequences", "attention_pairs", "head_positions")

    def combine(self, other: EngineStats) -> EngineStats:
        """The stats of both computations together (e.g. two cached chunks of one task)."""
        merged = {name: getattr(self, name) + getattr(other, name) for name in self._ADDITIVE}
        letters = {**self.letter_tokens, **other.letter_tokens}
        for letter in set(self.letter_tokens) & set(other.letter_tokens):
            ids = {*_as_list(self.letter_tokens[letter]), *_as_list(other.letter_tokens[letter])}
            letters[letter] = next(iter(ids)) if len(ids) == 1 else sorted(ids)
        return replace(other, **merged, letter_tokens=dict(sorted(letters.items())),
                       batch_size=max(self.batch_size, other.batch_size),
                       self_checks=distinct_self_checks(self.self_checks + other.self_checks))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["self_checks"] = [check.to_json() for check in self.self_checks]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineStats:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["self_checks"] = tuple(SelfCheck.from_json(c) for c in values.get("self_checks") or ())
        return cls(**values)


def _as_list(value: int | list[int]) -> list[int]:
    return list(value) if isinstance(value, list) else [value]


@dataclass(frozen=True)
class ScoreStats:
    """Where a side's scores on a task came from.

    ``source``: one phrase for messages ("calib-checks scoring engine", "scores file /x/arc_easy.jsonl", ...);
    ``cache``: ``"hit"`` (every record from the score cache), ``"miss"`` (all computed and stored), ``"partial"``
    (some of each), ``"off"`` (computed, no cache), ``"none"`` (read from files: nothing computed);
    ``computed``: items computed by this request (0 on a hit); ``engine``: the scoring engine's stats of the
    computations that made the records (None for file sources); ``stack``: the software stack the scores were
    computed with (`models.software_stack`; None where unknown, e.g. files); ``files``: input files read;
    ``n_available``: the items the source had before the gate's sample (None where unknown).
    """

    source: str
    cache: str = "none"
    computed: int = 0
    engine: EngineStats | None = None
    stack: dict[str, Any] | None = None
    files: tuple[str, ...] = ()
    n_available: int | None = None

    @property
    def read_only(self) -> bool:
        """True when nothing was computed for this request (a cache hit, or a file read)."""
        return self.computed == 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreStats:
        engine = data.get("engine")
        return cls(source=str(data.get("source", "")), cache=str(data.get("cache", "none")),
                   computed=int(data.get("computed", 0)),
                   engine=None if engine is None else EngineStats.from_json(engine), stack=data.get("stack"),
                   files=tuple(data.get("files") or ()), n_available=data.get("n_available"))


@dataclass
class TaskScores:
    """All records of one side on one task, in item order, and where they came from."""

    model_label: str
    model_identity: dict[str, Any]
    task: str
    data_fingerprint: str
    records: list[ItemRecord]
    stats: ScoreStats = field(default_factory=lambda: ScoreStats(source="unknown"))

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def labels(self) -> np.ndarray:
        """Gold option indices, shape (N,), int64."""
        return np.array([r.gold for r in self.records], dtype=np.int64)

    def probs(self, extractor: str) -> np.ndarray:
        """Option probabilities, shape (N, K_max), float64; items with fewer options are padded with 0."""
        if extractor not in EXTRACTORS:
            raise RecordError(f"unknown extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)}")
        k_max = max((r.n_options for r in self.records), default=0)
        out = np.zeros((len(self.records), k_max), dtype=np.float64)
        for i, record in enumerate(self.records):
            out[i, : record.n_options] = record.probs[extractor]
        return out

    def lacking(self, extractor: str) -> int:
        """How many records lack `extractor` (a source that cannot provide it)."""
        return sum(extractor not in r.scores for r in self.records)

    def select(self, ids: Sequence[str]) -> TaskScores:
        """These scores restricted to `ids`, in that order; `RecordError` naming an id these scores lack."""
        by_id = {r.id: r for r in self.records}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise RecordError(f"{self.model_label} has no score for item {missing[0]!r} of {self.task} "
                              f"({len(missing)} of {len(ids)} missing)")
        return replace(self, records=[by_id[i] for i in ids])

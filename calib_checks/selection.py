"""What a gate run compares: its options, checked, and the cases they expand to (no model, no hub, no data).

`GateOptions` holds one field per `--calib-*` option (docs/GATE.md, "Options"). `select` checks them all (names
against the run's task registry, thresholds.toml, pair texts) and raises `GateUsageError` (the pytest gate's
exit status 4) for anything wrong, before a model or a data set is touched. The result, a `Selection`, holds
the run's task registry (built-in tasks and its task files: the process-wide registry is never changed), the
rule of every (task, extractor, metric), the [gate] policy and the side texts.

Comparisons: a pair ``[NAME=]BASE,ALIGNED`` is one `Comparison` of its base and aligned side, in a family of its
own (the family is what Holm's correction spans). `Case` is one expected gate case: a comparison x task x
extractor x metric.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from calib_checks.errors import CalibChecksError

if TYPE_CHECKING:
    from calib_checks.tasks import TaskSpec
    from calib_checks.thresholds import GatePolicy, Rule

__all__ = ["DEFAULT_EXTRACTORS", "DEFAULT_METRICS", "DEFAULT_TASKS", "Case", "Comparison", "GateOptions",
           "GateUsageError", "Selection", "parse_pair", "select", "split_names"]

DEFAULT_TASKS = ("arc_easy", "hellaswag", "medmcqa", "mmlu_stem", "mmlu_humanities", "piqa")
DEFAULT_EXTRACTORS = ("continuation-sum", "continuation-min", "choice")
DEFAULT_METRICS = ("ece", "sce", "overconfidence", "accuracy", "brier", "nll")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._@+-]*)=(?P<rest>.*)$")


class GateUsageError(CalibChecksError):
    """The gate cannot start as asked (bad selection, thresholds, pair spec, the same model twice)."""


@dataclass(frozen=True)
class GateOptions:
    """What one gate run compares and how; field meanings: docs/GATE.md, "Options".

    `pairs` holds `[NAME=]BASE,ALIGNED` texts; a side is any score source's text (calib_checks/sources/: a
    checkpoint, `scores:DIR`, `lm-eval:PATH`, or a registered third-party prefix). Relative paths are taken as
    given.
    """

    pairs: tuple[str, ...]
    tasks: tuple[str, ...] = DEFAULT_TASKS
    extractors: tuple[str, ...] = DEFAULT_EXTRACTORS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    thresholds: str | Path = "thresholds.toml"
    report_dir: str | Path = "reports"
    limit: int | None = None
    seed: int = 0
    data_source: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"  # models.ATTENTION_CHOICES
    batch_size: int | Literal["auto"] = "auto"
    use_cache: bool = True
    allow_same_model: bool = False
    allow_partial: bool = False
    task_files: tuple[str | Path, ...] = ()  # TOML task files or folders of them (calib_checks/taskfiles.py)


@dataclass(frozen=True)
class Comparison:
    """One base -> aligned comparison: `name` prefixes its case ids, `family` is the group Holm corrects over
    (a pair is a family of its own), `base` and `aligned` are side texts."""

    name: str
    family: str
    base: str
    aligned: str


@dataclass(frozen=True)
class Case:
    """One expected gate case."""

    pair: str  # the comparison's name
    task: str
    extractor: str
    metric: str

    @property
    def id(self) -> str:
        return f"{self.pair}:{self.task}:{self.extractor}:{self.metric}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.pair, self.task, self.extractor, self.metric)


@dataclass
class Selection:
    """A checked run selection (see `select`). `pairs` are (name or None, base text, aligned text) as given;
    the gate names unnamed pairs once it knows its sides' labels (`name_comparisons`)."""

    options: GateOptions
    tasks: Mapping[str, TaskSpec]
    rules: dict[tuple[str, str, str], Rule]
    policy: GatePolicy
    pairs: list[tuple[str | None, str, str]]
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def side_texts(self) -> list[str]:
        """Every side text, once, in the order given."""
        return list(dict.fromkeys(text for _, base, aligned in self.pairs for text in (base, aligned)))

    def name_comparisons(self, labels: Mapping[str, str]) -> None:
        """Name the comparisons (an unnamed pair after its aligned side's label); GateUsageError for a bad or
        repeated name."""
        comparisons: list[Comparison] = []
        for name, base, aligned in self.pairs:
            name = name or labels[aligned]
            if not NAME.match(name):
                raise GateUsageError(f"--model-pair {base},{aligned}: pair name {name!r} must use letters, digits "
                                     "and ._@+- only; name it with NAME=BASE,ALIGNED")
            if any(c.name == name for c in comparisons):
                raise GateUsageError(f"two model pairs are named {name!r}; name them apart with "
                                     "--model-pair NAME=BASE,ALIGNED")
            comparisons.append(Comparison(name, name, base, aligned))
        self.comparisons = comparisons

    def comparison(self, name: str) -> Comparison:
        return next(c for c in self.comparisons if c.name == name)

    def cases(self) -> list[Case]:
        """The expected cases, in report order: comparison x task x extractor x metric."""
        o = self.options
        return [Case(c.name, t, e, m) for c in self.comparisons for t in o.tasks for e in o.extractors
                for m in o.metrics]


def split_names(text: str, known: Sequence[str], what: str, option: str) -> tuple[str, ...]:
    """A comma list of names, each checked against `known` (GateUsageError with a close-match suggestion)."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name or name in names:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GateUsageError(f"{option}: unknown {what} {name!r}{hint}; known: {', '.join(known)}")
        names.append(name)
    if not names:
        raise GateUsageError(f"{option} names no {what}")
    return tuple(names)


def parse_pair(text: str) -> tuple[str | None, str, str]:
    """(name or None, base text, aligned text) of `[NAME=]BASE,ALIGNED`."""
    named = _NAMED.match(text.strip())
    name, rest = (named["name"], named["rest"]) if named else (None, text.strip())
    parts = rest.split(",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise GateUsageError(
            f"--model-pair {text!r}: expected BASE,ALIGNED (two model specs separated by one comma), optionally "
            "NAME=BASE,ALIGNED, e.g. --model-pair "
            "smollm2=HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    return name, parts[0].strip(), parts[1].strip()


def select(options: GateOptions) -> Selection:
    """Check `options` (everything that needs no model, hub or data set); GateUsageError naming the problem."""
    from calib_checks.metrics import METRICS
    from calib_checks.records import EXTRACTORS
    from calib_checks.taskfiles import task_registry
    from calib_checks.thresholds import ThresholdsError, load_thresholds

    try:  # a task file's tasks are selectable like the built-in ones, in this run only
        tasks = task_registry(list(options.task_files))
    except CalibChecksError as exc:
        raise GateUsageError(str(exc)) from None
    options = replace(options, **{  # blanks and repeats dropped
        f"{what}s": split_names(",".join(names), known, what, f"--calib-{what}s")
        for what, names, known in (("task", options.tasks, tuple(tasks)), ("extractor", options.extractors,
                                   EXTRACTORS), ("metric", options.metrics, tuple(METRICS)))
    })
    if options.limit is not None and options.limit < 1:
        raise GateUsageError(f"--calib-limit must be a positive number of items, got {options.limit}")
    if options.seed < 0:
        raise GateUsageError(f"--calib-seed must be >= 0, got {options.seed}")
    if (options.device, options.dtype, options.attention) != ("auto", "auto", "auto"):
        from calib_checks.models import ModelLoadError, attention_order, resolve_device, resolve_dtype

        try:  # e.g. --calib-device cuda on a machine without one: a usage error before anything is loaded
            resolve_dtype(options.dtype, resolve_device(options.device))
            attention_order(options.device, options.attention)
        except ModelLoadError as exc:
            raise GateUsageError(f"--calib-device/--calib-dtype/--calib-attention: {exc}") from None
    try:
        thresholds = load_thresholds(options.thresholds, tasks)
        rules = {(t, e, m): thresholds.rule_for(t, e, m)
                 for t in options.tasks for e in options.extractors for m in options.metrics}
    except ThresholdsError as exc:
        raise GateUsageError(str(exc)) from None
    if not options.pairs:
        raise GateUsageError(
            "no --model-pair given: the gate compares a base model with its aligned sibling. Run e.g. "
            "pytest tests_models --model-pair HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct "
            "(repeatable; NAME=BASE,ALIGNED names the pair; docs/GATE.md)"
        )
    return Selection(options, tasks, rules, thresholds.policy, [parse_pair(text) for text in options.pairs])

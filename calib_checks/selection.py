"""What a gate run compares: its options, checked, and the cases they expand to (no model, no hub, no data).

`GateOptions` holds one field per `--calib-*` option (docs/GATE.md, "Options"). `select` checks them all (names
against the run's task registry, thresholds.toml, pair texts) and raises `GateUsageError` (the pytest gate's
exit status 4) for anything wrong, before a model or a data set is touched. The result, a `Selection`, holds
the run's task registry (built-in tasks and its task files: the process-wide registry is never changed), the
rule of every (task, extractor, metric), the [gate] policy and the side texts.

Comparisons: a pair ``[NAME=]BASE,ALIGNED`` is one `Comparison` of its base and aligned side, in a family of its
own (the family is what Holm's correction spans). A chain ``[NAME=]A,B,C[,...]`` (a model's checkpoints through
its alignment pipeline: base -> SFT -> DPO) is one family whose comparisons are every consecutive step,
``NAME.1-2`` (A -> B), ``NAME.2-3`` (B -> C), ..., and the whole chain ``NAME.1-n`` (A -> last), all judged on the
same items; a pair is a chain of two. `Case` is one expected gate case: a comparison x task x extractor x
metric.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from calib_checks.errors import CalibChecksError
from calib_checks.sampling import FIRST_LOOK

#: The task of the cases pooled over all of a comparison's tasks (calib_checks/pooled.py): a name no task may take.
POOLED_TASK = "pooled"

if TYPE_CHECKING:
    from calib_checks.tasks import TaskSpec
    from calib_checks.thresholds import GatePolicy, Rule

__all__ = ["DEFAULT_EXTRACTORS", "DEFAULT_METRICS", "DEFAULT_TASKS", "Case", "Comparison", "Family", "GateOptions",
           "GateUsageError", "Selection", "parse_family", "select", "split_names"]

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
    self_check: bool = True  # check each model load's scoring path against a plain reference (selfcheck.py)
    batch_size: int | Literal["auto"] = "auto"
    use_cache: bool = True
    allow_same_model: bool = False
    allow_partial: bool = False
    task_files: tuple[str | Path, ...] = ()  # TOML task files or folders of them (calib_checks/taskfiles.py)
    chains: tuple[str, ...] = ()  # `[NAME=]A,B,C[,...]` texts: checkpoint chains (module docstring)
    sequential: bool = True  # judge in looks and stop a family once its regression is certain (docs/GATE.md)
    first_look: int = FIRST_LOOK  # items per task at the first look; each later look doubles it, the last takes all


@dataclass(frozen=True)
class Comparison:
    """One base -> aligned comparison: `name` prefixes its case ids, `family` is the pair or chain it belongs to
    (the group Holm corrects over), `base` and `aligned` are side texts, `steps` the positions of base and
    aligned in the family's checkpoints (1-based: (1, 2) for a pair)."""

    name: str
    family: str
    base: str
    aligned: str
    steps: tuple[int, int] = (1, 2)


@dataclass(frozen=True)
class Family:
    """A pair or a chain as given: its name (None until named) and its checkpoints' side texts, in order."""

    name: str | None
    sides: tuple[str, ...]
    kind: str  # "pair" or "chain"


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
    """A checked run selection (see `select`). `families` are the pairs and chains as given; the gate names the
    unnamed ones once it knows its sides' labels (`name_comparisons`)."""

    options: GateOptions
    tasks: Mapping[str, TaskSpec]
    rules: dict[tuple[str, str, str], Rule]
    policy: GatePolicy
    families: list[Family]
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def side_texts(self) -> list[str]:
        """Every side text, once, in the order given."""
        return list(dict.fromkeys(text for family in self.families for text in family.sides))

    def name_comparisons(self, labels: Mapping[str, str]) -> None:
        """Name the families (an unnamed one after its last side's label) and their comparisons; GateUsageError
        for a bad or repeated name."""
        named: list[Family] = []
        comparisons: list[Comparison] = []
        for family in self.families:
            option = f"--model-{family.kind}"
            name = family.name or labels[family.sides[-1]]
            if not NAME.match(name):
                raise GateUsageError(f"{option} {','.join(family.sides)}: name {name!r} must use letters, digits "
                                     f"and ._@+- only; name it with {option} NAME=...")
            if any(f.name == name for f in named):
                raise GateUsageError(f"two pairs or chains are named {name!r}; name them apart with {option} NAME=...")
            named.append(replace(family, name=name))
            comparisons += _comparisons(name, family)
        clash = next((c.name for c in comparisons if sum(d.name == c.name for d in comparisons) > 1), None)
        if clash is not None:  # e.g. a pair named "dpo.1-2" next to a chain named "dpo"
            raise GateUsageError(f"two comparisons would be named {clash!r}; rename a pair or chain")
        self.families, self.comparisons = named, comparisons

    def comparison(self, name: str) -> Comparison:
        return next(c for c in self.comparisons if c.name == name)

    def chain_of(self, comparison: str) -> str | None:
        """The chain a comparison is a step of (its Holm family), None for a pair."""
        family = self.comparison(comparison).family
        return family if any(f.name == family and f.kind == "chain" for f in self.families) else None

    def cases(self) -> list[Case]:
        """The expected cases, in report order: per comparison its pooled cases first (task `pooled`: one per
        extractor x metric over all its tasks, the release's headline), then task x extractor x metric."""
        o = self.options
        return [Case(c.name, t, e, m) for c in self.comparisons for t in (POOLED_TASK, *o.tasks)
                for e in o.extractors for m in o.metrics if (t, e, m) in self.rules]

    def tasks_of(self, case: Case) -> tuple[str, ...]:
        """The tasks whose items a case is judged on: all selected tasks for a pooled case, else its own."""
        return tuple(self.options.tasks) if case.task == POOLED_TASK else (case.task,)


def _comparisons(name: str, family: Family) -> list[Comparison]:
    """A pair's one comparison, named after it; a chain's steps ``NAME.i-(i+1)`` and whole chain ``NAME.1-n``."""
    sides = family.sides
    if family.kind == "pair":
        return [Comparison(name, name, sides[0], sides[1])]
    steps = [Comparison(f"{name}.{i}-{i + 1}", name, sides[i - 1], sides[i], (i, i + 1)) for i in range(1, len(sides))]
    if len(sides) > 2:
        steps.append(Comparison(f"{name}.1-{len(sides)}", name, sides[0], sides[-1], (1, len(sides))))
    return steps


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


def parse_family(text: str, kind: str = "pair") -> Family:
    """The pair `[NAME=]BASE,ALIGNED` or the chain `[NAME=]A,B,C[,...]` a `--model-pair` / `--model-chain` text
    names (GateUsageError when it is not one)."""
    named = _NAMED.match(text.strip())
    name, rest = (named["name"], named["rest"]) if named else (None, text.strip())
    sides = tuple(part.strip() for part in rest.split(","))
    if kind == "pair" and (len(sides) != 2 or not all(sides)):
        raise GateUsageError(
            f"--model-pair {text!r}: expected BASE,ALIGNED (two model specs separated by one comma), optionally "
            "NAME=BASE,ALIGNED, e.g. --model-pair "
            "smollm2=HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    if kind == "chain" and (len(sides) < 2 or not all(sides)):
        raise GateUsageError(f"--model-chain {text!r}: expected two or more checkpoints in pipeline order separated "
                             "by commas, optionally NAME=..., e.g. --model-chain llama=base,sft,dpo")
    if kind == "chain" and len(set(sides)) != len(sides):
        raise GateUsageError(f"--model-chain {text!r}: a checkpoint appears twice; each step needs its own")
    return Family(name, sides, kind)


def _pooled_rules(options: GateOptions, rules: Mapping[tuple[str, str, str], Rule], policy: GatePolicy
                  ) -> dict[tuple[str, str, str], Rule]:
    """The rule of each pooled case (`thresholds.pooled_rule` of its tasks' rules): one per extractor x metric of
    `policy.pooled_metrics` gated on every selected task, when there are two tasks or more and the policy gives
    pooled cases a weight."""
    from calib_checks.thresholds import ThresholdsError, pooled_rule

    if len(options.tasks) < 2 or policy.pooled_weight <= 0:
        return {}
    out = {}
    for e in options.extractors:
        for m in (m for m in options.metrics if m in policy.pooled_metrics):
            per_task = [rules[(t, e, m)] for t in options.tasks]
            if all(r.gate for r in per_task):
                try:
                    out[(POOLED_TASK, e, m)] = pooled_rule(per_task)
                except ThresholdsError as exc:
                    raise GateUsageError(f"{options.thresholds}: {e} {m}: {exc}") from None
    return out


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
    if POOLED_TASK in tasks:
        raise GateUsageError(f"a task is named {POOLED_TASK!r}, the name of the cases pooled over all tasks; rename "
                             "it in its task file")
    options = replace(options, **{  # blanks and repeats dropped
        f"{what}s": split_names(",".join(names), known, what, f"--calib-{what}s")
        for what, names, known in (("task", options.tasks, tuple(tasks)), ("extractor", options.extractors,
                                   EXTRACTORS), ("metric", options.metrics, tuple(METRICS)))
    })
    if options.limit is not None and options.limit < 1:
        raise GateUsageError(f"--calib-limit must be a positive number of items, got {options.limit}")
    if options.seed < 0:
        raise GateUsageError(f"--calib-seed must be >= 0, got {options.seed}")
    if options.first_look < 1:
        raise GateUsageError(f"--calib-first-look must be a positive number of items, got {options.first_look}")
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
    rules.update(_pooled_rules(options, rules, thresholds.policy))
    if not options.pairs and not options.chains:
        raise GateUsageError(
            "no --model-pair given: the gate compares a base model with its aligned sibling. Run e.g. "
            "pytest tests_models --model-pair HuggingFaceTB/SmolLM2-135M,HuggingFaceTB/SmolLM2-135M-Instruct "
            "(repeatable; NAME=BASE,ALIGNED names the pair; --model-chain NAME=BASE,SFT,DPO gates a pipeline; "
            "docs/GATE.md)"
        )
    families = [parse_family(text, "pair") for text in options.pairs]
    families += [parse_family(text, "chain") for text in options.chains]
    return Selection(options, tasks, rules, thresholds.policy, families)

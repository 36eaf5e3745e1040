"""The gate's sequential judgement, written once: `Gate.judge`, the simulation (`simulation.judge_pair_sequential`)
and the recompute command (`recompute.recompute_run`) all run `judge_in_looks`.

A family (a pair, or all comparisons of a chain together) is judged at each of its looks on the items seen so far
(`sampling.look_sizes`: the first look's items, doubling, the last look every item); the family correction
(calib_checks/family.py: weighted graphical Holm, each case's share of alpha spent over the looks by an
O'Brien-Fleming-type function, so the last look keeps nearly all of it) decides which cases fail, from their
p-values at every look so far. A comparison with a failing case at a look ends there: its regression is certain,
and scoring more items would not change that. The others go on to the next look; at the last one every item is
judged. Whatever the looks, a family false-alarms with probability at most alpha. A comparison whose gated cases
all pass at a look stops there
too: each upper end is already within its margin (`_stop_reason`); this spends no false-alarm rate, as it never
fails anything, and its cost in power is measured by the simulation. The family keeps its size at every look:
the cases of comparisons that ended earlier take part with p = 1, so a chain's later looks are not corrected over
a smaller, data-chosen set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from calib_checks.family import correct_look
from calib_checks.spending import obf_spent
from calib_checks.verdicts import stopped_early

if TYPE_CHECKING:
    from calib_checks.thresholds import GatePolicy
    from calib_checks.verdicts import CaseResult

__all__ = ["Ending", "LookCase", "judge_in_looks", "spent"]

def spent(alpha: float, plan: Sequence[int], look: int) -> float:
    """The share of a family's false-alarm rate spent by the end of look `look` (0-based) of `plan` (items per
    task at each look): the O'Brien-Fleming-type function at the look's information fraction, alpha at the last
    (calib_checks/spending.py; each case spends its own share the same way: calib_checks/family.py)."""
    if look >= len(plan) - 1 or plan[-1] <= 0:
        return alpha
    return obf_spent(plan[look] / plan[-1], alpha)


class LookCase(Protocol):
    """What the loop needs of a case: the comparison it belongs to (`selection.Case` is one)."""

    @property
    def pair(self) -> str: ...


@dataclass(frozen=True)
class Ending:
    """Where one comparison's looks ended: its family, the items per task at each look (the last: every item),
    the look it stopped at (1-based), why, the false-alarm rate spent there and the items per task judged."""

    family: str
    looks: tuple[int, ...]
    stopped_at: int
    reason: str
    alpha: float
    items: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "looks": list(self.looks)}


def judge_in_looks(cases: Sequence[LookCase], family_of: Mapping[str, str], looks: Mapping[str, Sequence[int]],
                   judge: Callable[[LookCase, int], CaseResult], policy: GatePolicy, *,
                   prepare: Callable[[list[tuple[LookCase, int]]], None] | None = None,
                   ended: Callable[[set[str]], None] | None = None) -> tuple[dict[Any, CaseResult], dict[str, Ending]]:
    """Every case judged in its family's looks (module docstring); returns (case -> final result, comparison ->
    `Ending`).

    `family_of`: comparison -> family; `looks[family]`: items per task at each look (one look: judge every item
    at once); `judge(case, n)`: the case judged alone on the first `n` items of the seeded order
    (`sampling.sample_ids`). `prepare(open)` runs before each look with the (case, n) pairs it will judge (the
    gate scores them there, its xdist share first); `ended(comparisons)` after each look with every comparison
    ended so far (the gate frees models no open comparison needs).
    """
    by_family: dict[str, list[LookCase]] = {}
    for case in cases:
        by_family.setdefault(family_of[case.pair], []).append(case)
    endings: dict[str, Ending] = {}
    final: dict[Any, CaseResult] = {}
    rows: dict[str, list[list[CaseResult]]] = {family: [] for family in by_family}  # every look's raw results
    for j in range(max((len(looks[f]) for f in by_family), default=0)):
        open_cases = {f: [c for c in members if c.pair not in endings]
                      for f, members in by_family.items() if j < len(looks[f])}
        if prepare is not None:
            prepare([(c, looks[f][j]) for f, members in open_cases.items() for c in members])
        for family, members in open_cases.items():
            plan = tuple(looks[family])
            now = {c: judge(c, plan[j]) for c in members}
            # Comparisons that ended earlier keep their place in the family with p = 1 from then on.
            rows[family].append([now[c] if c in now else replace(final[c], p_value=1.0) for c in by_family[family]])
            corrected = dict(zip(by_family[family], correct_look(rows[family], policy, plan)))
            for comparison in dict.fromkeys(c.pair for c in members):
                mine = [(c, corrected[c]) for c in members if c.pair == comparison]
                reason = _stop_reason([r for _, r in mine], j, len(plan))
                if reason is None:
                    continue
                endings[comparison] = Ending(family, plan, j + 1, reason, spent(policy.alpha, plan, j), plan[j])
                for case, result in mine:
                    final[case] = result if j == len(plan) - 1 else stopped_early(result, reason)
        if ended is not None:
            ended(set(endings))
    return final, endings


def _stop_reason(results: Sequence[CaseResult], look: int, n_looks: int) -> str | None:
    """Why a comparison stops at `look` (0-based), or None when it goes on: a failing case (its regression is
    certain), every gated case passing (each upper end within its margin: more items would only narrow
    intervals that already clear it), or the last look."""
    where = f"look {look + 1} of {n_looks}"
    if any(r.verdict == "fail" for r in results):
        return f"a case failed at {where}: the regression is certain"
    if look == n_looks - 1:
        return f"every item judged ({where})"
    gated = [r for r in results if r.verdict != "not-gated"]
    if gated and all(r.verdict == "pass" for r in gated):
        return f"every gated case passed at {where}: each worsening is shown to be within its margin"
    return None

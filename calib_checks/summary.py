"""The CI summary: `results.md`, a page a person reads in the pull request, rendered from results.json.

Every run writes `reports/<run-id>/results.md` beside results.json: the verdict and its reason, one compact table
per pair or chain (a row per comparison, a column per task, each cell the worst verdict of that task's gated
cases and how many of them failed), per comparison where its sequential looks ended and why, one sentence per chain naming the step where calibration got worse, and the
failing and erroring cases, one line each (at most `MAX_LISTED` of each; the rest are in results.json and the
report). When `GITHUB_STEP_SUMMARY` is set (GitHub Actions), the same text is appended to that file, which the
job's summary page shows; docs/GATE.md ("CI") posts it as a pull-request comment.

It is presentation, like report.py: it reads the run directory and never writes results.json.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calib_checks.fileio import atomic_write_text
from calib_checks.selection import POOLED_TASK

SUMMARY_FILE = "results.md"
MAX_LISTED = 15
# Worst first: a cell shows the worst verdict among its cases.
_SEVERITY = ("fail", "error", "inconclusive", "pass", "not-gated")
_CELL = {"fail": "**FAIL**", "error": "**ERROR**", "inconclusive": "inconclusive", "pass": "pass",
         "not-gated": "report only"}


# Markdown that names in results.md (folder and hub names, item ids in messages) could use on a pull-request page:
# links and images ([...](...)), emphasis and code (* _ ` ~), table cells (|); HTML is turned into entities, and
# an @ gets a word joiner after it so that "@org/team" in a label mentions nobody.
_MD_ESCAPED = str.maketrans({c: "\\" + c for c in "\\`*_[]~|"} | {"&": "&amp;", "<": "&lt;", ">": "&gt;",
                                                                 "@": "@\u2060", "\n": " ", "\r": " "})


# GitHub-flavoured markdown also turns bare text into links (the GFM spec's "autolinks (extension)"): "http://" or
# "https://" and a domain, "www." and a domain, an e-mail address. Each is recognised by those exact characters,
# so a word joiner (U+2060: invisible, and not whitespace, so no autolink can start after it) inside them leaves
# plain text: after the colon of "://" (whatever the scheme and its case) and before the dot of "www." (any case).
# The joiner after every @ (`_MD_ESCAPED`) already breaks an e-mail address's domain. Code spans (`_code`) need
# none of this: nothing inside one is ever a link.
_SCHEME = re.compile(r":(?=//)")
_WWW = re.compile(r"(?i)(?<=www)\.")


def _md(text: Any) -> str:
    """`text` safe as plain text inside a markdown table cell or line (`_MD_ESCAPED`), with no autolink in it."""
    escaped = str(text).translate(_MD_ESCAPED)
    return _WWW.sub("\u2060.", _SCHEME.sub(":\u2060", escaped))


def _code(text: Any) -> str:
    """`text` as inline code (nothing inside is markdown; a backtick would end it, so it becomes a quote)."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def _headline(case: Mapping[str, Any]) -> str:
    from calib_checks.verdicts import CaseResult

    return CaseResult.from_json(case).headline()


def _cell(cases: Sequence[Mapping[str, Any]]) -> str:
    if not cases:
        return "-"
    worst = min((c["verdict"] for c in cases), key=_SEVERITY.index)
    failed = sum(c["verdict"] == "fail" for c in cases)
    gated = sum(c["verdict"] != "not-gated" for c in cases)
    return _CELL[worst] + (f" {failed}/{gated}" if worst == "fail" else "")


def whole_chain(comparisons: Mapping[str, Mapping[str, Any]]) -> str:
    """The name of a chain's first-to-last comparison among its `comparisons` (name -> pair record with `steps`)."""
    return max(comparisons, key=lambda n: comparisons[n]["steps"][1] - comparisons[n]["steps"][0])


def chain_finding(chain: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]],
                  cases: Sequence[Mapping[str, Any]]) -> str:
    """One sentence naming the step(s) of a chain where calibration got worse (the report says it too)."""
    comparisons = {p["name"]: p for p in pairs if p["name"] in chain["comparisons"]}
    failing = {name: [c for c in cases if c["pair"] == name and c["verdict"] == "fail"] for name in comparisons}
    whole = whole_chain(comparisons)
    steps = [n for n in comparisons if n != whole or len(comparisons) == 1]
    broke = [n for n in steps if failing[n]]
    if broke:
        parts = []
        for name in broke:
            p = comparisons[name]
            metrics = sorted({f"{c['extractor']} {c['metric']}" for c in failing[name]})
            shown = ", ".join(metrics[:3]) + (f" and {len(metrics) - 3} more" if len(metrics) > 3 else "")
            parts.append(f"step {p['steps'][0]} → {p['steps'][1]} ({p['base']} → {p['aligned']}: "
                         f"{len(failing[name])} case(s) failed, {shown})")
        return f"Chain {chain['name']}: calibration got worse at " + "; and at ".join(parts) + "."
    if failing[whole]:
        return (f"Chain {chain['name']}: no single step is shown worse, but the whole chain is "
                f"({len(failing[whole])} case(s) of {whole} failed): the worsening builds up over the steps.")
    unjudged = sum(c["verdict"] == "error" for c in cases if c["pair"] in comparisons)
    if unjudged:
        return (f"Chain {chain['name']}: no step is shown to make calibration worse, but {unjudged} case(s) could "
                "not be judged (errors), so the chain is not shown fine either.")
    return f"Chain {chain['name']}: no step is shown to make calibration worse."


def sequence_line(sequence: Mapping[str, Any] | None) -> str:
    """Where a comparison's sequential looks ended, on how many items and why (`run.sequential.comparisons[name]`
    in results.json); the terminal, results.md, the report and the demo print this one sentence."""
    if not sequence:
        return "no record of its looks (it was not judged)"
    looks = sequence["looks"]
    last = sequence["stopped_at"] >= len(looks)
    items = f"every item, at most {sequence['items']} per task" if last else f"{sequence['items']} items per task"
    return f"ended at look {sequence['stopped_at']} of {len(looks)} ({items}): {sequence['reason']}"


def render_summary(results: Mapping[str, Any]) -> str:
    """The markdown text of a run's summary (module docstring)."""
    cases = list(results.get("cases", []))
    pairs = list(results.get("pairs", []))
    chains = list(results.get("chains", []))
    tasks = list((results.get("run", {}).get("selection") or {}).get("tasks") or
                 dict.fromkeys(c["task"] for c in cases))
    if any(c["task"] == POOLED_TASK for c in cases):  # the pooled cases, over every task: the headline, first
        tasks = [POOLED_TASK, *(t for t in tasks if t != POOLED_TASK)]
    lines = [f"## calib-checks gate: {results['verdict'].upper()}", "", _md(results.get("verdict_reason", "")), ""]
    families: dict[str, list[Mapping[str, Any]]] = {}
    for pair in pairs:
        families.setdefault(pair.get("family", pair["name"]), []).append(pair)
    for family, members in families.items():
        chain = next((c for c in chains if c["name"] == family), None)
        what = f"chain {_md(family)}: " + " → ".join(map(_md, chain["checkpoints"])) if chain else \
            f"pair {_md(family)}: {_md(members[0]['base'])} → {_md(members[0]['aligned'])}"
        lines += [f"**{what}**", "", "| comparison | " + " | ".join(map(_md, tasks)) + " |",
                  "|---|" + "---|" * len(tasks)]
        for pair in members:
            row = [_cell([c for c in cases if c["pair"] == pair["name"] and c["task"] == t]) for t in tasks]
            lines.append(f"| {_md(pair['name'])} ({_md(pair['base'])} → {_md(pair['aligned'])}) | "
                         + " | ".join(row) + " |")
        sequences = (results.get("run", {}).get("sequential") or {}).get("comparisons") or {}
        lines.append("")
        lines += [f"- {_code(pair['name'])} {_md(sequence_line(sequences.get(pair['name'])))}" for pair in members]
        if chain:
            lines += ["", _md(chain_finding(chain, members, cases))]
        lines.append("")
    for verdict, title in (("fail", "Failing cases"), ("error", "Cases that could not be judged")):
        chosen = [c for c in cases if c["verdict"] == verdict]
        if chosen:
            lines += [f"**{title} ({len(chosen)})**", ""]
            lines += [f"- {_code(c['pair'])}: {_md(_headline(c))}" for c in chosen[:MAX_LISTED]]
            if len(chosen) > MAX_LISTED:
                lines.append(f"- ... and {len(chosen) - MAX_LISTED} more (results.json, report.html)")
            lines.append("")
    lines.append("Full report: `report.html` and `results.json` in the run directory "
                 f"{_code(results.get('run_id', ''))}.")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: str | Path) -> Path:
    """Write `results.md` into the run directory and append it to `$GITHUB_STEP_SUMMARY` when that is set."""
    from calib_checks.results import load_results

    run_dir = Path(run_dir)
    text = render_summary(load_results(run_dir))
    path = atomic_write_text(run_dir / SUMMARY_FILE, text)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return path

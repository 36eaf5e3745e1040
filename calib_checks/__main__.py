"""Command line: `python -m calib_checks {score,report,demo,simulate,plan,recompute} ...` (also installed as `calib-checks`).

Each subcommand lives in the module of its concept, which provides `add_cli_arguments(parser)` and
`run_cli(args) -> int`; its one-line help is here. Only the chosen module is imported, so `report` never loads
torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from calib_checks.errors import CalibChecksError

SUBCOMMANDS = {
    "score": ("calib_checks.scorecli", "score one model on one or more tasks and write its per-item records"),
    "report": ("calib_checks.report", "re-render report.html from a saved run, without inference"),
    "demo": ("calib_checks.demo", "the embedded default: SmolLM2 demo pairs on all five tasks"),
    "simulate": ("calib_checks.simulation", "reprint the measured false-alarm and power figures of the decision rule"),
    "plan": ("calib_checks.planning", "what one model's items can detect, and the items a worsening or a pass needs"),
    "recompute": ("calib_checks.recompute", "judge every verdict of a saved run again from its run directory alone"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="calib-checks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage or the error for an unknown subcommand
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    command = argparse.ArgumentParser(prog=f"calib-checks {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
    module.add_cli_arguments(command)
    args = command.parse_args(argv[1:])
    try:
        return int(module.run_cli(args))
    except CalibChecksError as exc:
        print(f"calib-checks {argv[0]}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Live progress lines: redrawn on a terminal, bounded plain lines in a CI log, one line for a cache hit."""

from __future__ import annotations

from calib_checks.progress import LOG_INTERVAL_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(tty: bool, quiet: bool = False) -> list[tuple[str, bool]]:
    lines: list[tuple[str, bool]] = []
    clock = Clock()
    progress = Progress(lambda text, redraw: lines.append((text, redraw)), tty=tty, quiet=quiet, clock=clock)
    progress.start("base on arc_easy", 1000)
    for done in range(1, 1000):  # one item each 1/8 s (exact in binary): 125 s in all
        clock.now += 0.125
        progress.update(done)
    clock.now += 0.125
    progress.update(1000)
    progress.finish("scored")
    return lines


def test_a_ci_log_gets_plain_lines_at_most_every_30_seconds() -> None:
    lines = _run(tty=False)
    assert all(not redraw and "\r" not in text for text, redraw in lines)
    middle = lines[1:-1]
    assert len(middle) == int(125 // LOG_INTERVAL_S)  # 125 s of scoring: a line at 30, 60, 90 and 120 s
    assert lines[0][0] == "calib-checks: base on arc_easy: scoring 1000 items"
    first = middle[0][0]
    assert first == "calib-checks: base on arc_easy: 240/1000 items, 8.0 items/s, ETA 1m35s"
    assert lines[-1][0] == "calib-checks: base on arc_easy: 1000 items scored in 2m05s"


def test_a_terminal_gets_a_line_redrawn_in_place_and_a_final_line() -> None:
    lines = _run(tty=True)
    redrawn = [text for text, redraw in lines if redraw]
    assert 240 <= len(redrawn) <= 250  # at most every half second over 125 s
    assert lines[-1] == ("calib-checks: base on arc_easy: 1000 items scored in 2m05s", False)


def test_quiet_keeps_only_the_final_line_and_a_cache_hit_says_so() -> None:
    assert _run(tty=True, quiet=True) == [("calib-checks: base on arc_easy: 1000 items scored in 2m05s", False)]
    lines: list[tuple[str, bool]] = []
    Progress(lambda text, redraw: lines.append((text, redraw)), tty=False).cached("base on piqa", 50,
                                                                                 "the score cache")
    assert lines == [("calib-checks: base on piqa: 50 items from the score cache, nothing to score", False)]

"""Live progress of the gate's scoring: what it is doing during the minutes or hours a model scores.

One `Progress` per process writes lines through a `write(text, redraw)` callable (the pytest plugin passes one
that writes to the terminal with pytest's capture suspended, so the lines show under pytest and under
xdist). Two modes:

- terminal (`tty=True`): one line per (model, task) redrawn in place (carriage return) at most every
  `TTY_INTERVAL_S` seconds: items done out of items, items/s and ETA; then a final line with the time taken;
- log (`tty=False`, CI): plain lines, at most one per `LOG_INTERVAL_S` seconds per scoring job, no carriage
  returns; a start line and a final line always.

A cache hit or a scores file says so in one line ("cached"). `quiet` (pytest -q) keeps only the final line
of each job. Nothing here changes a number: it only reads counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 30.0

Write = Callable[[str, bool], None]  # (text, redraw: True = replace the current line in place)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Progress:
    """Progress lines for scoring jobs; `clock` is injectable so tests can step time."""

    write: Write
    tty: bool
    quiet: bool = False
    prefix: str = "calib-checks"
    clock: Callable[[], float] = time.monotonic
    _job: str = ""
    _total: int = 0
    _started: float = 0.0
    _last: float = field(default=float("-inf"))

    def start(self, job: str, total: int) -> None:
        """A scoring job begins: `job` names the model and task, `total` counts its items."""
        self._job, self._total = job, total
        self._started = self._last = self.clock()
        if not self.quiet:
            self.write(f"{self.prefix}: {job}: scoring {total} items", self.tty)

    def update(self, done: int) -> None:
        """`done` of the job's items are scored; draws a line when the mode's interval has passed."""
        now = self.clock()
        if self.quiet or now - self._last < (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S) or done >= self._total:
            return
        self._last = now
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self._total - done) / rate if rate > 0 else float("nan")
        eta_text = _duration(eta) if rate > 0 else "?"
        self.write(f"{self.prefix}: {self._job}: {done}/{self._total} items, {rate:.1f} items/s, ETA {eta_text}",
                   self.tty)

    def finish(self, status: str) -> None:
        """The job is done (`status`: e.g. "computed", "cache hit"): one final line, never redrawn over."""
        took = _duration(self.clock() - self._started)
        self.write(f"{self.prefix}: {self._job}: {self._total} items {status} in {took}", False)

    def cached(self, job: str, total: int, source: str) -> None:
        """A job that needed no scoring (a cache hit, a scores file): one line."""
        self.write(f"{self.prefix}: {job}: {total} items from {source}, nothing to score", False)

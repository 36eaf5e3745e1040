"""The sides of one gate run: every side text opened once as a `Source`, with a distinct label, or why not.

A side that cannot be opened (a missing folder, a malformed spec) is kept with its error: its cases error one
line each and the other pairs still run. Identities are asked once per process and only when needed (they may
hash weights or call the hub), which the gate does on the controller only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from calib_checks.errors import CalibChecksError
from calib_checks.sources import Source, SourceContext, distinct_labels, safe_label
from calib_checks.sources.registry import open_source


@dataclass
class Side:
    """One side text: its source, or the one-line reason it has none; its label (distinct within the run)."""

    text: str
    source: Source | None
    error: str | None
    label: str


class Sides:
    """The run's sides, by text (see the module docstring)."""

    def __init__(self, texts: Iterable[str], context: SourceContext) -> None:
        self._sides: dict[str, Side] = {}
        for text in dict.fromkeys(texts):
            try:
                source: Source | None = open_source(text, context)
                error = None
            except CalibChecksError as exc:
                source, error = None, str(exc)
            self._sides[text] = Side(text, source, error, "")
        opened = [s.source for s in self._sides.values() if s.source is not None]
        labels = distinct_labels(opened)
        used = set(labels.values())
        for side in self._sides.values():
            if side.source is not None:
                side.label = labels[side.text]
            else:  # an unusable side still needs a name in messages and results.json
                label = base = safe_label(side.text.rsplit("/", 1)[-1])
                number = 1
                while label in used:
                    number += 1
                    label = f"{base}-{number}"
                side.label = label
                used.add(label)
        self._identities: dict[str, dict[str, Any] | None] = {}

    def __getitem__(self, text: str) -> Side:
        return self._sides[text]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._sides.values())

    @property
    def labels(self) -> dict[str, str]:
        return {text: side.label for text, side in self._sides.items()}

    def identity(self, text: str) -> dict[str, Any] | None:
        """The side's identity (once per process), None when it has none; a failure becomes the side's error."""
        side = self._sides[text]
        if text not in self._identities:
            identity = None
            if side.source is not None:
                try:
                    identity = side.source.identity()
                except CalibChecksError as exc:
                    side.error = str(exc)
            self._identities[text] = identity
        return self._identities[text]

    def describe(self, text: str, identity: Mapping[str, Any] | None = None) -> str:
        """One phrase naming exactly what the side is (commit, content hash), for messages and the report."""
        side = self._sides[text]
        identity = identity if identity is not None else self._identities.get(text)
        if side.source is None or identity is None:
            return side.text
        return side.source.describe(identity)

    def same_checkpoint(self, a: str, b: str) -> bool:
        """Whether two sides are one checkpoint: equal identities but for where the files lie (a copy of the
        base's weights in another folder is still the base)."""
        def content(identity: Mapping[str, Any] | None) -> dict[str, Any] | None:
            return None if identity is None else {k: v for k, v in identity.items() if k not in ("name", "source")}

        first = content(self.identity(a))
        return first is not None and first == content(self.identity(b))

    def close(self, text: str) -> None:
        source = self._sides[text].source
        if source is not None:
            source.close()

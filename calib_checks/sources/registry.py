"""The registry of score sources: which class opens a side's text, by its prefix.

The registry (`registry()`): the built-in sources, `BUILTIN` (prefix -> "module:Class"), plus every entry point
of the group ``calib_checks.sources`` that installed packages declare, the way pytest finds plugins; the entry
point's name is the prefix without its colon::

    # a third party's pyproject.toml: sides written vllm:...
    [project.entry-points."calib_checks.sources"]
    vllm = "my_package.vllm_source:VllmSource"

A text with no registered prefix is a checkpoint (`sources.checkpoint`). Built-in sources are loaded by name,
as entry points are, so a run imports only the sources its sides name.

Sources that compute their scores from a deterministic model (`Source.cacheable`) are wrapped in
`sources.cached.CachedSource` by `open_source`, which gives them the score cache: records are stored per item and
reused by any later run that asks for the same items of the same source.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

from calib_checks.sources import Source, SourceContext, SourceError
from calib_checks.sources.cached import CachedSource

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "open_source", "registry"]

#: Built-in sources by prefix: "module:Class". A new in-tree source is one line here.
BUILTIN: dict[str, str] = {
    "scores:": "calib_checks.sources.scorefolder:ScoreFolderSource",
    "lm-eval:": "calib_checks.sources.lmeval:LmEvalSource",
}
#: The entry-point group through which installed packages register sources (name = the prefix without ':').
ENTRY_POINT_GROUP = "calib_checks.sources"
_CHECKPOINT = "calib_checks.sources.checkpoint:CheckpointSource"
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def _load(target: str, where: str) -> type[Source]:
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"score source {target!r} ({where}) cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise SourceError(f"score source {target!r} ({where}) is not a calib_checks.sources.Source subclass")
    return cls


def registry() -> dict[str, str]:
    """Prefix -> "module:Class" of every registered source: `BUILTIN`, then the ``calib_checks.sources`` entry
    points of installed packages (which cannot replace a built-in prefix)."""
    found = dict(BUILTIN)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _NAME.match(entry.name):
            raise SourceError(f"entry point {entry.name!r} of group {ENTRY_POINT_GROUP} ({entry.value}) is not a "
                              "prefix name like 'vllm' (lower-case letters, digits and '-'; sides are then vllm:...)")
        prefix = f"{entry.name}:"
        if prefix in BUILTIN:
            raise SourceError(f"entry point {entry.value!r} claims the built-in prefix {prefix!r}; rename it")
        found[prefix] = entry.value
    return found


def open_source(text: str, context: SourceContext) -> Source:
    """The source a side's text names: the registered prefix it starts with (the longest), else a checkpoint.

    Raises `SourceError` (or the source's own `CalibChecksError`) when the text cannot be opened.
    """
    prefixes = registry()
    prefix = max((p for p in prefixes if text.startswith(p)), key=len, default=None)
    cls = _load(prefixes[prefix], f"prefix {prefix}") if prefix else _load(_CHECKPOINT, "checkpoints")
    source = cls(text, context)
    if context.cache is not None and source.cacheable:
        return CachedSource(source, context.cache)
    return source

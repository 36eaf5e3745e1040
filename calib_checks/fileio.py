"""Files the project writes and reads back: atomic writes, canonical JSON, JSON-lines, TOML.

Nothing lost: every file is written to a unique temporary name in its final folder, flushed to disk and
renamed with `os.replace`, so a reader (another xdist worker, a later run) sees the old file or the whole new
one, never a partial write, and a killed run leaves at most a stray `.tmp` that nothing trusts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from calib_checks.errors import CalibChecksError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pyproject.toml installs tomli there
    import tomli as tomllib  # type: ignore[no-redef]

#: The TOML parser's error (tomllib's on Python 3.11+, tomli's on 3.10): thresholds.toml and task files.
TOMLDecodeError = tomllib.TOMLDecodeError


def parse_toml(text: str) -> dict[str, Any]:
    """Parse a TOML document (tomllib on Python 3.11+, tomli on 3.10); raises `TOMLDecodeError`."""
    return tomllib.loads(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`; return `path`.

    The file is readable by others (0644: reports are artifacts a team and CI must read); the temporary file
    is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text with "\\n" line ends."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: equal inputs give equal bytes (for hashing)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def read_jsonl(path: str | Path, error: type[CalibChecksError], what: str) -> list[dict]:
    """Read a JSON-lines file (blank lines skipped); a bad line raises `error` naming `what`, file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise error(f"{what}: {path}:{number} is not valid JSON ({exc})") from None
    return rows

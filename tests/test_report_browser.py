"""Open the report in headless Chromium: it renders (a real screenshot) and the injected script never runs.

Needs Debian's `chromium` (or `chromium-browser`) on PATH; `make test` installs it where it can
(scripts/ensure-chromium.sh). Where it is absent this test skips and prints why.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.test_report import HOSTILE_SCRIPT, build_run

_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (Debian's `chromium`; `make test` installs it where it can)"
        print(f"SKIP test_report_browser: {reason}")
        pytest.skip(reason)
    return path


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_report_renders_in_chromium_and_the_injected_script_does_not_run(chromium: str, tmp_path: Path) -> None:
    writer = build_run(tmp_path / "reports", "20260103T000000Z-b10b10")
    url = (writer.run_dir / "report.html").resolve().as_uri()

    shot = tmp_path / "shot.png"
    done = _run(chromium, tmp_path / "profile-1", f"--screenshot={shot}", "--window-size=1400,3000", url)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (1400, 3000)
    assert len(png) > 100_000, "the screenshot is nearly empty: the page did not render"

    done = _run(chromium, tmp_path / "profile-2", "--dump-dom", url)
    dom = done.stdout
    assert done.returncode == 0 and "</html>" in dom, done.stderr[-2000:]
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("REGRESSION") and "PWNED" not in title  # the injected script did not run
    assert "<script" not in dom  # no script element was created from the data
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom  # it is shown as text instead
    assert "&lt;/svg&gt;&lt;b&gt;bold&lt;/b&gt;" in dom
    assert dom.count("<svg") == dom.count("</svg>") > 0  # no chart was cut short by a data string
    assert HOSTILE_SCRIPT not in dom

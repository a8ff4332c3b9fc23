"""The examples run as users would run them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_embed_example_serves_through_an_embedded_proxy() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "progress: demo: all targets healthy" in lines
    assert any(line.startswith("progress: demo") and "running" in line for line in lines), lines
    assert lines[-1].startswith("HTTP/1.1 200 OK | hello from the app")


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_session_example_runs_a_real_session() -> None:
    result = subprocess.run(
        ["bash", str(EXAMPLES / "socat-session.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "OK deployed web" in lines
    assert "hello from the app" in lines
    assert "ERR target failed to become healthy within configured timeout (2s)" in lines
    oks = [line for line in lines if line.startswith("OK ")]
    assert oks == ["OK deployed web", "OK paused web", "OK resumed web"]
    assert any(
        line.startswith("  web ") and line.split()[-2:] == ["running", "no"] for line in lines
    )
    # Every answer line is framed: two spaces before the final OK/ERR line.
    assert all(line.startswith(("  ", "OK", "ERR", "$ ", "hello", "(")) for line in lines if line)

"""The examples run as users would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

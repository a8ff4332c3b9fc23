"""protocol.md is normative: its port-independent transcripts are replayed against a proxy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tests.helpers import control, start_proxy

PROTOCOL_MD = Path(__file__).parents[2] / "protocol.md"
REPLAYED = ("errors keep the connection open", "help and version")


def transcript(heading: str) -> list[tuple[str, list[str]]]:
    """The ``> command`` lines of the section's code block, each with the answer lines after it."""
    text = PROTOCOL_MD.read_text()
    section = text.split(f"### {heading}\n", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block is not None, heading
    exchanges: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("> "):
            exchanges.append((line[2:], []))
        else:
            exchanges[-1][1].append(line)
    return exchanges


@pytest.mark.parametrize("heading", REPLAYED)
async def test_transcript_matches_the_proxy(
    heading: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    await start_proxy(nursery, tmp_path)
    exchanges = transcript(heading)
    answers = await control(tmp_path / "kproxy.sock", *(command for command, _ in exchanges))
    expected = [line for _, lines in exchanges for line in lines]
    assert [a.rstrip() for a in answers] == [e.rstrip() for e in expected]

"""README's command reference is the parser's flag table, rendered: it cannot drift."""

from __future__ import annotations

from pathlib import Path

from kproxy.core.command_parser import COMMANDS
from kproxy.core.help import END_MARKER, START_MARKER, markdown_reference

README = Path(__file__).parents[1] / "README.md"


def test_readme_carries_the_generated_reference() -> None:
    text = README.read_text()
    start = text.index(START_MARKER)
    end = text.index(END_MARKER) + len(END_MARKER)
    assert text[start:end] == markdown_reference(), (
        "README.md's reference is stale: replace the block with `kproxy help --markdown`"
    )


def test_reference_names_every_command_and_flag() -> None:
    reference = markdown_reference()
    for spec in COMMANDS.values():
        assert f"#### `{spec.name}" in reference
        for flag in spec.flags:
            assert f"`--{flag.name}" in reference
    assert "*not supported yet: refused by name*" in reference  # e.g. --tls

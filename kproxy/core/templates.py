"""Error page templates: the subset of Go's html/template that Kamal users write.

kamal-proxy renders ``--error-pages`` files with Go's html/template
(internal/server/error_page_middleware.go), and its own 503 page uses exactly this much::

    {{ if .Message }}<p>{{ .Message }}</p>{{ else }}<p>Back soon.</p>{{ end }}

Supported actions, with optional whitespace inside the braces:

- ``{{ .Message }}``: the message, HTML-escaped (``html.escape``, quotes included).
- ``{{ if .Message }}`` … ``{{ else }}`` … ``{{ end }}``: the ``else`` branch is optional and
  blocks nest. The condition holds when the message is not empty, as in Go.
- Go's trim markers: ``{{- `` drops the whitespace (space, tab, CR, LF) before the action,
  `` -}}`` the whitespace after it. As in Go, the marker needs whitespace beside the dash.

Anything else between ``{{`` and ``}}`` is a parse error that names the action, so a template
written for a richer engine fails the deploy instead of rendering half-way. Templates are
trusted (they come from the operator's directory); only the message is escaped. It is escaped
for HTML text and quoted attribute values, the places a message belongs: unlike html/template,
there is no context analysis, so it must not be put in a script, a style or an unquoted
attribute.
"""

from __future__ import annotations

import html
from typing import Final, TypeAlias

import attrs

# Go's text/template trims exactly these (spaceChars in text/template/parse/lex.go).
_SPACE: Final = " \t\r\n"
_SUPPORTED: Final = "{{ .Message }}, {{ if .Message }}, {{ else }} and {{ end }}"


@attrs.frozen
class Text:
    text: str


@attrs.frozen
class Message:
    """``{{ .Message }}``."""


@attrs.frozen
class If:
    """``{{ if .Message }}then{{ else }}otherwise{{ end }}``."""

    then: tuple[Node, ...]
    otherwise: tuple[Node, ...] = ()


Node: TypeAlias = Text | Message | If


@attrs.frozen
class Template:
    """A parsed template; render it with :func:`render`."""

    nodes: tuple[Node, ...]

    @property
    def uses_message(self) -> bool:
        """Whether the message can change the output (any ``.Message`` or ``if``)."""
        return any(not isinstance(node, Text) for node in self.nodes)


@attrs.define
class _OpenIf:
    """An ``{{ if }}`` whose ``{{ end }}`` has not been seen yet."""

    offset: int  # where its action starts, for error messages
    then: list[Node] = attrs.field(factory=list)
    otherwise: list[Node] | None = None
    else_offset: int = -1

    @property
    def current(self) -> list[Node]:
        return self.then if self.otherwise is None else self.otherwise


def parse(text: str) -> Template:
    """Parse a template.

    Args:
      text: the template source.

    Returns:
      The template, ready for :func:`render`.

    Raises:
      ValueError: ``"line L, column C: <problem>; expected <what>"``, the position (1-based,
        columns in characters) being where the offending action starts.
    """
    root: list[Node] = []
    open_ifs: list[_OpenIf] = []
    out = root
    pos = 0
    trim_next = False  # the previous action ended with " -}}"
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        if start < 0:
            _add_text(out, chunk)
            break
        end = text.find("}}", start + 2)
        if end < 0:
            raise _error(text, start, "unclosed action; expected '}}' to end it")
        inner = text[start + 2 : end]
        if len(inner) >= 2 and inner[0] == "-" and inner[1] in _SPACE:
            chunk = chunk.rstrip(_SPACE)
            inner = inner[1:]
        trim_next = len(inner) >= 2 and inner[-1] == "-" and inner[-2] in _SPACE
        if trim_next:
            inner = inner[:-1]
        _add_text(out, chunk)
        pos = end + 2
        words = inner.split()
        if words == [".Message"]:
            out.append(Message())
        elif words == ["if", ".Message"]:
            open_ifs.append(_OpenIf(start))
            out = open_ifs[-1].current
        elif words == ["else"]:
            if not open_ifs:
                raise _error(text, start, "{{ else }} without an {{ if .Message }} before it")
            block = open_ifs[-1]
            if block.otherwise is not None:
                raise _error(
                    text,
                    start,
                    f"a second {{{{ else }}}} for the {{{{ if }}}} at "
                    f"{_position(text, block.offset)}; expected {{{{ end }}}}",
                )
            block.otherwise = []
            out = block.otherwise
        elif words == ["end"]:
            if not open_ifs:
                raise _error(text, start, "{{ end }} without an {{ if .Message }} before it")
            block = open_ifs.pop()
            out = open_ifs[-1].current if open_ifs else root
            out.append(If(tuple(block.then), tuple(block.otherwise or ())))
        else:
            raise _error(text, start, _unsupported(inner, words))
    if open_ifs:
        raise _error(
            text,
            open_ifs[-1].offset,
            "{{ if .Message }} is never closed; expected {{ end }} before the end of the file",
        )
    return Template(tuple(root))


def render(template: Template, message: str) -> str:
    """Render ``template`` with ``message`` (plain text; it is HTML-escaped).

    Returns:
      The page as text; placeholders inside the message are never expanded.
    """
    parts: list[str] = []
    _render(template.nodes, message, html.escape(message), parts)
    return "".join(parts)


def _render(nodes: tuple[Node, ...], message: str, escaped: str, parts: list[str]) -> None:
    for node in nodes:
        if isinstance(node, Text):
            parts.append(node.text)
        elif isinstance(node, Message):
            parts.append(escaped)
        else:
            _render(node.then if message else node.otherwise, message, escaped, parts)


def _add_text(out: list[Node], text: str) -> None:
    if text:
        out.append(Text(text))


def _unsupported(inner: str, words: list[str]) -> str:
    if not words:
        return f"empty action {{{{{inner}}}}}; expected {_SUPPORTED}"
    shown = " ".join(words)
    if inner.startswith("-") or inner.endswith("-"):
        hint = " (a trim marker needs whitespace beside its dash: '{{- ' or ' -}}')"
    else:
        hint = ""
    return f"unsupported action {{{{ {shown} }}}}{hint}; expected {_SUPPORTED}"


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _error(text: str, offset: int, problem: str) -> ValueError:
    return ValueError(f"{_position(text, offset)}: {problem}")

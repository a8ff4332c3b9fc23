"""Error pages, the pure half: which files are pages, parsing them, choosing and rendering one.

kproxy.runtime.pages reads the files (the built-in pages from package data, a service's
``--error-pages`` directory at deploy time). Every page, built-in or custom, is a template in
the syntax of ``kproxy.core.templates``: the message is the ``stop --message`` text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Final

import attrs

from kproxy.core import templates
from kproxy.core.templates import Template

CONTENT_TYPE: Final = b"text/html; charset=utf-8"
MAX_PAGE_SIZE: Final = 1024 * 1024  # bytes per --error-pages file; pages live in memory
# "<status>.html" for the statuses a proxy answers with errors; other files are ignored,
# as kamal-proxy only ever looks up "<status>.html" (error_page_middleware.go getTemplate).
_PAGE_NAME: Final = re.compile(r"([45][0-9][0-9])\.html")


@attrs.frozen
class ErrorPages:
    """A service's custom pages: parsed templates by status, loaded once at deploy.

    The empty value (no directory) means the built-in pages.
    """

    directory: str = ""
    templates: Mapping[int, Template] = attrs.field(factory=dict)

    def template(self, status: int) -> Template | None:
        return self.templates.get(status)


def page_status(file_name: str) -> int | None:
    """The status a file in an ``--error-pages`` directory is for, or None if it is no page."""
    match = _PAGE_NAME.fullmatch(file_name)
    return int(match.group(1)) if match else None


def parse_pages(directory: str, files: Mapping[str, str]) -> ErrorPages:
    """Parse the pages of an ``--error-pages`` directory.

    Args:
      directory: the directory, as given (for the value and error messages).
      files: page file name (see ``page_status``) → its text.

    Raises:
      ValueError: naming the first file that does not parse, with the line, column and problem.
    """
    parsed: dict[int, Template] = {}
    for name in sorted(files):
        status = page_status(name)
        if status is None:
            continue
        try:
            parsed[status] = templates.parse(files[name])
        except ValueError as exc:
            raise ValueError(f"{name}, {exc}") from None
    return ErrorPages(directory, parsed)


def render_page(template: Template, message: str) -> bytes:
    """The response body: ``template`` rendered with the HTML-escaped ``message``, as UTF-8
    (send it with ``CONTENT_TYPE``)."""
    return templates.render(template, message).encode("utf-8")


# The built-in pages share one layout (kproxy/pages/layout.html); each status has its words
# and accent colour here. Other statuses get their reason phrase and a general sentence.
_AMBER: Final = "#d97706"
_RED: Final = "#dc2626"
BUILTIN_WORDS: Final[Mapping[int, tuple[str, str, str]]] = {
    404: ("Not found", "No service is deployed for this host and path. Check the address, or "
          "deploy an application to serve it.", "#2563eb"),
    413: ("Request too large", "The request body is larger than this service accepts. Try "
          "again with a smaller upload.", _AMBER),
    502: ("Bad gateway", "The application could not be reached. It may be starting up or may "
          "have stopped; please try again in a moment.", _RED),
    503: ("Service unavailable", "This service is temporarily unavailable, possibly for "
          "maintenance. Please try again shortly.", _AMBER),
    504: ("Gateway timeout", "The application took too long to respond. Please try again in "
          "a moment.", _RED),
}  # fmt: skip


def builtin_page_source(layout: str, status: int) -> str:
    """The template text of the built-in page for ``status``, from the shared layout."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title, text, accent = BUILTIN_WORDS.get(
        status, (phrase, "The request could not be completed.", _RED)
    )
    return (
        layout.replace("__STATUS__", str(status))
        .replace("__TITLE__", html.escape(title))
        .replace("__TEXT__", html.escape(text))
        .replace("__ACCENT__", accent)
    )

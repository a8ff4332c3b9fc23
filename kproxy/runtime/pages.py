"""Error pages, the I/O half: the built-in pages (package data) and ``--error-pages`` directories.

A service's directory is read whole at deploy and kept in memory with the service, so a
request never touches the disk; files are read synchronously (a handful of small local files,
capped at ``MAX_PAGE_SIZE`` each).
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Final

from kproxy.core import templates
from kproxy.core.pages import (
    BUILTIN_WORDS,
    MAX_PAGE_SIZE,
    ErrorPages,
    builtin_page_source,
    page_status,
    parse_pages,
    render_page,
)
from kproxy.core.templates import Template

# The statuses kproxy has its own words for; every other status gets a generic page.
BUILTIN_STATUSES: Final = frozenset(BUILTIN_WORDS)
BUILTIN_PAGES: Final = ErrorPages()


@functools.cache
def _layout() -> str:
    return (resources.files("kproxy") / "pages" / "layout.html").read_text(encoding="utf-8")


@functools.cache
def _builtin(status: int) -> Template:
    """Built once per status on first use (the layout is read once), kept for the process."""
    return templates.parse(builtin_page_source(_layout(), status))


def error_page(status: int, message: str = "", pages: ErrorPages = BUILTIN_PAGES) -> bytes:
    """The HTML body for an error response.

    Args:
      status: the response status.
      message: text to show (``stop --message``); HTML-escaped, and shown by pages that use
        ``{{ .Message }}`` (every built-in page does, when there is a message).
      pages: the service's ``--error-pages``; a status without a file there gets the built-in
        page (kproxy's words for 404, 413, 502, 503 and 504; the reason phrase otherwise).

    Returns:
      UTF-8 bytes, to be sent with ``kproxy.core.pages.CONTENT_TYPE``.
    """
    template = pages.template(status) or _builtin(status)
    return render_page(template, message)


def read_error_pages(directory: str) -> ErrorPages:
    """Read and parse the ``<status>.html`` files of an ``--error-pages`` directory.

    Args:
      directory: the directory; "" means the built-in pages (nothing is read).

    Raises:
      ValueError: the directory or a page cannot be read, holds no ``<status>.html`` file
        (as kamal-proxy, which refuses a directory without templates: the user most likely
        named the wrong one), or a page does not parse; the message names the directory, the
        file and the problem.
    """
    if not directory:
        return BUILTIN_PAGES
    prefix = f"--error-pages {directory}"
    try:
        with os.scandir(directory) as entries:
            pages = {e.name: e.is_file() for e in entries if page_status(e.name) is not None}
    except OSError as exc:
        raise ValueError(f"{prefix}: cannot read the directory: {_reason(exc)}") from None
    if not pages:
        raise ValueError(
            f"{prefix}: no error pages in the directory; expected <status>.html files "
            "(400.html to 599.html, such as 502.html or 503.html)"
        )
    files: dict[str, str] = {}
    for name, is_file in sorted(pages.items()):
        if not is_file:  # a FIFO would block the whole proxy in open()
            raise ValueError(f"{prefix}: {name} is not a regular file")
        try:
            with open(os.path.join(directory, name), "rb") as file:
                data = file.read(MAX_PAGE_SIZE + 1)
        except OSError as exc:
            raise ValueError(f"{prefix}: cannot read {name}: {_reason(exc)}") from None
        if len(data) > MAX_PAGE_SIZE:
            raise ValueError(f"{prefix}: {name} is larger than {MAX_PAGE_SIZE} bytes")
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = data[exc.start]
            raise ValueError(
                f"{prefix}: {name} is not UTF-8 text (byte {byte:#04x} at offset {exc.start})"
            ) from None
    try:
        return parse_pages(directory, files)
    except ValueError as exc:
        raise ValueError(f"{prefix}: {exc}") from None


def error_pages_or_builtin(directory: str) -> tuple[ErrorPages, str | None]:
    """``--error-pages`` as they read now, or the built-in pages and why (for the log) when
    they no longer do: a restored service whose directory went away with an old release, say,
    keeps serving. Its options keep the directory, so the state file does not forget it, and
    the next deploy reads it again."""
    try:
        return read_error_pages(directory), None
    except ValueError as exc:
        return BUILTIN_PAGES, str(exc)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)

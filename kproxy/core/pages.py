"""Error page templating: the pure half of the built-in pages (kproxy.runtime.pages reads files).

A template may hold one optional block, ``{{#MESSAGE}}...{{/MESSAGE}}``, in which
``{{MESSAGE}}`` becomes the HTML-escaped ``stop --message`` text. With no message the whole
block is removed, so the page shows no empty box. Templates are trusted package data; only the
message is escaped, because it comes from an operator's command line.
"""

from __future__ import annotations

import html
import re
from http import HTTPStatus
from typing import Final

CONTENT_TYPE: Final = b"text/html; charset=utf-8"
MESSAGE: Final = "{{MESSAGE}}"
MESSAGE_BLOCK_START: Final = "{{#MESSAGE}}"
MESSAGE_BLOCK_END: Final = "{{/MESSAGE}}"

_MESSAGE_BLOCK: Final = re.compile(
    re.escape(MESSAGE_BLOCK_START) + ".*?" + re.escape(MESSAGE_BLOCK_END), re.DOTALL
)


def render_page(template: str, message: str) -> str:
    """Fill a page template with ``message``, or drop its message block if ``message`` is "".

    Args:
      template: page text with an optional ``{{#MESSAGE}}...{{/MESSAGE}}`` block.
      message: plain text; it is HTML-escaped, and placeholders inside it are not expanded.

    Returns:
      The page as text; the caller encodes it as UTF-8 (see ``CONTENT_TYPE``).
    """
    if not message:
        return _MESSAGE_BLOCK.sub("", template).replace(MESSAGE, "")
    page = template.replace(MESSAGE_BLOCK_START, "").replace(MESSAGE_BLOCK_END, "")
    # str.replace is one pass, so "{{MESSAGE}}" typed into the message stays literal.
    return page.replace(MESSAGE, html.escape(message))


def fallback_template(status: int) -> str:
    """A minimal page for statuses without a built-in file, so every error has an HTML body."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = html.escape(f"{status} {phrase}")
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n</head>\n"
        '<body style="font-family: system-ui, sans-serif; text-align: center; margin-top: 20vh">\n'
        f"<h1>{title}</h1>\n"
        f"{MESSAGE_BLOCK_START}<p>{MESSAGE}</p>{MESSAGE_BLOCK_END}\n"
        "</body>\n</html>\n"
    )

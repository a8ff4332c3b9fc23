"""Built-in error pages, read once from package data (kproxy/pages/*.html) and rendered."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Final

from kproxy.core.pages import fallback_template, render_page

# The statuses kproxy ships a page for; each must exist as kproxy/pages/<status>.html.
BUILTIN_STATUSES: Final = frozenset({404, 413, 502, 503, 504})


@functools.cache
def _templates() -> Mapping[int, str]:
    """Read every built-in page on first use; a handful of small files, kept for the process."""
    pages = resources.files("kproxy") / "pages"
    return {s: (pages / f"{s}.html").read_text(encoding="utf-8") for s in BUILTIN_STATUSES}


def error_page(status: int, message: str = "") -> bytes:
    """The HTML body for an error response.

    Args:
      status: the response status; statuses without a built-in page get a minimal one.
      message: text to show (``stop --message``); HTML-escaped, and only pages with a message
        block (503, and the fallback) display it.

    Returns:
      UTF-8 bytes, to be sent with ``kproxy.core.pages.CONTENT_TYPE``.
    """
    template = _templates().get(status) or fallback_template(status)
    return render_page(template, message).encode("utf-8")

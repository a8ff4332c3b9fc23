"""Error pages: the pure renderer (kproxy.core.pages) and the package-data loader (runtime)."""

from __future__ import annotations

import re

import pytest

from kproxy.core.pages import (
    MESSAGE,
    MESSAGE_BLOCK_END,
    MESSAGE_BLOCK_START,
    fallback_template,
    render_page,
)
from kproxy.runtime.pages import BUILTIN_STATUSES, error_page

TEMPLATE = "<p>before</p>{{#MESSAGE}}<div>{{MESSAGE}}</div>{{/MESSAGE}}<p>after</p>"

TITLES = {
    404: "Not found",
    413: "Request too large",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


@pytest.mark.parametrize(
    ("template", "message", "expected"),
    [
        (TEMPLATE, "", "<p>before</p><p>after</p>"),
        (TEMPLATE, "Back at 5pm", "<p>before</p><div>Back at 5pm</div><p>after</p>"),
        (
            TEMPLATE,
            "<script>alert(\"x\")</script> & 'q'",
            "<p>before</p><div>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
            " &amp; &#x27;q&#x27;</div><p>after</p>",
        ),
        (
            TEMPLATE,
            "{{MESSAGE}} {{/MESSAGE}}",
            "<p>before</p><div>{{MESSAGE}} {{/MESSAGE}}</div><p>after</p>",
        ),
        ("a\n{{#MESSAGE}}\n<p>{{MESSAGE}}</p>\n{{/MESSAGE}}\nb", "", "a\n\nb"),
        ("<p>{{MESSAGE}}</p>", "", "<p></p>"),
        ("<p>{{MESSAGE}}</p>", "m", "<p>m</p>"),
        ("<p>static</p>", "ignored", "<p>static</p>"),
    ],
)
def test_render_page(template: str, message: str, expected: str) -> None:
    assert render_page(template, message) == expected


@pytest.mark.parametrize("status", sorted(BUILTIN_STATUSES))
def test_every_builtin_page_renders(status: int) -> None:
    page = error_page(status).decode("utf-8")
    assert page.startswith("<!doctype html>")
    assert f"<title>{status} {TITLES[status]}</title>" in page
    assert f"<h1>{TITLES[status]}</h1>" in page
    for marker in (MESSAGE, MESSAGE_BLOCK_START, MESSAGE_BLOCK_END):
        assert marker not in page


@pytest.mark.parametrize("status", sorted(BUILTIN_STATUSES))
def test_pages_are_self_contained(status: int) -> None:
    """No scripts and no external resources: the page must work when everything else is down."""
    page = error_page(status).decode("utf-8").lower()
    assert "<script" not in page
    assert not re.search(r"(src|href)\s*=|url\(|@import|https?://", page)


def test_503_shows_escaped_message() -> None:
    page = error_page(503, "Upgrading <db> & back soon").decode("utf-8")
    assert '<p class="message">Upgrading &lt;db&gt; &amp; back soon</p>' in page


def test_503_without_message_has_no_message_box() -> None:
    assert 'class="message"' not in error_page(503).decode("utf-8")


@pytest.mark.parametrize("status", [502, 504, 404])
def test_pages_without_block_ignore_message(status: int) -> None:
    assert error_page(status, "secret maintenance note") == error_page(status)


@pytest.mark.parametrize(
    ("status", "title"),
    [(500, "500 Internal Server Error"), (400, "400 Bad Request"), (499, "499 Error")],
)
def test_unknown_status_falls_back(status: int, title: str) -> None:
    page = error_page(status).decode("utf-8")
    assert f"<title>{title}</title>" in page
    assert f"<h1>{title}</h1>" in page
    assert "<p>" not in page
    assert "<p>down &amp; out</p>" in error_page(status, "down & out").decode("utf-8")


def test_fallback_template_keeps_message_block() -> None:
    template = fallback_template(418)
    assert MESSAGE_BLOCK_START in template
    assert "<title>418 I&#x27;m a Teapot</title>" in template


def test_pages_are_utf8_bytes() -> None:
    assert isinstance(error_page(404), bytes)
    assert "é".encode() in error_page(503, "café")

"""Error pages: the pure half (kproxy.core.pages) and the loaders (kproxy.runtime.pages)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kproxy.core import templates
from kproxy.core.pages import (
    MAX_PAGE_SIZE,
    ErrorPages,
    builtin_page_source,
    page_status,
    parse_pages,
    render_page,
)
from kproxy.runtime.pages import BUILTIN_STATUSES, error_page, read_error_pages

TITLES = {
    404: "Not found",
    413: "Request too large",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


@pytest.mark.parametrize("status", sorted(BUILTIN_STATUSES))
def test_every_builtin_page_renders(status: int) -> None:
    page = error_page(status).decode("utf-8")
    assert page.startswith("<!doctype html>")
    assert f"<title>{status} {TITLES[status]}</title>" in page
    assert f"<h1>{TITLES[status]}</h1>" in page
    assert "{{" not in page
    assert "}}" not in page


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


@pytest.mark.parametrize(
    ("status", "title"),
    [(500, "Internal Server Error"), (400, "Bad Request"), (499, "Error")],
)
def test_other_statuses_get_the_layout_with_their_reason_phrase(status: int, title: str) -> None:
    page = error_page(status).decode("utf-8")
    assert f"<title>{status} {title}</title>" in page
    assert f"<h1>{title}</h1>" in page
    assert 'class="message"' not in page
    shown = error_page(status, "down & out").decode("utf-8")
    assert '<p class="message">down &amp; out</p>' in shown


def test_builtin_page_source_fills_every_token_and_escapes() -> None:
    layout = "__STATUS__|__TITLE__|__TEXT__|__ACCENT__|{{ .Message }}"
    source = builtin_page_source(layout, 418)
    assert source.startswith("418|I&#x27;m a Teapot|The request could not be completed.|#")
    assert "__" not in source
    assert templates.parse(source).uses_message


def test_pages_are_utf8_bytes() -> None:
    assert isinstance(error_page(404), bytes)
    assert "é".encode() in error_page(503, "café")
    assert render_page(templates.parse("✓ {{ .Message }}"), "é") == "✓ é".encode()


# --- custom pages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("404.html", 404),
        ("503.html", 503),
        ("599.html", 599),
        ("400.html", 400),
        ("200.html", None),
        ("302.html", None),
        ("600.html", None),
        ("50.html", None),
        ("5030.html", None),
        ("503.htm", None),
        ("503.HTML", None),
        ("503.html~", None),
        (".503.html", None),
        ("error.html", None),
        ("503.html.bak", None),
    ],
)
def test_page_status(name: str, status: int | None) -> None:
    assert page_status(name) == status


def test_parse_pages_keeps_only_status_pages() -> None:
    pages = parse_pages("/d", {"503.html": "down {{ .Message }}", "notes.txt": "{{ nope }}"})
    assert pages.directory == "/d"
    assert set(pages.templates) == {503}
    assert pages.template(404) is None


def test_parse_pages_names_the_file_and_position() -> None:
    expected = "503.html, line 2, column 3: unsupported action {{ .Status }}; expected"
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_pages("/d", {"404.html": "ok", "503.html": "a\n  {{ .Status }}"})


def test_custom_page_wins_and_missing_statuses_fall_back() -> None:
    pages = parse_pages("/d", {"503.html": "<h1>{{ .Message }}</h1>", "500.html": "oops"})
    assert error_page(503, "a<b", pages) == b"<h1>a&lt;b</h1>"
    assert error_page(500, "", pages) == b"oops"
    assert error_page(502, "", pages) == error_page(502)  # built-in
    assert error_page(431, "", pages) == error_page(431)  # minimal
    assert error_page(502, "", ErrorPages()) == error_page(502)


def test_read_error_pages(tmp_path: Path) -> None:
    files = {
        "404.html": "nf",
        "503.html": "{{ if .Message }}{{ .Message }}{{ else }}down{{ end }}",
        "readme.md": "{{ ignored }}",
        "layout.html": "{{ template }}",  # no status page: ignored, as kamal-proxy never uses it
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    pages = read_error_pages(str(tmp_path))
    assert pages.directory == str(tmp_path)
    assert set(pages.templates) == {404, 503}
    assert error_page(503, "", pages) == b"down"
    assert error_page(503, "<up>", pages) == b"&lt;up&gt;"
    assert error_page(404, "", pages) == b"nf"


def test_read_error_pages_empty_means_builtin() -> None:
    assert read_error_pages("") == ErrorPages()


def test_a_directory_without_pages_is_refused(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("not a page")  # other files do not count
    (tmp_path / "pages").mkdir()
    assert _error(tmp_path) == (
        f"--error-pages {tmp_path}: no error pages in the directory; expected <status>.html "
        "files (400.html to 599.html, such as 502.html or 503.html)"
    )


def _error(directory: Path | str) -> str:
    with pytest.raises(ValueError, match=r"^--error-pages ") as info:
        read_error_pages(str(directory))
    return str(info.value)


def test_missing_directory(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope") == (
        f"--error-pages {tmp_path / 'nope'}: cannot read the directory: No such file or directory"
    )


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert _error(tmp_path / "file").endswith("cannot read the directory: Not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_directory_and_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        assert _error(locked).endswith("cannot read the directory: Permission denied")
    finally:
        locked.chmod(0o700)
    (tmp_path / "503.html").write_text("x")
    (tmp_path / "503.html").chmod(0o000)
    assert _error(tmp_path) == f"--error-pages {tmp_path}: cannot read 503.html: Permission denied"


@pytest.mark.parametrize("make", [Path.mkdir, os.mkfifo, lambda p: p.symlink_to("gone")])
def test_page_that_is_no_regular_file(tmp_path: Path, make: Callable[[Path], object]) -> None:
    make(tmp_path / "502.html")
    assert _error(tmp_path) == f"--error-pages {tmp_path}: 502.html is not a regular file"


def test_page_may_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("{{ .Message }}!")
    (tmp_path / "503.html").symlink_to(tmp_path / "real")
    assert error_page(503, "m", read_error_pages(str(tmp_path))) == b"m!"


def test_page_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "404.html").write_bytes(b"ok \xff")
    assert _error(tmp_path) == (
        f"--error-pages {tmp_path}: 404.html is not UTF-8 text (byte 0xff at offset 3)"
    )


def test_page_too_large(tmp_path: Path) -> None:
    (tmp_path / "404.html").write_bytes(b"x" * MAX_PAGE_SIZE)
    assert set(read_error_pages(str(tmp_path)).templates) == {404}  # exactly the limit is fine
    (tmp_path / "404.html").write_bytes(b"x" * (MAX_PAGE_SIZE + 1))
    assert _error(tmp_path) == (
        f"--error-pages {tmp_path}: 404.html is larger than {MAX_PAGE_SIZE} bytes"
    )


def test_page_that_does_not_parse(tmp_path: Path) -> None:
    (tmp_path / "404.html").write_text("fine")
    (tmp_path / "504.html").write_text("<p>\n{{ if .Message }}\n</p>")
    assert _error(tmp_path) == (
        f"--error-pages {tmp_path}: 504.html, line 2, column 1: {{{{ if .Message }}}} is never "
        "closed; expected {{ end }} before the end of the file"
    )

"""core/writer_affinity.py: the kamal-writer cookie, read and written as kamal-proxy does."""

from __future__ import annotations

import pytest

from kproxy.core.writer_affinity import has_valid_cookie, set_cookie_value, write_response_headers

NOW = 1_700_000_000.25  # 2023-11-14 22:13:20.25 UTC


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], False),
        ([(b"cookie", b"kamal-writer=1700000000251")], True),
        ([(b"cookie", b"kamal-writer=1700000000250")], False),  # expiry is exclusive
        ([(b"cookie", b"kamal-writer=1600000000000")], False),
        ([(b"cookie", b"a=1; kamal-writer=1700000009000; b=2")], True),
        ([(b"cookie", b"a=1"), (b"cookie", b"kamal-writer=1700000009000")], True),
        ([(b"cookie", b'kamal-writer="1700000009000"')], True),  # Go strips the quotes
        ([(b"cookie", b"kamal-writer=soon")], False),
        ([(b"cookie", b"kamal-writer=")], False),
        ([(b"cookie", b"kamal-writer=1_700_000_009_000")], False),
        ([(b"cookie", b"kamal-writer=99999999999999999999")], False),  # not an int64
        ([(b"cookie", b"kamal-writer=1600000000000; kamal-writer=1700000009000")], False),
        ([(b"cookie", b"other-kamal-writer=1700000009000")], False),
        ([(b"x-cookie", b"kamal-writer=1700000009000")], False),
    ],
)
def test_has_valid_cookie(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert has_valid_cookie(headers, NOW) is expected


def test_set_cookie_value_matches_go() -> None:
    # expires = now + 3s in Unix ms; Expires= one second later, in http.TimeFormat.
    assert set_cookie_value(NOW, 3.0) == (
        b"kamal-writer=1700000003250; Path=/; Expires=Tue, 14 Nov 2023 22:13:24 GMT; HttpOnly"
    )


def test_a_write_response_gets_the_cookie() -> None:
    headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"session=1")]
    assert write_response_headers(headers, NOW, 1.0) == [
        *headers,
        (
            b"set-cookie",
            b"kamal-writer=1700000001250; Path=/; Expires=Tue, 14 Nov 2023 22:13:22 GMT; HttpOnly",
        ),
    ]


@pytest.mark.parametrize(
    ("opt_out", "cookie"),
    [
        ([b"false"], False),
        ([b"true"], True),
        ([b"FALSE"], True),  # compared exactly, as kamal-proxy does
        ([b"no"], True),
        ([b"false", b"true"], False),  # the first value counts
        ([b"true", b"false"], True),
    ],
)
def test_the_opt_out_header_is_honoured_and_removed(opt_out: list[bytes], cookie: bool) -> None:
    headers = [(b"content-length", b"2"), *((b"x-writer-affinity", v) for v in opt_out)]
    result = write_response_headers(headers, NOW, 1.0)
    assert all(name != b"x-writer-affinity" for name, _ in result)
    assert result[0] == (b"content-length", b"2")
    assert any(name == b"set-cookie" for name, _ in result) is cookie

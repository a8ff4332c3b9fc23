"""The request metrics' label rules (core/metric_labels.py), as kamal-proxy's metrics.go."""

from __future__ import annotations

import pytest

from kproxy.core.metric_labels import is_excluded, method_label


@pytest.mark.parametrize(
    ("method", "label"),
    [
        *[(m, m) for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT")],
        ("OPTIONS", "OPTIONS"),
        ("TRACE", "TRACE"),
        ("PROPFIND", "OTHER"),
        ("BREW", "OTHER"),
        ("get", "OTHER"),  # methods are case-sensitive (RFC 9110 §9.1)
        ("", "OTHER"),
    ],
)
def test_method_label(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("path", "prefix", "strip", "excluded"),
    [
        ("/up", "/", True, True),
        ("/up/", "/", True, False),  # equal, not a prefix match
        ("/upgrade", "/", True, False),
        ("/app/up", "/app", True, True),  # compared after stripping
        ("/app/up", "/app", False, False),  # not stripped: the target sees /app/up
        ("/up", "/app", False, True),  # (routing would not send it here; the rule alone)
        ("/app", "/app", True, False),  # stripped to "/"
    ],
)
def test_is_excluded(path: str, prefix: str, strip: bool, excluded: bool) -> None:
    paths = ("/up", "/metrics-free")
    assert is_excluded(path, paths, path_prefix=prefix, strip_prefix=strip) is excluded


def test_nothing_is_excluded_without_paths() -> None:
    assert not is_excluded("/up", (), path_prefix="/", strip_prefix=True)

"""The label rules of the request metrics, as kamal-proxy's internal/metrics/metrics.go has them.

A method outside HTTP's standard set is labelled ``OTHER``, so a client cannot grow the label
space (one series per invented method). A request whose path, after the service's prefix is
stripped, is one of its ``--exclude-metrics-path`` values is not metered at all (kamal-proxy's
``ServiceOptions.ShouldExcludeMetrics`` compares the routed target path the same way).
"""

from __future__ import annotations

from typing import Final

from kproxy.core.service_map import ROOT_PATH, strip_path_prefix

OTHER_METHOD: Final = "OTHER"
STANDARD_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")
)


def method_label(method: str) -> str:
    """The ``method`` label: the method itself if standard, else ``OTHER``."""
    return method if method in STANDARD_METHODS else OTHER_METHOD


def is_excluded(
    path: str, excluded: tuple[str, ...], *, path_prefix: str, strip_prefix: bool
) -> bool:
    """Whether a request for ``path`` (no query) is left out of the metrics: its path as the
    target sees it (the matched ``path_prefix`` removed when the service strips it) is one
    of ``excluded``."""
    if not excluded:
        return False
    if strip_prefix and path_prefix != ROOT_PATH:
        path = strip_path_prefix(path.encode("latin-1"), path_prefix).decode("latin-1")
    return path in excluded

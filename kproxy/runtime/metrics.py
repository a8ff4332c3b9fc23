"""The request metrics of kamal-proxy (internal/metrics/metrics.go), kept with prometheus_client.

``RequestMetrics`` is what the request pipeline calls: ``enter`` once the service is known
(the in-flight gauge), ``leave`` when the access log line is written (the histogram, the gauge
back down). Each label set's children are looked up once and cached, so a request costs a dict
lookup and the value updates, never a ``.labels()`` call. The request counter is not kept
apart: kamal-proxy counts and observes every request together, so its value is the
histogram's ``_count``, and ``Exposition`` writes it from there when scraped.

Across processes (``run --workers N``) the values live where prometheus_client's value class
puts them: a worker is started with ``PROMETHEUS_MULTIPROC_DIR`` in its environment (see
``multiprocess_environment``), so its values are memory-mapped files in the supervisor's
private directory, which ``multiprocess_registry`` sums (the in-flight gauge as the live sum).
A file outlives its process: a killed worker's counts stay in the totals. No other process's
environment changes: the one-process proxy, embedded or not, keeps plain in-memory values.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from kproxy.core.metric_labels import is_excluded, method_label

MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
EXCLUDED: Final = object()  # ``RequestLog.metered`` of a request left out of the metrics

LABELS: Final = ("service", "method", "status")
DURATIONS: Final = "kamal_proxy_http_request_duration_seconds"


@attrs.define(eq=False)
class RequestMetrics:
    """``kamal_proxy_http_*``: requests by service, method and status, their durations, and
    the requests in flight by service."""

    registry: CollectorRegistry = attrs.field(factory=lambda: CollectorRegistry(auto_describe=True))
    durations: Histogram = attrs.field(init=False)
    in_flight: Gauge = attrs.field(init=False)
    connections: Gauge = attrs.field(init=False)
    waited: Counter = attrs.field(init=False)
    cut_off: Counter = attrs.field(init=False)
    _finished: dict[tuple[str, str, int], Histogram] = attrs.field(factory=dict)
    _in_flight: dict[str, Gauge] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        values = CollectorRegistry()
        self.durations = Histogram(
            DURATIONS,
            "Duration of HTTP requests, labeled by service, status code and method.",
            LABELS,
            registry=values,
        )
        self.in_flight = Gauge(
            "kamal_proxy_http_in_flight_requests",
            "Number of in-flight HTTP requests, labeled by service.",
            ("service",),
            registry=values,
            multiprocess_mode="livesum",
        )
        # kproxy's own (not in kamal-proxy): client connections, and requests a drain cut off.
        self.connections = Gauge(
            "kproxy_client_connections",
            "Client connections open (HTTP and HTTPS).",
            registry=values,
            multiprocess_mode="livesum",
        )
        self.waited = Counter(
            "kproxy_client_connections_waited",
            "Client connections accepted once a slot freed at --max-connections.",
            registry=values,
        )
        self.cut_off = Counter(
            "kproxy_requests_cut_off",
            "Requests cut off by a drain's timeout, labeled by service.",
            ("service",),
            registry=values,
        )
        self.registry.register(Exposition(values))

    def enter(
        self, service: str, path: str, excluded: tuple[str, ...], prefix: str, strip: bool
    ) -> object:
        """A request for ``service`` begins; returns what ``leave`` takes (``EXCLUDED`` for a
        path the service leaves out)."""
        if excluded and is_excluded(path, excluded, path_prefix=prefix, strip_prefix=strip):
            return EXCLUDED
        gauge = self._in_flight.get(service)
        if gauge is None:
            gauge = self._in_flight[service] = self.in_flight.labels(service)
        gauge.inc()
        return gauge

    def leave(
        self, entered: object, service: str, method: str, status: int, seconds: float
    ) -> None:
        """A request ends (``entered``: what ``enter`` returned, None if it never entered a
        service, as an unrouted request)."""
        if entered is EXCLUDED:
            return
        if entered is not None:
            entered.dec()  # type: ignore[attr-defined]  # the gauge ``enter`` returned
        key = (service, method_label(method), status)  # invented methods share one entry
        histogram = self._finished.get(key)
        if histogram is None:
            histogram = self._finished[key] = self.durations.labels(service, key[1], str(status))
        histogram.observe(seconds)


@attrs.define(eq=False)
class Exposition(Collector):
    """What /metrics shows of ``values``: ``kamal_proxy_http_requests_total`` beside the
    duration histogram it is the count of, and no ``*_created`` series (prometheus_client's,
    which kamal-proxy (Go) has not and the multi-process figures have not either: one process
    and N workers expose the same series)."""

    values: Collector

    def collect(self) -> Iterator[Metric]:
        for metric in self.values.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            if metric.name == DURATIONS:
                yield _requests_counted(metric)
            yield metric


def _requests_counted(durations: Metric) -> Metric:
    requests = CounterMetricFamily(
        "kamal_proxy_http_requests",
        "HTTP requests processed, labeled by service, status code and method.",
        labels=LABELS,
    )
    for sample in durations.samples:
        if sample.name == DURATIONS + "_count":
            requests.add_metric([sample.labels[name] for name in LABELS], sample.value)
    return requests


@attrs.define(eq=False)
class WorkerMetrics:
    """The supervisor's side of the workers' metrics: their private directory, summed."""

    directory: str = attrs.field(factory=lambda: tempfile.mkdtemp(prefix="kproxy-metrics-"))
    registry: CollectorRegistry = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.registry = CollectorRegistry()
        # prometheus_client's multiprocess module has no type annotations.
        files = MultiProcessCollector(None, path=self.directory)  # type: ignore[no-untyped-call]
        self.registry.register(Exposition(files))

    def environment(self) -> Mapping[str, str]:
        """A worker's environment: ours, and where its values go."""
        return {**os.environ, MULTIPROCESS_ENV: self.directory}

    def worker_exited(self, pid: int) -> None:
        """Its in-flight requests are over; its counts stay."""
        mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # unannotated

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

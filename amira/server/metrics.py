"""Prometheus metrics of one server instance, in a registry of its own so that tests and embedded
servers do not share counters.

Requests, audio seconds and errors are labelled by `protocol`: `native` (`/v2`), `openai`,
`deepgram`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from amira.backends.triton_pool import EndpointState, TritonPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _BackendCalls(Collector):
    """Reads the recogniser's own call counters at scrape time, so the hot path counts with a dict."""

    def __init__(self, calls: Callable[[], dict[str, int]]) -> None:
        self._calls = calls

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("amira_backend_calls", "Inference calls by model role", labels=["role"])
        for role, count in sorted(self._calls().items()):
            family.add_metric([role], count)
        yield family


class _Endpoints(Collector):
    """The Triton endpoints as the pool sees them at scrape time: health, calls in flight, outages,
    and the queue of calls waiting for a free endpoint (what an autoscaler watches)."""

    def __init__(self, pool: TritonPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily(
            "amira_backend_endpoint_up", "1 while the endpoint takes calls (healthy)", labels=["endpoint"]
        )
        in_flight = GaugeMetricFamily(
            "amira_backend_endpoint_in_flight", "Calls in flight on the endpoint", labels=["endpoint"]
        )
        outages = CounterMetricFamily(
            "amira_backend_endpoint_outages",
            "Times the endpoint was taken out after a failed call or probe",
            labels=["endpoint"],
        )
        for endpoint in self._pool.endpoints:
            up.add_metric([endpoint.url], float(endpoint.state is EndpointState.HEALTHY))
            in_flight.add_metric([endpoint.url], endpoint.in_flight)
            outages.add_metric([endpoint.url], endpoint.failures)
        yield up
        yield in_flight
        yield outages
        yield GaugeMetricFamily(
            "amira_backend_queued_calls", "Calls waiting for a free Triton endpoint", value=self._pool.queued
        )
        yield CounterMetricFamily(
            "amira_backend_failovers",
            "Calls retried at once on another endpoint after theirs became unavailable",
            value=self._pool.failovers,
        )


class Metrics:
    def __init__(self, backend_calls: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "amira_batch_requests",
            "Batch requests by protocol, model and outcome",
            ["protocol", "model", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "amira_batch_request_seconds",
            "Batch request latency",
            ["protocol", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "amira_audio_seconds",
            "Audio seconds transcribed",
            ["protocol", "model", "mode"],
            registry=self.registry,
        )
        self.errors = Counter(
            "amira_errors",
            "Errors answered, by protocol and error_type",
            ["protocol", "error_type"],
            registry=self.registry,
        )
        self.active_batches = Gauge(
            "amira_active_batches", "Batch requests in progress", registry=self.registry
        )
        self.active_streams = Gauge("amira_active_streams", "Streams in progress", registry=self.registry)
        self.rejected = Counter(
            "amira_rejected",
            "Work refused for capacity: batch, stream, stream_per_key, body, connection",
            ["kind"],
            registry=self.registry,
        )
        self.http_responses = Counter(
            "amira_http_responses", "HTTP responses by status code", ["status"], registry=self.registry
        )
        self.connections = Gauge("amira_connections", "Open client connections", registry=self.registry)
        self.event_loop_lag = Histogram(
            "amira_event_loop_lag_seconds",
            "How late a 10 ms timer of the event loop fires (the loop busy, or the process not scheduled)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.event_loop_stall = Histogram(
            "amira_event_loop_stall_seconds",
            "The lag less the time the OS kept the loop's thread waiting for a CPU: the loop busy, "
            "or waiting for the GIL",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.backend_call_seconds = Histogram(
            "amira_backend_call_seconds",
            "Inference call latency by model set and role",
            ["model", "role"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BackendCalls(backend_calls))

    def watch_endpoints(self, pool: TritonPool) -> None:
        """Per-endpoint health, calls in flight, latency and the queue of the Triton pool."""
        endpoint_seconds = Histogram(
            "amira_backend_endpoint_call_seconds",
            "Inference call latency by Triton endpoint (answered calls)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        pool.on_call = lambda url, seconds: endpoint_seconds.labels(url).observe(seconds)
        self.registry.register(_Endpoints(pool))

    def observe_backend_call(self, model: str, role: str, seconds: float) -> None:
        self.backend_call_seconds.labels(model, role).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

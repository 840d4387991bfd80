"""Prometheus metrics of a server: the engine's state read at scrape time (running / waiting requests, KV
blocks, token totals) and latency histograms the HTTP layer observes (time to first token, time per
output token, whole request). One registry per app, so two apps in one process do not collide."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "scratchlm_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; a tiny CPU model answers in milliseconds, a big one on a loaded CPU in many seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

_GAUGES = {  # engine.stats() key → (metric name, help)
    "running": ("num_requests_running", "requests whose sequences are in the running batch"),
    "waiting": ("num_requests_waiting", "requests queued for KV blocks"),
    "blocks_used": ("kv_blocks_used", "KV cache blocks held by sequences or the prefix cache"),
    "blocks_free": ("kv_blocks_free", "KV cache blocks free to allocate"),
    "blocks_total": ("kv_blocks_total", "KV cache blocks in the pool"),
    "kv_cache_bytes": ("kv_cache_bytes", "bytes of the KV cache's block pool (--kv-cache-dtype int8: with its scales)"),
}
_COUNTERS = {
    "prompt_tokens_total": ("prompt_tokens", "prompt tokens submitted"),
    "generation_tokens_total": ("generation_tokens", "tokens generated"),
}


class _EngineCollector:
    """Reads `engine.stats()` at each scrape."""

    def __init__(self, engine: Any):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats()
        for key, (name, doc) in _GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(PREFIX + name, doc, value=stats[key])
        for key, (name, doc) in _COUNTERS.items():
            if key in stats:
                yield CounterMetricFamily(PREFIX + name, doc, value=stats[key])

    def describe(self):
        return []  # collected lazily: no engine call at registration


class ServerMetrics:
    """The server's metric registry and the histograms it observes."""

    def __init__(self, engine: Any):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        r = self.registry
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "request arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds", "time between two tokens of a sample",
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "request arrival to its last token",
                             buckets=E2E_BUCKETS, registry=r)
        self.finished = Counter(PREFIX + "request_success", "samples finished, by finish reason",
                                ["finish_reason"], registry=r)
        self.cancelled = Counter(PREFIX + "requests_cancelled", "requests cancelled because their client went away",
                                 registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

"""Prometheus metrics of the OpenAI-compatible front door (served on its own --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter(
    "rlhf_http_requests_total",
    "HTTP requests answered by the OpenAI front door, by route and status",
    ["route", "status"],
)
HTTP_LATENCY = Histogram(
    "rlhf_http_request_latency_seconds",
    "HTTP request duration until the last byte (the end of the stream for stream: true), by route and status",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_TIME_TO_FIRST_CHUNK = Histogram(
    "rlhf_http_time_to_first_chunk_seconds",
    "stream: true requests: time until the first SSE chunk was sent, by route",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_STREAM_ERRORS = Counter(
    "rlhf_http_stream_errors_total",
    "streams that ended early: the policy failed mid-stream (error event) or the client went away",
    ["route", "reason"],
)
HTTP_IN_FLIGHT = Gauge("rlhf_http_in_flight", "HTTP requests being handled now by the OpenAI front door")

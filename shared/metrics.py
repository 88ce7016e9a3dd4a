"""Prometheus metrics every service shares, and the /metrics HTTP server.

Names start with ``rlhf_``. Service-specific metrics are defined in the
service's own module; the ones here are used by shared plumbing (gRPC
interceptors, Kafka producer and consumer loop, model versions).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from 1 ms to 60 s: generation on CPU can take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

RPC_REQUESTS = Counter(
    "rlhf_rpc_requests_total", "gRPC calls handled, by method and status code", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "rlhf_rpc_latency_seconds", "gRPC call duration, by method", ["service", "method"], buckets=LATENCY_BUCKETS
)
RPC_IN_FLIGHT = Gauge("rlhf_rpc_in_flight", "gRPC calls being served now", ["service"])

EVENTS_PRODUCED = Counter("rlhf_events_produced_total", "events acknowledged by the broker", ["topic"])
EVENTS_DROPPED = Counter(
    "rlhf_events_dropped_total",
    "events given up on after retries or buffer overflow (each is also logged)",
    ["topic", "reason"],
)
EVENTS_BUFFERED = Gauge("rlhf_events_buffered", "events waiting to be sent to the broker", ["topic"])
EVENTS_CONSUMED = Counter("rlhf_events_consumed_total", "events handled by a consumer loop", ["topic", "group"])
EVENTS_DEADLETTERED = Counter(
    "rlhf_events_deadlettered_total", "events sent to the dead-letter topic, by reason", ["topic", "reason"]
)
CONSUMER_LAG = Gauge("rlhf_consumer_lag", "records behind the end of the partition", ["topic", "partition", "group"])
CONSUMER_RESTARTS = Counter(
    "rlhf_consumer_restarts_total", "consumer loops that reconnected after a failed batch (consumed again)", ["group"]
)
CONSUMER_POSITION_RESETS = Counter(
    "rlhf_consumer_position_resets_total",
    "partitions read again from the beginning because the position was beyond the end (the broker lost records)",
    ["group"],
)

MODEL_VERSION = Info("rlhf_model", "model version being served")
MODEL_SWAPS = Counter("rlhf_model_swaps_total", "model versions swapped in by this replica", ["kind", "result"])


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int | None:
    """Serve /metrics on ``host``:``port`` (0 = a free port, -1 = disabled); return the port.
    Loopback by default: a scraper elsewhere needs the service's --metrics-host (or --host) 0.0.0.0."""
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=host)
    bound = server.server_address[1]
    log.info("metrics server listening", extra={"metrics_host": host, "metrics_port": bound})
    return bound

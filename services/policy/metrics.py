"""Policy-specific Prometheus metrics, named after vLLM's where they map
(vllm:time_to_first_token_seconds → rlhf_time_to_first_token_seconds, ...)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

TIME_TO_FIRST_TOKEN = Histogram(
    "rlhf_time_to_first_token_seconds", "from request accepted to its first generated token", buckets=LATENCY_BUCKETS
)
E2E_REQUEST_LATENCY = Histogram(
    "rlhf_e2e_request_latency_seconds", "from request accepted to its last sequence finished", buckets=LATENCY_BUCKETS
)
NUM_REQUESTS_RUNNING = Gauge("rlhf_num_requests_running", "requests in the batch being decoded")
NUM_REQUESTS_WAITING = Gauge("rlhf_num_requests_waiting", "requests queued for the next batch")
GENERATION_TOKENS = Counter("rlhf_generation_tokens", "tokens generated (all sequences)")
PROMPT_TOKENS = Counter("rlhf_prompt_tokens", "prompt tokens processed (once per sequence)")
BATCH_SIZE = Histogram(
    "rlhf_batch_size", "sequences (rows) per decoded batch", buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128)
)
FINISHED_SEQUENCES = Counter("rlhf_finished_sequences", "sequences finished, by reason", ["reason"])
BASE_LOADS = Counter(
    "rlhf_policy_base_loads", "full-weights models read from disk (an adapter swap on a resident base reads none)"
)
MODEL_LOAD_SECONDS = Histogram(
    "rlhf_policy_model_load_seconds",
    "time to load a version: 'full' read a full-weights model, 'adapter' loaded an adapter onto a resident base, "
    "'resident' reused both",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

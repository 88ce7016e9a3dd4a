"""Policy service settings (flags > RLHF_* env > defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.policy.engine import EngineSettings
from services.policy.sampling import SamplingDefaults
from shared import env
from shared.config import check, setting
from shared.service_config import ServiceConfig


@dataclass(frozen=True)
class PolicyConfig(ServiceConfig):
    """Policy service: batched text generation from a causal LM over gRPC."""

    port: int = setting(50051, "gRPC port (0 picks a free port)", env=env.PORT)
    metrics_port: int = setting(
        9101, "Prometheus /metrics port (0 picks a free port, -1 disables)", env=env.METRICS_PORT
    )
    model_dir: str = setting(
        "", "serve this Hugging Face causal-LM directory instead of the model store", env=env.POLICY_MODEL_DIR
    )
    policy_version: str = setting(
        "",
        "model store version to serve at start (default: the store's CURRENT); "
        "with --model-dir, the version label to report",
        env=env.POLICY_VERSION,
    )
    watch_updates: bool = setting(
        True,
        "consume rlhf.model-updates.v1 and hot-swap to each promoted policy version (needs --model-store)",
        env=env.POLICY_WATCH_UPDATES,
    )
    device: str = setting("cpu", "torch device, e.g. cpu or cuda:0", env=env.DEVICE)
    torch_threads: int = setting(
        0,
        "torch intra-op threads; 0 = measure while serving and keep the faster of (cores - 1) and (cores)",
        env=env.POLICY_TORCH_THREADS,
    )
    max_batch_size: int = setting(32, "most sequences decoded together in one batch", env=env.MAX_BATCH_SIZE)
    batch_wait_ms: float = setting(
        20.0,
        "longest wait for the next batch to fill up to the size of the last one (a lone caller never waits)",
        env=env.BATCH_WAIT_MS,
    )
    continuous_batching: bool = setting(
        True,
        "let waiting requests join the running batch between decode steps (false: they wait for the next batch)",
        env=env.POLICY_CONTINUOUS_BATCHING,
    )
    stream_interval: int = setting(
        4,
        "GenerateStream: tokens per message after the first text (the first is sent at once); 1 sends every "
        "token, more costs less CPU per token under load (see docs/BENCHMARKS.md)",
        env=env.POLICY_STREAM_INTERVAL,
    )
    max_queue: int = setting(
        256, "requests allowed to wait for a batch; beyond it calls get RESOURCE_EXHAUSTED", env=env.MAX_QUEUE
    )
    max_new_tokens_cap: int = setting(512, "largest max_new_tokens a request may ask for", env=env.MAX_NEW_TOKENS_CAP)
    max_return_sequences: int = setting(
        4, "largest num_return_sequences a request may ask for", env=env.MAX_RETURN_SEQUENCES
    )
    max_chat_messages: int = setting(
        256,
        "most chat messages a request may send (its rendered prompt must also fit the context window)",
        env=env.POLICY_MAX_CHAT_MESSAGES,
    )
    default_max_new_tokens: int = setting(
        64, "max_new_tokens when a request leaves it unset", env=env.POLICY_DEFAULT_MAX_NEW_TOKENS
    )
    default_temperature: float = setting(
        1.0, "temperature when a request leaves it unset (0 = greedy)", env=env.POLICY_DEFAULT_TEMPERATURE
    )
    default_top_p: float = setting(1.0, "top_p when a request leaves it unset", env=env.POLICY_DEFAULT_TOP_P)
    default_top_k: int = setting(0, "top_k when a request leaves it unset (0 = off)", env=env.POLICY_DEFAULT_TOP_K)
    event_buffer: int = setting(
        10_000, "generation events kept in memory while the broker is unreachable", env=env.EVENT_BUFFER
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.torch_threads >= 0, "torch_threads", f"must be >= 0, got {self.torch_threads}")
        check(self.stream_interval >= 1, "stream_interval", f"must be >= 1, got {self.stream_interval}")
        check(self.max_batch_size >= 1, "max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        check(0 <= self.batch_wait_ms <= 1000, "batch_wait_ms", f"must be in 0..1000, got {self.batch_wait_ms}")
        check(self.max_queue >= 1, "max_queue", f"must be >= 1, got {self.max_queue}")
        check(self.max_new_tokens_cap >= 1, "max_new_tokens_cap", f"must be >= 1, got {self.max_new_tokens_cap}")
        check(self.max_return_sequences >= 1, "max_return_sequences", f"must be >= 1, got {self.max_return_sequences}")
        check(
            self.max_return_sequences <= self.max_batch_size,
            "max_return_sequences",
            f"must be <= --max-batch-size ({self.max_batch_size}), got {self.max_return_sequences}",
        )
        check(
            1 <= self.default_max_new_tokens <= self.max_new_tokens_cap,
            "default_max_new_tokens",
            f"must be in 1..--max-new-tokens-cap ({self.max_new_tokens_cap}), got {self.default_max_new_tokens}",
        )
        check(self.default_temperature >= 0, "default_temperature", f"must be >= 0, got {self.default_temperature}")
        check(0 < self.default_top_p <= 1, "default_top_p", f"must be in (0, 1], got {self.default_top_p}")
        check(self.default_top_k >= 0, "default_top_k", f"must be >= 0, got {self.default_top_k}")
        check(self.max_chat_messages >= 1, "max_chat_messages", f"must be >= 1, got {self.max_chat_messages}")
        check(self.event_buffer >= 1, "event_buffer", f"must be >= 1, got {self.event_buffer}")
        check(
            bool(self.model_dir or self.model_store),
            "model_dir",
            "set --model-dir or --model-store so there is a model to serve",
        )

    @property
    def thread_choices(self) -> tuple[int, ...]:
        # One thread per core (torch's default) is fastest on an idle machine,
        # but when the cores are shared (gRPC threads, other processes) the
        # OpenMP workers stall each other; the engine measures which wins.
        if self.torch_threads:
            return (self.torch_threads,)
        cores = os.cpu_count() or 1
        return tuple(sorted({max(1, cores - 1), cores}))

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        return SamplingDefaults(
            max_new_tokens=self.default_max_new_tokens,
            temperature=self.default_temperature,
            top_p=self.default_top_p,
            top_k=self.default_top_k,
            max_new_tokens_cap=self.max_new_tokens_cap,
            max_return_sequences=self.max_return_sequences,
        )

    @property
    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            max_batch_size=self.max_batch_size,
            batch_wait_s=self.batch_wait_ms / 1000.0,
            max_queue=self.max_queue,
            thread_choices=self.thread_choices,
            continuous_batching=self.continuous_batching,
            max_chat_messages=self.max_chat_messages,
            stream_interval=self.stream_interval,
            sampling=self.sampling_defaults,
        )

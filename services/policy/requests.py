"""The policy engine's request types, shared by the scheduler (engine.py), the
batched decoder (batcher.py) and the gRPC servicer (server.py).

Kept in their own module, as vLLM keeps its request types apart from the
engine core, so the engine and the decoder import these and never each other's
internals. No torch and no grpc here.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from services.policy import metrics as pm
from services.policy.sampling import SamplingRequest, SamplingSpec
from shared.models.prompting import ChatMessage


class FinishReason(enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SequenceResult:
    index: int
    generation_id: str
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    seed: int


@dataclass(frozen=True)
class StreamChunk:
    index: int
    generation_id: str
    text_delta: str
    finish_reason: FinishReason | None
    completion_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    model_version: str
    prompt_tokens: int
    sequences: list[SequenceResult]


@dataclass
class GenerationHandle:
    """One submitted request: the caller waits on it; the scheduler fills it."""

    prompt: str  # the text prompt_ids encode: the raw prompt, or ``messages`` rendered by tokenized_by's template
    spec: SamplingSpec
    stream: bool
    request_id: str
    prompt_ids: list[int]
    tokenized_by: str  # model version whose tokenizer produced prompt_ids
    generation_ids: list[str]
    messages: tuple[ChatMessage, ...] = ()  # the request's chat; empty for a raw prompt
    sampling: SamplingRequest | None = None  # the fields as sent, when ``spec`` came from defaults per version
    submitted_at: float = field(default_factory=time.perf_counter)
    model_version: str = ""
    first_token_at: float | None = None
    results: dict[int, SequenceResult] = field(default_factory=dict)
    error: BaseException | None = None
    cancelled: bool = False
    _done: threading.Event = field(default_factory=threading.Event)
    _chunks: queue.SimpleQueue[StreamChunk | None] = field(default_factory=queue.SimpleQueue)

    def cancel(self) -> None:
        """The caller went away: stop spending tokens on it."""
        self.cancelled = True

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return GenerationResult(
            self.request_id, self.model_version, len(self.prompt_ids), [self.results[i] for i in sorted(self.results)]
        )

    def chunks(self) -> Iterator[StreamChunk]:
        """Text deltas as they are decoded (streaming handles only). Deltas that
        queued up while the caller was busy sending come out merged, one chunk
        per sequence: a caller that falls behind catches up in fewer messages."""
        ended = False
        while not ended:
            pending = [self._chunks.get()]
            while pending[-1] is not None and not self._chunks.empty():
                pending.append(self._chunks.get_nowait())
            if pending[-1] is None:
                pending.pop()
                ended = True
            yield from merge_chunks(pending)
        if self.error is not None:
            raise self.error

    # --- called by the scheduler thread ----------------------------------
    def emit(self, chunk: StreamChunk) -> None:
        if self.stream:
            self._chunks.put(chunk)

    def finish_sequence(self, result: SequenceResult) -> None:
        self.results[result.index] = result
        if len(self.results) == self.spec.num_return_sequences:
            self._complete()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self.error = error
            self._complete()

    def _complete(self) -> None:
        self._done.set()
        self._chunks.put(None)
        if self.error is None:
            pm.E2E_REQUEST_LATENCY.observe(time.perf_counter() - self.submitted_at)


def merge_chunks(chunks: list[StreamChunk]) -> list[StreamChunk]:
    """One chunk per sequence index (in order of first appearance): deltas
    joined, finish reason and token count from the latest."""
    merged: dict[int, StreamChunk] = {}
    for chunk in chunks:
        previous = merged.get(chunk.index)
        if previous is not None:
            chunk = StreamChunk(
                chunk.index,
                chunk.generation_id,
                previous.text_delta + chunk.text_delta,
                chunk.finish_reason,
                chunk.completion_tokens,
            )
        merged[chunk.index] = chunk
    return list(merged.values())

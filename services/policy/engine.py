"""The generation engine core: a request queue, a scheduler thread that
gathers waiting requests into batches, and the batched decode (batcher.py).
The request types both share live in requests.py, so neither imports the other's
internals.

The split follows vLLM's engine client / engine core: gRPC handler threads
call :meth:`GenerationEngine.submit` and wait on the returned handle; one
scheduler thread owns the model and runs one batch at a time. Handler threads
never touch torch, so the per-request cost on the serving side is a queue
put and an event wait, independent of the number of tokens. No grpc here.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.policy import metrics as pm
from services.policy.batcher import BatchDecoder
from services.policy.model import ModelBundle
from services.policy.requests import GenerationHandle
from services.policy.resident import collect_unused
from services.policy.sampling import SamplingDefaults, SamplingRequest, SamplingSpec
from shared.errors import InvalidArgument, ResourceExhausted, Unavailable, require
from shared.kafka.events import new_id
from shared.models.prompting import ChatMessage, PromptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    max_batch_size: int = 32
    # Longest wait for more requests before starting a batch smaller than the
    # last one: a few ms buys a much larger batch under load; a lone caller
    # (last batch of one) never waits.
    batch_wait_s: float = 0.02
    max_queue: int = 256
    # torch intra-op thread counts the decoder may pick between (the fastest
    # one, measured as it runs); empty leaves torch's setting alone.
    thread_choices: tuple[int, ...] = ()
    # Let requests join a running batch between steps (see batcher.py).
    continuous_batching: bool = True
    # Most messages a chat request may send.
    max_chat_messages: int = 256
    # Tokens per streamed message after a row's first text (see batcher.py):
    # every message costs the decoder a detokenization and a hand-off to a gRPC
    # thread that then competes with it for the GIL and the cores.
    stream_interval: int = 4
    # Reuse the KV of prompt prefixes seen recently (a chat template's system
    # prompt; see services/policy/prefix_cache.py).
    prefix_caching: bool = True
    # What a SamplingRequest's unset fields mean when the version's model sets no default of its own.
    sampling: SamplingDefaults = SamplingDefaults()


class GenerationEngine:
    """Owns the serving model; batches concurrent requests; swaps versions
    between batches (in-flight batches finish on the weights they started on)."""

    def __init__(self, bundle: ModelBundle, settings: EngineSettings = EngineSettings()):
        self.settings = settings
        self._bundle = bundle
        self._decoder = BatchDecoder(
            settings.thread_choices, settings.max_batch_size, settings.stream_interval, settings.prefix_caching
        )
        self._running: list[GenerationHandle] = []
        self._queue: collections.deque[GenerationHandle] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._last_batch_rows = 1
        self._thread = threading.Thread(target=self._run, name="policy-scheduler", daemon=True)
        self._started = False

    # --- client side --------------------------------------------------------
    @property
    def bundle(self) -> ModelBundle:
        return self._bundle

    def start(self) -> GenerationEngine:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def swap(self, bundle: ModelBundle) -> str:
        """Serve ``bundle`` from the next batch on; returns the previous version."""
        with self._cond:
            previous, self._bundle = self._bundle.version, bundle
        log.info("model swapped", extra={"from_version": previous, "to_version": bundle.version})
        return previous

    def prompt_text(self, bundle: ModelBundle, prompt: str, messages: Sequence[ChatMessage]) -> tuple[str, str]:
        """(text to encode, request field it came from): ``prompt`` as is, or
        ``messages`` rendered with ``bundle``'s chat template. Exactly one must be set."""
        if messages:
            require(not prompt, "messages", "set either `prompt` (raw text) or `messages` (a chat), not both")
            try:
                return bundle.render(messages, self.settings.max_chat_messages), "messages"
            except PromptError as exc:
                raise InvalidArgument(exc.field, exc.message) from exc
        require(bool(prompt), "prompt", "must not be empty (send a raw `prompt` or chat `messages`)")
        return prompt, "prompt"

    def tokenize_prompt(
        self, bundle: ModelBundle, prompt: str, spec: SamplingSpec, messages: Sequence[ChatMessage] = ()
    ) -> tuple[str, list[int]]:
        """(prompt text, its ids), checked to fit the context window; raises InvalidArgument."""
        text, field = self.prompt_text(bundle, prompt, messages)
        ids = bundle.encode(text)
        require(bool(ids), field, "encodes to no tokens")
        window = bundle.context_window
        require(
            len(ids) < window,
            field,
            f"is {len(ids)} tokens; the model's context window is {window} tokens "
            "(prompt plus at least one generated token must fit)",
        )
        if spec.explicit_max_new_tokens:
            require(
                len(ids) + spec.max_new_tokens <= window,
                "sampling.max_new_tokens",
                f"prompt ({len(ids)} tokens) + max_new_tokens ({spec.max_new_tokens}) exceeds the "
                f"context window of {window} tokens",
            )
        return text, ids

    def resolve(self, bundle: ModelBundle, sampling: SamplingSpec | SamplingRequest) -> SamplingSpec:
        """A request's spec for ``bundle``: unset fields take its model's defaults, else the server's."""
        if isinstance(sampling, SamplingSpec):
            return sampling
        return sampling.resolve(bundle.sampling_defaults(self.settings.sampling))

    def submit(
        self,
        prompt: str,
        sampling: SamplingSpec | SamplingRequest,
        *,
        messages: Sequence[ChatMessage] = (),
        stream: bool = False,
        request_id: str = "",
    ) -> GenerationHandle:
        """Queue a request for a raw ``prompt`` or chat ``messages`` (exactly one);
        raises InvalidArgument, ResourceExhausted or Unavailable. A SamplingRequest is
        resolved against the version that tokenizes it (again if a swap comes first)."""
        bundle = self._bundle
        spec = self.resolve(bundle, sampling)
        text, ids = self.tokenize_prompt(bundle, prompt, spec, messages)
        handle = GenerationHandle(
            prompt=text,
            spec=spec,
            stream=stream,
            request_id=request_id or new_id(),
            prompt_ids=ids,
            tokenized_by=bundle.version,
            generation_ids=[new_id() for _ in range(spec.num_return_sequences)],
            messages=tuple(messages),
            sampling=sampling if isinstance(sampling, SamplingRequest) else None,
        )
        with self._cond:
            if self._stopping:
                raise Unavailable("the policy is shutting down; retry on another replica")
            if len(self._queue) >= self.settings.max_queue:
                raise ResourceExhausted(
                    f"generation queue is full ({len(self._queue)} requests waiting, --max-queue "
                    f"{self.settings.max_queue}); retry later",
                    retry_after_s=1.0,
                )
            self._queue.append(handle)
            pm.NUM_REQUESTS_WAITING.set(len(self._queue))
            self._cond.notify()
        return handle

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued ones, then end the scheduler."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout_s)
        self._decoder.tuner.restore()

    # --- scheduler side -----------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, bundle = self._next_batch()
            if not batch:
                return
            self._running = list(batch)
            pm.NUM_REQUESTS_RUNNING.set(len(batch))
            admit = self._admit if self.settings.continuous_batching else None
            try:
                self._decoder.run(bundle, batch, admit)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop serving
                log.exception("batch decode failed", extra={"batch_requests": len(self._running)})
                for handle in self._running:
                    handle.fail(exc)
            finally:
                self._running = []
                pm.NUM_REQUESTS_RUNNING.set(0)
            del batch, bundle  # a bundle swapped out may be unused now: let its adapter go
            collect_unused()

    def _admit(self, bundle: ModelBundle, free_rows: int, width: int, remaining: int) -> list[GenerationHandle]:
        """Requests that may join the running batch now (called between decode steps)."""
        if not self._queue:  # the common case, without taking the lock
            return []
        with self._cond:
            if self._bundle is not bundle:
                return []  # a swap is waiting: this batch drains on its weights, newcomers get the new ones
            taken = self._take(bundle, free_rows, width, remaining)
            pm.NUM_REQUESTS_WAITING.set(len(self._queue))
        if taken:
            self._running = [h for h in self._running if not h.done()] + taken
            pm.NUM_REQUESTS_RUNNING.set(len(self._running))
        return taken

    def _next_batch(self) -> tuple[list[GenerationHandle], ModelBundle | None]:
        """Wait for work, give latecomers ``batch_wait_s`` to join, take what fits."""
        max_rows = self.settings.max_batch_size
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return [], None
            # Wait for as many rows as the last batch had: under steady load the
            # callers of the last batch come back together, and a batch that
            # starts without them would leave them for a small batch after it.
            target = min(max_rows, self._last_batch_rows)
            deadline = time.monotonic() + self.settings.batch_wait_s
            while self._rows_waiting() < target and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            bundle = self._bundle
            batch = self._take(bundle, max_rows, 0, 0)
            pm.NUM_REQUESTS_WAITING.set(len(self._queue))
            self._last_batch_rows = max(1, sum(h.spec.num_return_sequences for h in batch))
            return batch, bundle

    def _take(self, bundle: ModelBundle, free_rows: int, width: int, remaining: int) -> list[GenerationHandle]:
        """Pop queued requests, in order, while they fit ``free_rows`` rows and
        the window (``width``/``remaining``: the running batch's padded length
        and most tokens still to come; 0 for a new batch). Caller holds the lock."""
        taken: list[GenerationHandle] = []
        rows = 0
        window = bundle.context_window
        while self._queue:
            handle = self._queue[0]
            if handle.cancelled:
                self._queue.popleft()
                handle.fail(Unavailable("cancelled by the caller"))
                continue
            if handle.tokenized_by != bundle.version and not self._retokenize(bundle, handle):
                self._queue.popleft()
                continue
            n = handle.spec.num_return_sequences
            new_width = max(width, len(handle.prompt_ids))
            new_remaining = max(remaining, min(handle.spec.max_new_tokens, window - len(handle.prompt_ids)))
            # Rows get their own position ids, but some architectures size
            # masks or positions from the padded cache length: keep that
            # inside the context window too.
            if rows + n > free_rows or (new_width + new_remaining > window and (taken or width)):
                break
            self._queue.popleft()
            taken.append(handle)
            rows, width, remaining = rows + n, new_width, new_remaining
        return taken

    def _rows_waiting(self) -> int:
        return sum(h.spec.num_return_sequences for h in self._queue)

    def _retokenize(self, bundle: ModelBundle, handle: GenerationHandle) -> bool:
        """A swap happened after the request was queued: use the new tokenizer."""
        try:
            # A chat is rendered again: the new version's template may differ.
            raw_prompt = "" if handle.messages else handle.prompt
            if handle.sampling is not None:  # the new version's sampling defaults
                handle.spec = self.resolve(bundle, handle.sampling)
            handle.prompt, handle.prompt_ids = self.tokenize_prompt(bundle, raw_prompt, handle.spec, handle.messages)
            handle.tokenized_by = bundle.version
            return True
        except InvalidArgument as exc:
            handle.fail(exc)
            return False

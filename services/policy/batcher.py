"""One batched decode: left-padded prefill, then one token per row per step
with a shared KV cache, per-row sampling params, stop strings, token limits
and seeds. Rows that finish are masked out and, once enough have finished,
dropped from the cache so the remaining rows decode faster.

Continuous batching: between steps, requests that arrived after the batch
started are prefilled on their own and joined to the running batch (their
KV cache left-padded to the batch's length), so a newcomer waits one step,
not for the longest request of the batch to finish.

A prefill skips the prompt tokens whose KV the decoder already holds (a
recent prompt's start, or a group's common prefix computed once; see
services.policy.prefix_cache): a chat template's system prompt is most of a
short chat request.

Every forward runs inside ``bundle.step()``: for a LoRA adapter version it
applies the bundle's adapter to the batch's rows (services.policy.resident);
the bundle of a batch is fixed, so every row of a batch uses one adapter today.

Text is decoded per step only for rows that need it (stop strings to look
for, or a streamed message due); other rows are decoded once when they
finish, which keeps per-token Python work small. A streaming row sends its
first text at once and then one message per ``stream_interval`` tokens (and
at its end): under load each message costs a decode, a queue hand-off and a
wake-up of a gRPC thread that competes with this one for the GIL.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.policy import metrics as pm
from services.policy.model import ModelBundle
from services.policy.prefix_cache import Prefix, PrefixCache, mergeable
from services.policy.requests import FinishReason, GenerationHandle, SequenceResult, StreamChunk
from services.policy.sampling import RowSampler, find_stop, streamable_length
from services.policy.threads import ThreadTuner

# Drop finished rows from the KV cache when fewer than this share are still running.
_COMPACT_BELOW = 0.75


class _Row:
    """One returned sequence being decoded."""

    __slots__ = (
        "handle",
        "index",
        "max_new",
        "ids",
        "text",
        "decoded",
        "sent",
        "streamed",
        "interval",
        "finished",
        "eos",
    )

    def __init__(
        self, handle: GenerationHandle, index: int, max_new: int, eos: frozenset[int], stream_interval: int = 1
    ):
        self.handle = handle
        self.index = index
        self.max_new = max_new
        self.ids: list[int] = []
        self.text = ""
        self.decoded = 0  # tokens that ``text`` was decoded from
        self.sent = 0  # characters of text already streamed
        self.streamed = 0  # tokens generated when a message was last due
        self.interval = stream_interval
        self.finished = False
        self.eos = eos

    def add(self, token: int, bundle: ModelBundle) -> None:
        if self.handle.cancelled:
            self._finish(FinishReason.CANCELLED, bundle)
            return
        if token in self.eos:
            self._finish(FinishReason.EOS, bundle)
            return
        self.ids.append(token)
        if self.handle.first_token_at is None:
            self.handle.first_token_at = time.perf_counter()
            pm.TIME_TO_FIRST_TOKEN.observe(self.handle.first_token_at - self.handle.submitted_at)
        stops = self.handle.spec.stop
        stream_due = self._stream_due()
        if stops or stream_due:
            self._decode(bundle)
            if stops:
                at = find_stop(self.text, stops)
                if at >= 0:
                    self.text = self.text[:at]
                    self._finish(FinishReason.STOP_SEQUENCE, bundle)
                    return
        if len(self.ids) >= self.max_new:
            self._finish(FinishReason.LENGTH, bundle)
            return
        if stream_due:
            self.streamed = len(self.ids)
            upto = streamable_length(self.text, stops)
            if upto > self.sent:
                self._emit(self.text[self.sent : upto], None)
                self.sent = upto

    def _stream_due(self) -> bool:
        """A streaming row sends every token until its first text is out, then every ``interval`` tokens."""
        return self.handle.stream and (self.sent == 0 or len(self.ids) - self.streamed >= self.interval)

    def _decode(self, bundle: ModelBundle) -> None:
        self.text = bundle.decode(self.ids)
        self.decoded = len(self.ids)

    def _emit(self, delta: str, reason: FinishReason | None) -> None:
        self.handle.emit(StreamChunk(self.index, self.handle.generation_ids[self.index], delta, reason, len(self.ids)))

    def _finish(self, reason: FinishReason, bundle: ModelBundle) -> None:
        self.finished = True
        if self.decoded != len(self.ids):  # a stop-string cut was decoded (and cut) this step: keep it
            self._decode(bundle)
        if self.handle.stream:
            self._emit(self.text[self.sent :], reason)
            self.sent = len(self.text)
        pm.GENERATION_TOKENS.inc(len(self.ids))
        pm.FINISHED_SEQUENCES.labels(reason.value).inc()
        self.handle.finish_sequence(
            SequenceResult(
                self.index,
                self.handle.generation_ids[self.index],
                self.text,
                reason,
                len(self.ids),
                self.handle.spec.row_seed(self.index),
            )
        )


def _cache_kwarg(model) -> str:
    # transformers 5 renames past_key_values → cache model by model.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# (bundle, free rows, padded length of the batch, most tokens any running row
# may still generate) → requests to join the batch now.
Admit = Callable[[ModelBundle, int, int, int], list[GenerationHandle]]


@dataclass
class _Running:
    """A batch between two steps: its rows and the tensors that go with them."""

    rows: list[_Row]
    cache: object
    mask: torch.Tensor  # [B, L] 1 = real token
    next_pos: torch.Tensor  # [B, 1] position id of the next token
    logits: torch.Tensor  # [B, V] for the next token
    sampler: RowSampler

    def remaining(self) -> int:
        return max((r.max_new - len(r.ids) for r in self.rows if not r.finished), default=0)


class BatchDecoder:
    """Runs one batch to completion on one model bundle, admitting latecomers."""

    def __init__(
        self,
        thread_choices: tuple[int, ...] = (),
        max_rows: int = 32,
        stream_interval: int = 1,
        prefix_caching: bool = True,
    ):
        self.tuner = ThreadTuner(thread_choices)
        self.max_rows = max_rows
        self.stream_interval = stream_interval
        self.prefixes = PrefixCache() if prefix_caching else None

    def run(self, bundle: ModelBundle, handles: list[GenerationHandle], admit: Admit | None = None) -> None:
        with torch.inference_mode():
            batch = self._prefill(bundle, handles)
            pm.BATCH_SIZE.observe(len(batch.rows))
            if not mergeable(batch.cache):
                admit = None
            self._decode(bundle, batch, admit)

    def _prefill(self, bundle: ModelBundle, handles: list[GenerationHandle]) -> _Running:
        rows: list[_Row] = []
        for handle in handles:
            handle.model_version = bundle.version
            room = bundle.context_window - len(handle.prompt_ids)
            for i in range(handle.spec.num_return_sequences):
                rows.append(
                    _Row(handle, i, min(handle.spec.max_new_tokens, room), bundle.eos_token_ids, self.stream_interval)
                )
            pm.PROMPT_TOKENS.inc(len(handle.prompt_ids) * handle.spec.num_return_sequences)
        prompts = [r.handle.prompt_ids for r in rows]
        prefix = self._prefix(bundle, prompts)
        cache, mask, positions, logits = self._forward(bundle, prompts, prefix)
        if self.prefixes is not None and prefix is None and len(rows) == 1 and mergeable(cache):
            self.prefixes.remember(bundle, prompts[0], cache)  # a lone prompt: the next may share its start
        sampler = RowSampler([r.handle.spec for r in rows], [r.handle.spec.row_seed(r.index) for r in rows])
        return _Running(rows, cache, mask, positions[:, -1:] + 1, logits, sampler)

    def _prefix(self, bundle: ModelBundle, prompts: list[list[int]]) -> Prefix | None:
        """A cached prefix all ``prompts`` start with; else, for a group, their common
        prefix computed once now (services.policy.prefix_cache); None: prefill them whole."""
        if self.prefixes is None:
            return None
        prefix = self.prefixes.lookup(bundle, prompts)
        shared = self.prefixes.shared_prefix(prompts) if prefix is None else 0
        if shared:
            head = prompts[0][:shared]
            cache = self._forward(bundle, [head], None)[0]
            if not mergeable(cache):  # this architecture's cache cannot take a prefix: stop trying
                self.prefixes = None
                return None
            self.prefixes.remember(bundle, head, cache)
            prefix = self.prefixes.lookup(bundle, prompts)
        return prefix

    def _forward(self, bundle: ModelBundle, prompts: list[list[int]], prefix: Prefix | None):
        """Prefill ``prompts`` (after ``prefix``'s tokens, whose KV it copies to every row), left-padded:
        (cache, mask [B, L], position ids [B, fed tokens], last logits [B, V])."""
        skip = prefix.length if prefix is not None else 0
        width = max(len(p) for p in prompts) - skip
        input_ids = torch.full((len(prompts), width), bundle.pad_token_id, dtype=torch.long)
        fed = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, ids in enumerate(prompts):
            input_ids[b, width - len(ids) + skip :] = torch.tensor(ids[skip:], dtype=torch.long)
            fed[b, width - len(ids) + skip :] = 1
        positions = skip + (fed.cumsum(-1) - 1).clamp_(min=0)
        # The prefix's columns come first; a shorter prompt's padding sits between them and its own tokens.
        mask = fed if prefix is None else torch.cat([torch.ones((len(prompts), skip), dtype=torch.long), fed], dim=1)
        device, model = bundle.device, bundle.model
        past = {} if prefix is None else {_cache_kwarg(model): prefix.cache_for(len(prompts))}
        with bundle.step():  # the bundle's adapter (if any) on its rows
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=1,
                **past,
            )
        return getattr(out, _cache_kwarg(model)), mask, positions, out.logits[:, -1, :]

    def _decode(self, bundle: ModelBundle, batch: _Running, admit: Admit | None) -> None:
        model, device = bundle.model, bundle.device
        cache_kw = _cache_kwarg(model)
        self.tuner.abandon_probe()
        while True:
            tokens = batch.sampler.next_tokens(batch.logits.cpu())
            for row, token in zip(batch.rows, tokens.tolist()):
                if not row.finished:
                    row.add(token, bundle)
            running = [b for b, row in enumerate(batch.rows) if not row.finished]
            if not running:
                return
            if len(running) < _COMPACT_BELOW * len(batch.rows):
                tokens = tokens[self._compact(batch, running)]
            batch.mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
            threads = self.tuner.threads_for_next_step()
            started = time.perf_counter()
            with bundle.step():
                out = model(
                    input_ids=tokens[:, None].to(device),
                    attention_mask=batch.mask.to(device),
                    position_ids=batch.next_pos.to(device),
                    use_cache=True,
                    **{cache_kw: batch.cache},
                )
            self.tuner.record(threads, time.perf_counter() - started)
            batch.cache = getattr(out, cache_kw)
            batch.logits = out.logits[:, -1, :]
            batch.next_pos = batch.next_pos + 1
            if admit is not None:
                self._admit(bundle, batch, admit)

    def _admit(self, bundle: ModelBundle, batch: _Running, admit: Admit) -> None:
        """Join waiting requests to the batch. Rows that finished since the last
        compaction leave first: the join copies the whole KV cache anyway, so
        dropping them then costs nothing more, and a finished row left in
        the batch costs a row's share of every later step (under a steady load
        newcomers keep the batch from ever falling below ``_COMPACT_BELOW``)."""
        running = [b for b, row in enumerate(batch.rows) if not row.finished]
        free = self.max_rows - len(running)
        if free <= 0:
            return
        joining = admit(bundle, free, batch.mask.shape[1], batch.remaining())
        if not joining:
            return
        if len(running) < len(batch.rows):
            self._compact(batch, running)
        self._join(batch, self._prefill(bundle, joining))

    def _compact(self, batch: _Running, running: list[int]) -> torch.Tensor:
        """Keep only the rows ``running`` (the cache, mask and sampler with them); returns their index."""
        keep = torch.tensor(running, dtype=torch.long)
        batch.cache.batch_select_indices(keep.to(batch.logits.device))
        batch.rows = [batch.rows[b] for b in running]
        batch.sampler = batch.sampler.select(running)
        batch.mask, batch.next_pos, batch.logits = batch.mask[keep], batch.next_pos[keep], batch.logits[keep]
        # Columns no remaining row attends to (padding of rows that left): drop them.
        first = int(batch.mask.any(dim=0).nonzero()[0])
        if first > 0 and mergeable(batch.cache):
            batch.mask = batch.mask[:, first:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.tuner.abandon_probe()
        return keep

    def _join(self, batch: _Running, new: _Running) -> None:
        """Left-pad the shorter KV cache and mask, then stack the rows."""
        width = max(batch.mask.shape[1], new.mask.shape[1])

        def pad_kv(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (0, 0, width - t.shape[2], 0))

        for old_layer, new_layer in zip(batch.cache.layers, new.cache.layers):
            old_layer.keys = torch.cat([pad_kv(old_layer.keys), pad_kv(new_layer.keys)])
            old_layer.values = torch.cat([pad_kv(old_layer.values), pad_kv(new_layer.values)])
        batch.mask = torch.cat(
            [F.pad(batch.mask, (width - batch.mask.shape[1], 0)), F.pad(new.mask, (width - new.mask.shape[1], 0))]
        )
        batch.next_pos = torch.cat([batch.next_pos, new.next_pos])
        batch.logits = torch.cat([batch.logits, new.logits])
        batch.sampler = RowSampler.concat(batch.sampler, new.sampler)
        batch.rows = batch.rows + new.rows
        pm.BATCH_SIZE.observe(len(batch.rows))
        self.tuner.abandon_probe()

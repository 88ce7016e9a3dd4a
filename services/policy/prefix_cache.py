"""Prefix caching for prefills: the KV cache of a prompt's first tokens,
computed once and reused by later prompts that start with the same tokens.

Why: a chat model's template puts the same system prompt in front of every
request (SmolLM2-Instruct: 24 of a typical request's ~38 prompt tokens), and
prefills were a quarter of the policy's CPU time serving it to 32 streaming
clients (py-spy, 48 new tokens per request). Causal attention makes the keys and values of a prompt's first
``p`` tokens depend only on those ``p`` tokens (at positions 0..p-1), so they
serve any prompt that starts with them, as vLLM's automatic prefix caching
does with its KV blocks.

What is kept: up to ``max_entries`` token sequences with their per-layer
keys and values (batch of one), least recently used first out, for one model
bundle at a time (a swap or another adapter empties it: the KV depends on
the weights). Entries come from a prompt prefilled alone (its whole prompt)
and from a group of prompts prefilled together whose common prefix is long
enough (that prefix, computed once for the group). A prefill then feeds the
model only the rest of each prompt, with the prefix's KV copied to every row
and the prompts' left padding after the prefix (masked, like the padding on
the left of a batch); each row keeps its own position ids.

Only for plain per-layer caches (the DynamicLayer caches continuous batching
already requires); the scheduler thread alone uses it, so no lock.
"""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass

import torch

# Fewer shared tokens than this are prefilled as usual: the copy of the
# prefix's KV to every row and the bookkeeping would cost about what they save.
MIN_PREFIX_TOKENS = 8


def mergeable(cache) -> bool:
    """Only plain per-layer key/value tensors can be padded, joined and given a prefix."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        token = first[i]
        if any(s[i] != token for s in sequences):
            return i
    return n


@dataclass
class Prefix:
    """The first ``length`` tokens' keys and values (per layer, batch of one)."""

    length: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def cache_for(self, rows: int):
        """A fresh KV cache holding this prefix for each of ``rows`` rows."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.layers):
            shape = (rows, -1, self.length, -1)
            cache.update(keys[:, :, : self.length].expand(shape), values[:, :, : self.length].expand(shape), index)
        return cache


class PrefixCache:
    """Recently prefilled prompt prefixes of one bundle, with their KV."""

    def __init__(self, max_entries: int = 8, max_tokens: int = 512, min_tokens: int = MIN_PREFIX_TOKENS):
        self.max_entries = max_entries
        self.max_tokens = max_tokens  # longest prefix kept (its KV grows with it)
        self.min_tokens = min_tokens
        self._entries: collections.OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]
        self._entries = collections.OrderedDict()
        self._owner: weakref.ref | None = None  # not a strong ref: a bundle swapped out must be collectable
        self.hits = 0  # prefills that reused a prefix (for tests and logs)

    def _use(self, bundle) -> None:
        if self._owner is None or self._owner() is not bundle:
            self._entries.clear()
            self._owner = weakref.ref(bundle)

    def lookup(self, bundle, prompts: list[list[int]]) -> Prefix | None:
        """The longest kept prefix every prompt starts with (leaving each at least one token to feed)."""
        self._use(bundle)
        best_key, best = None, 0
        limit = min(len(p) for p in prompts) - 1
        for key in self._entries:
            n = common_prefix_length([list(key[:limit]), *(p[:limit] for p in prompts)])
            if n > best:
                best_key, best = key, n
        if best_key is None or best < self.min_tokens:
            return None
        self._entries.move_to_end(best_key)
        self.hits += 1
        return Prefix(best, self._entries[best_key])

    def remember(self, bundle, ids: list[int], cache, row: int = 0) -> None:
        """Keep the KV of ``ids`` (row ``row`` of ``cache``, whose last ``len(ids)`` columns hold them)."""
        self._use(bundle)
        n = min(len(ids), self.max_tokens)
        if n < self.min_tokens:
            return
        start = cache.layers[0].keys.shape[2] - len(ids)
        layers = [
            (layer.keys[row : row + 1, :, start : start + n], layer.values[row : row + 1, :, start : start + n])
            for layer in cache.layers
        ]
        # A view of the batch's prefill cache would keep all its rows alive: keep a copy of this row.
        if cache.layers[0].keys.shape[0] > 1 or start > 0:
            layers = [(k.clone(), v.clone()) for k, v in layers]
        key = tuple(ids[:n])
        self._entries[key] = layers
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def shared_prefix(self, prompts: list[list[int]]) -> int:
        """Tokens worth computing once for a group prefilled together (0: not worth it)."""
        if len(prompts) < 2:
            return 0
        n = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1, self.max_tokens)
        return n if n >= self.min_tokens else 0

"""Prefix caching (services/policy/prefix_cache.py): what is kept and reused, and
that reusing a prompt prefix's KV leaves every generated text unchanged."""

from __future__ import annotations

import pytest
import torch

from services.policy.engine import EngineSettings, GenerationEngine
from services.policy.model import load_bundle
from services.policy.prefix_cache import PrefixCache, common_prefix_length
from services.policy.sampling import SamplingDefaults, resolve_sampling

DEFAULTS = SamplingDefaults(max_new_tokens=12, max_new_tokens_cap=100)
# A shared start (as a chat template's system prompt would be) and different ends.
SHARED = "User: what is the capital of France? Tell me how far the moon is and how to water a plant.\n"
PROMPTS = [SHARED + "Assistant:", SHARED + "Assistant: The", SHARED + "User: hi\nAssistant:"]


class _Layer:
    def __init__(self, rows: int, length: int):
        self.keys = torch.arange(rows * length, dtype=torch.float32).reshape(rows, 1, length, 1)
        self.values = -self.keys


class _Cache:
    def __init__(self, rows: int, length: int, layers: int = 2):
        self.layers = [_Layer(rows, length) for _ in range(layers)]


class _Bundle:
    """Stands for a model bundle: the cache only needs its identity."""


@pytest.fixture(scope="module")
def bundle(tiny_lm_dir):
    return load_bundle(tiny_lm_dir, "v1")


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5], [6]]) == 0


def test_lookup_finds_the_longest_kept_prefix_and_leaves_a_token_to_feed():
    cache, owner = PrefixCache(min_tokens=2), _Bundle()
    cache.remember(owner, [1, 2, 3, 4], _Cache(1, 4))
    cache.remember(owner, [1, 2, 9], _Cache(1, 3))
    prefix = cache.lookup(owner, [[1, 2, 3, 4, 5], [1, 2, 3, 7]])
    assert prefix is not None and prefix.length == 3
    assert cache.lookup(owner, [[1, 2, 3, 4]]).length == 3  # the whole prompt is never skipped
    assert cache.lookup(owner, [[8, 1, 2]]) is None
    assert cache.lookup(_Bundle(), [[1, 2, 3, 4, 5]]) is None  # another bundle: its weights, its KV


def test_remember_copies_one_row_of_a_batch_and_evicts_the_least_recent():
    cache, owner = PrefixCache(max_entries=2, min_tokens=2), _Bundle()
    batch = _Cache(3, 5)  # row 1's prompt is the last 3 of 5 columns (left-padded)
    cache.remember(owner, [7, 8, 9], batch, row=1)
    kept = cache.lookup(owner, [[7, 8, 9, 1]])
    assert kept is not None and torch.equal(kept.layers[0][0], batch.layers[0].keys[1:2, :, 2:5])
    assert kept.layers[0][0].data_ptr() != batch.layers[0].keys.data_ptr()
    cache.remember(owner, [1, 1, 1], _Cache(1, 3))
    cache.lookup(owner, [[7, 8, 9, 1]])  # used: now the most recent
    cache.remember(owner, [2, 2, 2], _Cache(1, 3))
    assert cache.lookup(owner, [[1, 1, 1, 1]]) is None and cache.lookup(owner, [[7, 8, 9, 1]]) is not None


def test_the_prefix_is_copied_to_every_row():
    cache, owner = PrefixCache(min_tokens=2), _Bundle()
    cache.remember(owner, [1, 2, 3], _Cache(1, 3))
    built = cache.lookup(owner, [[1, 2, 3, 4], [1, 2, 3, 5]]).cache_for(2)
    keys = built.layers[0].keys
    assert keys.shape == (2, 1, 3, 1) and torch.equal(keys[0], keys[1])


def _texts(bundle, prefix_caching: bool, specs) -> list[str]:
    engine = GenerationEngine(bundle, EngineSettings(max_batch_size=8, prefix_caching=prefix_caching))
    batched = [engine.submit(p, s) for p in PROMPTS for s in specs]  # queued together: one batch
    engine.start()
    try:
        texts = [h.result(60).sequences[0].text for h in batched]
        # Then one at a time: each finds the KV of the one before it.
        texts += [engine.submit(p, s).result(60).sequences[0].text for p in PROMPTS for s in specs]
        return texts
    finally:
        engine.stop()


def test_texts_are_the_same_with_and_without_prefix_caching(bundle):
    specs = [resolve_sampling(DEFAULTS, temperature=0), resolve_sampling(DEFAULTS, temperature=0.8, seed=21)]
    fed: list[int] = []
    hook = bundle.model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        cached = _texts(bundle, True, specs)
        prefills_cached = [n for n in fed if n > 1]
        fed.clear()
        plain = _texts(bundle, False, specs)
        prefills_plain = [n for n in fed if n > 1]
    finally:
        hook.remove()
    assert cached == plain
    shortest = min(len(bundle.encode(p)) for p in PROMPTS)
    assert min(prefills_plain) >= shortest and min(prefills_cached) < shortest - 8  # the shared start was not fed again

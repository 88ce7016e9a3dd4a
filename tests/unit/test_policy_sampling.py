"""Sampling params validation, the per-row sampler and stop-string helpers."""

from __future__ import annotations

import math

import pytest
import torch

from services.policy.sampling import (
    RowSampler,
    SamplingDefaults,
    find_stop,
    resolve_sampling,
    streamable_length,
)
from shared.errors import InvalidArgument

DEFAULTS = SamplingDefaults(max_new_tokens=16, max_new_tokens_cap=32, max_return_sequences=2)


def test_unset_fields_take_the_defaults():
    spec = resolve_sampling(DEFAULTS)
    assert (spec.max_new_tokens, spec.temperature, spec.top_p, spec.top_k, spec.num_return_sequences) == (
        16,
        1.0,
        1.0,
        0,
        1,
    )
    assert not spec.explicit_max_new_tokens and 0 <= spec.seed < 2**63


@pytest.mark.parametrize(
    "kwargs, field, says",
    [
        ({"max_new_tokens": 0}, "sampling.max_new_tokens", "must be >= 1"),
        ({"max_new_tokens": 33}, "sampling.max_new_tokens", "<= 32"),
        ({"temperature": -0.1}, "sampling.temperature", ">= 0"),
        ({"temperature": math.nan}, "sampling.temperature", ">= 0"),
        ({"temperature": math.inf}, "sampling.temperature", "finite"),
        ({"top_p": 0.0}, "sampling.top_p", "(0, 1]"),
        ({"top_p": 1.01}, "sampling.top_p", "(0, 1]"),
        ({"top_k": -1}, "sampling.top_k", ">= 0"),
        ({"num_return_sequences": 3}, "sampling.num_return_sequences", "[1, 2]"),
        ({"stop": ["x"] * 9}, "sampling.stop", "at most 8"),
        ({"stop": [""]}, "sampling.stop", "1..256"),
    ],
)
def test_bad_values_name_the_field_and_the_limit(kwargs, field, says):
    with pytest.raises(InvalidArgument) as info:
        resolve_sampling(DEFAULTS, **kwargs)
    assert info.value.field == field and says in info.value.message


def test_greedy_rows_take_the_argmax_and_top_k_1_is_greedy():
    logits = torch.randn(3, 50)
    specs = [
        resolve_sampling(DEFAULTS, temperature=0),
        resolve_sampling(DEFAULTS, top_k=1, seed=1),
        resolve_sampling(DEFAULTS, top_p=1e-6, seed=2),
    ]
    tokens = RowSampler(specs, [s.seed for s in specs]).next_tokens(logits)
    assert tokens.tolist() == logits.argmax(-1).tolist()


def test_a_rows_draws_do_not_depend_on_its_batch_neighbours():
    spec = resolve_sampling(DEFAULTS, temperature=1.0, top_p=0.9, top_k=20, seed=99)
    other = resolve_sampling(DEFAULTS, temperature=0.3, seed=5)
    logits = torch.randn(1, 64)
    alone = RowSampler([spec], [spec.seed])
    batched = RowSampler([other, spec, other], [1, spec.seed, 2])
    for _ in range(20):
        row = torch.cat([torch.randn(1, 64), logits, torch.randn(1, 64)])
        assert alone.next_tokens(logits).item() == batched.next_tokens(row)[1].item()


def test_sampled_frequencies_follow_the_softmax():
    spec = resolve_sampling(DEFAULTS, temperature=1.0, seed=7)
    sampler = RowSampler([spec], [spec.seed])
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.clamp(min=1e-30).log()[None, :]
    draws = torch.tensor([sampler.next_tokens(logits).item() for _ in range(4000)])
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[4] == 0 and torch.allclose(freq[:4], probs[:4], atol=0.03)


def test_top_k_keeps_only_the_k_best():
    spec = resolve_sampling(DEFAULTS, temperature=5.0, top_k=3, seed=0)
    sampler = RowSampler([spec], [spec.seed])
    logits = torch.arange(10, dtype=torch.float32)[None, :]
    assert {sampler.next_tokens(logits).item() for _ in range(100)} <= {7, 8, 9}


def test_select_keeps_the_rows_generators():
    specs = [resolve_sampling(DEFAULTS, seed=i) for i in range(3)]
    full = RowSampler(specs, [s.seed for s in specs])
    part = full.select([2])
    assert part.generators[0] is full.generators[2] and part.top_p.shape == (1,)


def test_find_stop_returns_the_earliest():
    assert find_stop("abc STOP x END", ("END", "STOP")) == 4
    assert find_stop("abc", ("z",)) == -1


def test_streamable_length_holds_back_partial_stops_and_characters():
    assert streamable_length("hello wor", ("world",)) == 6
    assert streamable_length("hello", ()) == 5
    assert streamable_length("abc\ufffd", ()) == 3
    assert streamable_length("the end", ("END",)) == 7

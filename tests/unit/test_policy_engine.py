"""The generation engine on a tiny real GPT-2: agreement with
``model.generate``, batching, limits, the queue bound and swaps."""

from __future__ import annotations

import pytest
import torch

from services.policy.engine import EngineSettings, GenerationEngine
from services.policy.model import load_bundle
from services.policy.requests import FinishReason, StreamChunk, merge_chunks
from services.policy.sampling import SamplingDefaults, resolve_sampling
from shared.errors import InvalidArgument, ResourceExhausted, Unavailable
from tests.helpers import wait_until

DEFAULTS = SamplingDefaults(max_new_tokens=16, max_new_tokens_cap=100, max_return_sequences=4)
PROMPT = "User: how do I boil an egg?\nAssistant:"


@pytest.fixture(scope="module")
def bundle(tiny_lm_dir):
    return load_bundle(tiny_lm_dir, "v1")


@pytest.fixture()
def engine(bundle):
    engine = GenerationEngine(bundle, EngineSettings(max_batch_size=8, batch_wait_s=0.02)).start()
    yield engine
    engine.stop()


def test_bundle_facts(bundle):
    assert bundle.architecture == "GPT2LMHeadModel" and bundle.context_window == 128
    assert bundle.num_parameters == sum(p.numel() for p in bundle.model.parameters())


def test_greedy_matches_model_generate_also_when_batched(engine, bundle):
    prompts = [PROMPT, "User: hi", "User: what is the capital of France?\nAssistant: The"]
    handles = [engine.submit(p, resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=12)) for p in prompts]
    for prompt, handle in zip(prompts, handles):
        ids = bundle.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = bundle.model.generate(**ids, max_new_tokens=12, do_sample=False)
        new = out[0, ids.input_ids.shape[1] :].tolist()
        if bundle.tokenizer.eos_token_id in new:
            new = new[: new.index(bundle.tokenizer.eos_token_id)]
        seq = handle.result(timeout=30).sequences[0]
        assert seq.text == bundle.decode(new) and seq.completion_tokens == len(new)


def test_sequences_of_one_request_differ_and_are_reproducible(engine):
    spec = resolve_sampling(DEFAULTS, temperature=1.0, seed=42, num_return_sequences=3, max_new_tokens=20)
    first = engine.submit(PROMPT, spec).result(timeout=30).sequences
    again = engine.submit(PROMPT, spec).result(timeout=30).sequences
    assert [s.text for s in first] == [s.text for s in again]
    assert len({s.text for s in first}) > 1
    assert len({s.generation_id for s in first + again}) == 6


def test_max_new_tokens_ends_with_length(engine):
    seq = engine.submit(PROMPT, resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=3)).result(30).sequences[0]
    assert seq.completion_tokens <= 3
    assert seq.finish_reason in (FinishReason.LENGTH, FinishReason.EOS)


def test_default_max_new_tokens_is_clipped_to_the_window_but_an_explicit_one_is_refused(engine, bundle):
    prompt = "word " * 20
    n = len(bundle.encode(prompt))
    with pytest.raises(InvalidArgument, match=f"prompt \\({n} tokens\\) \\+ max_new_tokens \\(100\\)"):
        engine.submit(prompt, resolve_sampling(DEFAULTS, max_new_tokens=100))
    defaults = SamplingDefaults(max_new_tokens=100, max_new_tokens_cap=100)
    seq = engine.submit(prompt, resolve_sampling(defaults, temperature=0)).result(30).sequences[0]
    assert seq.completion_tokens <= 128 - n


def test_stream_chunks_end_with_the_finish_reason(engine):
    handle = engine.submit(PROMPT, resolve_sampling(DEFAULTS, temperature=0.7, seed=3), stream=True)
    chunks = list(handle.chunks())
    assert chunks[-1].finish_reason is not None
    assert "".join(c.text_delta for c in chunks) == handle.result().sequences[0].text


def test_queue_full_is_resource_exhausted(bundle):
    engine = GenerationEngine(bundle, EngineSettings(max_queue=1))  # not started: nothing drains the queue
    engine.submit(PROMPT, resolve_sampling(DEFAULTS))
    with pytest.raises(ResourceExhausted, match="--max-queue 1"):
        engine.submit(PROMPT, resolve_sampling(DEFAULTS))


def test_stopped_engine_refuses_work(bundle):
    engine = GenerationEngine(bundle).start()
    engine.stop()
    with pytest.raises(Unavailable):
        engine.submit(PROMPT, resolve_sampling(DEFAULTS))


def test_swap_labels_the_next_batches(engine, tiny_lm_dir):
    other = load_bundle(tiny_lm_dir, "v2")
    assert engine.submit(PROMPT, resolve_sampling(DEFAULTS)).result(30).model_version == "v1"
    assert engine.swap(other) == "v1"
    assert engine.submit(PROMPT, resolve_sampling(DEFAULTS)).result(30).model_version == "v2"


def test_seeded_request_gives_the_same_text_alone_and_batched(bundle):
    spec = resolve_sampling(DEFAULTS, temperature=0.9, top_p=0.9, top_k=30, seed=77, max_new_tokens=20)
    alone_engine = GenerationEngine(bundle).start()
    alone = alone_engine.submit(PROMPT, spec).result(30).sequences[0].text
    alone_engine.stop()
    # Queue everything before the scheduler starts: one batch of six rows with
    # other prompts, lengths and params; theirs finish first and leave the batch.
    engine = GenerationEngine(bundle, EngineSettings(max_batch_size=16))
    for i in range(1, 6):
        engine.submit("hi " * i, resolve_sampling(DEFAULTS, temperature=0.5, seed=i, max_new_tokens=2 + i))
    mine = engine.submit(PROMPT, spec)
    engine.start()
    try:
        assert mine.result(30).sequences[0].text == alone
    finally:
        engine.stop()


def test_a_request_joins_a_running_batch_and_decodes_as_if_alone(bundle):
    seeded = resolve_sampling(DEFAULTS, temperature=1.0, top_k=40, seed=8, max_new_tokens=10)
    greedy = resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=10)
    engine = GenerationEngine(bundle, EngineSettings(max_batch_size=8, batch_wait_s=0)).start()
    try:
        alone = [engine.submit(PROMPT, s).result(30).sequences[0].text for s in (seeded, greedy)]
        long = engine.submit(
            "User: hi", resolve_sampling(DEFAULTS, temperature=0.7, max_new_tokens=100, num_return_sequences=4)
        )
        wait_until(lambda: long.first_token_at is not None, timeout_s=30, interval_s=0.001)
        joined = [engine.submit(PROMPT, s) for s in (seeded, greedy)]
        texts = [h.result(30).sequences[0].text for h in joined]
        assert not long.done()  # they joined it rather than waiting for it to end
        assert texts == alone
        assert long.result(30).model_version == "v1"
    finally:
        engine.stop()


def test_a_finished_rows_slot_goes_to_a_newcomer(bundle):
    # A full batch of 8 rows in which one row ends at once: 7 of 8 still run, above
    # the share that compacts the batch, yet a newcomer takes the finished row's slot.
    engine = GenerationEngine(bundle, EngineSettings(max_batch_size=8, batch_wait_s=0))  # queued before it starts
    longs = [
        engine.submit("User: hi", resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=100, num_return_sequences=n))
        for n in (4, 3)
    ]
    short = engine.submit(PROMPT, resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=1))
    greedy = resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=10)
    engine.start()
    try:
        short.result(30)
        late = engine.submit(PROMPT, greedy)
        text = late.result(30).sequences[0].text
        assert not any(h.done() for h in longs)  # it joined the running batch
        assert all(s.completion_tokens == 100 for h in longs for s in h.result(60).sequences)
        assert text == engine.submit(PROMPT, greedy).result(30).sequences[0].text  # as if alone
    finally:
        engine.stop()


def test_stream_interval_sends_one_message_per_interval_with_the_same_text(bundle):
    sampling = resolve_sampling(DEFAULTS, temperature=0, max_new_tokens=16)
    sent = {}
    for interval in (1, 4):
        engine = GenerationEngine(bundle, EngineSettings(stream_interval=interval)).start()
        try:
            handle = engine.submit(PROMPT, sampling, stream=True)
            text = handle.result(30).sequences[0].text
            # Read the queue unmerged (chunks() merges what queued up): one entry per message the decoder sent.
            queued = [handle._chunks.get_nowait() for _ in range(handle._chunks.qsize())]
            chunks = [c for c in queued if c is not None]
            assert "".join(c.text_delta for c in chunks) == text
            sent[interval] = (text, [c.completion_tokens for c in chunks])
        finally:
            engine.stop()
    (text_1, tokens_1), (text_4, tokens_4) = sent[1], sent[4]
    assert text_1 == text_4 and len(tokens_1) > 8, "the tiny model's greedy answer should stream several tokens"
    first = tokens_4[0]
    assert tokens_4[:-1] == list(range(first, tokens_4[-1], 4)) and tokens_4[-1] == tokens_1[-1]


def test_merge_chunks_joins_deltas_per_sequence():
    chunks = [
        StreamChunk(0, "g0", "a", None, 1),
        StreamChunk(1, "g1", "x", None, 1),
        StreamChunk(0, "g0", "b", FinishReason.LENGTH, 2),
    ]
    assert merge_chunks(chunks) == [
        StreamChunk(0, "g0", "ab", FinishReason.LENGTH, 2),
        StreamChunk(1, "g1", "x", None, 1),
    ]

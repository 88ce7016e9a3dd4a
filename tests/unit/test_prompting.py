"""One prompt -> tokens path: serving, PPO rollouts, SFT / PPO-ptx demonstrations
and evaluation encode a prompt to the same ids, on a tiny Llama-style model
whose tokenizer adds a BOS (the case where they used to disagree)."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from services.policy.engine import EngineSettings, GenerationEngine
from services.policy.model import load_bundle
from services.policy.sampling import SamplingDefaults, resolve_sampling
from services.trainer.methods.rollout import demonstration_batch, tokenize_prompts
from services.trainer.supervised.sft import IGNORE_INDEX, build_sft_example, encode_demonstration
from shared.errors import InvalidArgument
from shared.models.policy_eval import SamplingSettings, sample_responses
from shared.models.prompting import (
    ChatMessage,
    PromptError,
    encode_demonstration_ids,
    encode_prompt,
    keep_last_tokens,
    render_chat,
    response_separator,
)
from tests.foreign_models import CHAT_TEMPLATE, CHAT_TEMPLATE_NO_BOS, build_tiny_llama, tiny_llama_tokenizer

RAW_PROMPT = "User: how do I water a plant?\nAssistant:"
CHAT = (ChatMessage("system", "You are terse."), ChatMessage("user", "how do I boil an egg?"))
SPEC = resolve_sampling(SamplingDefaults(max_new_tokens=8, max_new_tokens_cap=16), temperature=0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The tiny Llama as serving loads it (its tokenizer read back from disk)."""
    return load_bundle(
        build_tiny_llama(tmp_path_factory.mktemp("chat-llama"), chat_template=CHAT_TEMPLATE_NO_BOS), "v1"
    )


@pytest.fixture(scope="module")
def tok(bundle):
    return AutoTokenizer.from_pretrained(bundle.path)  # the trainer loads its own copy


def served_ids(bundle, prompt: str = "", messages=()) -> tuple[str, list[int]]:
    """What the policy service feeds the model for a request (engine.submit, never started)."""
    engine = GenerationEngine(bundle, EngineSettings())
    handle = engine.submit(prompt, SPEC, messages=messages)
    return handle.prompt, handle.prompt_ids


def assert_one_leading_bos(ids: list[int], bos: int) -> None:
    assert ids[0] == bos and bos not in ids[1:], ids[:4]


@pytest.mark.parametrize("chat", [False, True], ids=["raw-prompt", "chat-messages"])
def test_serving_rollouts_demonstrations_and_evaluation_encode_a_prompt_identically(bundle, tok, chat):
    prompt, served = served_ids(bundle, messages=CHAT) if chat else served_ids(bundle, RAW_PROMPT)
    assert prompt == (render_chat(tok, CHAT) if chat else RAW_PROMPT)
    assert_one_leading_bos(served, tok.bos_token_id)

    # PPO rollout: a batch with a longer prompt, so this row is left-padded.
    ids, mask = tokenize_prompts(tok, [prompt, prompt + " and more words"], max_length=200)
    rollout = ids[0][mask[0].bool()].tolist()
    assert mask[0, 0] == 0  # it was padded: the comparison below is of the unpadded row

    # SFT example and PPO-ptx batch: the positions the loss ignores are the prompt.
    sft_ids, sft_labels = build_sft_example(tok, prompt, "Boil it.", 10_000)
    sft_prompt = [t for t, lab in zip(sft_ids, sft_labels) if lab == IGNORE_INDEX]
    batch = demonstration_batch(tok, [(prompt, "Boil it.")], max_prompt_length=200, max_response_length=16)
    ptx_prompt = batch.input_ids[0][(batch.labels[0] == IGNORE_INDEX) & batch.attention_mask[0].bool()].tolist()

    # Evaluation (the gate, `rlhf sft`), batched with a longer prompt too.
    samples = sample_responses(
        bundle.model,
        tok,
        [prompt, prompt + " and more words"],
        SamplingSettings(samples_per_prompt=1, max_new_tokens=2),
    )

    assert rollout == sft_prompt == ptx_prompt == samples[0].prompt_ids == served == encode_prompt(tok, prompt)


def test_a_chat_template_that_writes_its_own_bos_still_gets_one(bundle):
    tokenizer = tiny_llama_tokenizer(chat_template=CHAT_TEMPLATE)
    text = render_chat(tokenizer, CHAT)
    assert text.startswith("<s>") and tokenizer(text)["input_ids"][:2] == [tokenizer.bos_token_id] * 2
    assert_one_leading_bos(encode_prompt(tokenizer, text), tokenizer.bos_token_id)
    prompt, served = served_ids(dataclasses.replace(bundle, tokenizer=tokenizer), messages=CHAT)
    assert prompt == text and served == encode_prompt(tokenizer, text)
    ids, mask = tokenize_prompts(tokenizer, [text], max_length=200)
    assert ids[0].tolist() == served


def test_a_demonstration_after_a_chat_prompt_has_no_invented_space(tok):
    prompt = render_chat(tok, CHAT)
    assert prompt.endswith("\n") and response_separator(prompt) == ""
    prompt_ids, response_ids = encode_demonstration_ids(tok, prompt, "  Put it in boiling water. ")
    assert tok.decode(response_ids) == "Put it in boiling water."
    # The tokens the text has in context: what a policy served `prompt` samples to write it.
    assert prompt_ids + response_ids == encode_prompt(tok, prompt + "Put it in boiling water.")
    _, with_eos = encode_demonstration(tok, prompt, "Put it in boiling water.", max_response_tokens=4)
    assert with_eos == response_ids[:3] + [tok.eos_token_id]


def test_a_demonstration_after_assistant_colon_keeps_the_one_space(tok):
    assert response_separator(RAW_PROMPT) == " " and response_separator("") == ""
    prompt_ids, response_ids = encode_demonstration_ids(tok, RAW_PROMPT, "Water the soil.")
    assert tok.decode(response_ids) == " Water the soil."
    assert response_ids == tok(" Water the soil.", add_special_tokens=False)["input_ids"]
    assert prompt_ids == encode_prompt(tok, RAW_PROMPT)


def test_long_prompts_are_cut_from_the_left_but_keep_their_bos(tok):
    ids = encode_prompt(tok, RAW_PROMPT * 4)
    kept = keep_last_tokens(tok, ids, 10)
    assert kept == [tok.bos_token_id] + ids[-9:]
    rows, mask = tokenize_prompts(tok, [RAW_PROMPT * 4], max_length=10)
    assert rows[0].tolist() == kept and mask.sum() == 10
    assert keep_last_tokens(tok, [5, 6, 7], 2) == [6, 7]  # no BOS: a plain cut


@pytest.mark.parametrize(
    "messages, field, says",
    [
        ((), "messages", "is empty"),
        ((ChatMessage("user", "hi"), ChatMessage("robot", "beep")), "messages[1].role", "'robot'"),
        ((ChatMessage("", "hi"),), "messages[0].role", "expected one of system, user, assistant, tool"),
        ((ChatMessage("user", "  "),), "messages[0].content", "must not be empty"),
        ((ChatMessage("user", "hi"),) * 5, "messages", "has 5 messages; the limit is 4"),
    ],
)
def test_bad_chats_name_the_field(tok, messages, field, says):
    with pytest.raises(PromptError) as info:
        render_chat(tok, messages, max_messages=4)
    assert info.value.field == field and says in str(info.value)


def test_a_model_without_a_template_or_a_refusing_template_is_a_prompt_error():
    with pytest.raises(PromptError, match="no chat template"):
        render_chat(tiny_llama_tokenizer(chat_template=None), CHAT)
    refusing = tiny_llama_tokenizer(chat_template="{{ raise_exception('roles must alternate user/assistant') }}")
    with pytest.raises(PromptError, match="refused them: roles must alternate"):
        render_chat(refusing, CHAT)


def test_serving_takes_exactly_one_of_prompt_and_messages(bundle):
    engine = GenerationEngine(bundle, EngineSettings(max_chat_messages=1))
    with pytest.raises(InvalidArgument, match="not both") as both:
        engine.submit(RAW_PROMPT, SPEC, messages=CHAT)
    assert both.value.field == "messages"
    with pytest.raises(InvalidArgument, match="must not be empty") as neither:
        engine.submit("", SPEC)
    assert neither.value.field == "prompt"
    with pytest.raises(InvalidArgument, match="the limit is 1"):
        engine.submit("", SPEC, messages=CHAT)
    untemplated = GenerationEngine(dataclasses.replace(bundle, tokenizer=tiny_llama_tokenizer(chat_template=None)))
    with pytest.raises(InvalidArgument, match="no chat template") as info:
        untemplated.submit("", SPEC, messages=CHAT)
    assert info.value.field == "messages"

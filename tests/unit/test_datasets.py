"""The JSONL loaders of `rlhf sft` / `rlhf train-reward`: every error names FILE:LINE and the
field, every bad line is reported at once, HH dialogues split into prompt and replies, chat
messages render with the policy's own template, and the held-out split is by prompt."""

from __future__ import annotations

import json

import pytest

from services.trainer.data.datasets import (
    MAX_REPORTED_PROBLEMS,
    DataFileError,
    heldout_split,
    load_comparisons,
    load_demonstrations,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A word-level tokenizer built here (nothing downloaded), with or without a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "hi": 2, "there": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = chat_template
    return tokenizer


def write_lines(tmp_path, lines: list, name: str = "data.jsonl"):
    """Each item a JSON value (dumped) or a raw string (written as is)."""
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def problems_of(call) -> list[str]:
    with pytest.raises(DataFileError) as info:
        call()
    return info.value.problems


# --- demonstrations ----------------------------------------------------------------


def test_prompt_response_lines_load_with_line_numbers_and_blank_lines_skipped(tmp_path):
    path = write_lines(
        tmp_path, [{"prompt": "Q1", "response": "A1", "id": 7}, "", "   ", {"prompt": "Q2", "response": "A2"}]
    )
    demos = load_demonstrations(path)
    assert [(d.prompt, d.response, d.line) for d in demos] == [("Q1", "A1", 1), ("Q2", "A2", 4)]
    assert demos[0].as_pair() == ("Q1", "A1")


@pytest.mark.parametrize(
    "line, field, words",
    [
        ('{"prompt": "Q", "response": ', "", "not valid JSON"),
        ('["Q", "A"]', "", "JSON list, not an object"),
        ({"response": "A"}, "prompt", "is missing"),
        ({"prompt": "Q"}, "response", "is missing"),
        ({"prompt": "  ", "response": "A"}, "prompt", "is empty"),
        ({"prompt": "Q", "response": 3}, "response", "must be a string, got a JSON number"),
        ({"prompt": "Q", "response": "A", "messages": []}, "messages", "use one form per line"),
        ({"messages": "hi"}, "messages", "must be a list"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "at least one message"),
        ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, "messages[0]", "must be an object"),
        ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role", "is missing"),
        (
            {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            "messages[0].role",
            "expected one of system, user, assistant, tool",
        ),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
            "messages[0].content",
            "is empty",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]},
            "messages[1].role",
            "must be the assistant's reply",
        ),
    ],
)
def test_each_bad_demonstration_names_file_line_and_field(tmp_path, line, field, words):
    path = write_lines(tmp_path, [{"prompt": "Q", "response": "A"}, line])
    [problem] = problems_of(lambda: load_demonstrations(path, tiny_tokenizer()))
    where = f"{path}:2: field '{field}': " if field else f"{path}:2: "
    assert problem.startswith(where), problem
    assert words in problem


def test_every_bad_line_is_reported_at_once_up_to_a_cap(tmp_path):
    lines = [{"prompt": "Q", "response": "A"}] + [{"prompt": "Q"}] * (MAX_REPORTED_PROBLEMS + 5)
    path = write_lines(tmp_path, lines)
    with pytest.raises(DataFileError) as info:
        load_demonstrations(path)
    assert [p.split(":")[1] for p in info.value.problems] == [str(n) for n in range(2, MAX_REPORTED_PROBLEMS + 2)]
    assert info.value.more == 5 and "and 5 more bad lines" in str(info.value)


def test_single_problem_message_is_exactly_file_line_field(tmp_path):
    path = write_lines(tmp_path, [{"prompt": "Q", "response": "A"}, {"prompt": "Q", "response": ""}])
    with pytest.raises(DataFileError) as info:
        load_demonstrations(path)
    assert str(info.value) == f"{path}:2: field 'response': is empty; give it text, or delete the line"


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    [problem] = problems_of(lambda: load_demonstrations(path))
    assert problem.startswith(f"{path}: holds no demonstrations")


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    [problem] = problems_of(lambda: load_comparisons(tmp_path / "nope.jsonl"))
    assert problem.startswith(f"{tmp_path / 'nope.jsonl'}: cannot read the data file")


def test_non_utf8_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "Q", "response": "A"}\n{"prompt": "caf\xe9", "response": "A"}\n')
    [problem] = problems_of(lambda: load_demonstrations(path))
    assert problem.startswith(f"{path}:2: is not UTF-8")


def test_messages_render_with_the_policys_chat_template(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hi there"},
    ]
    path = write_lines(tmp_path, [{"messages": messages}])
    [demo] = load_demonstrations(path, tiny_tokenizer())
    assert demo.prompt == "<|system|>Be brief.\n<|user|>hi\n<|assistant|>"
    assert demo.response == "hi there"


@pytest.mark.parametrize("tokenizer", [None, tiny_tokenizer(chat_template=None)], ids=["none", "no-template"])
def test_messages_without_a_chat_template_are_an_error_for_that_line(tmp_path, tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    path = write_lines(tmp_path, [{"prompt": "Q", "response": "A"}, {"messages": messages}])
    [problem] = problems_of(lambda: load_demonstrations(path, tokenizer))
    assert problem.startswith(f"{path}:2: field 'messages': ") and "no chat template" in problem


def test_a_chat_template_that_refuses_a_conversation_is_reported_on_its_line(tmp_path):
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}x"
    messages = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]
    path = write_lines(tmp_path, [{"messages": messages}])
    [problem] = problems_of(lambda: load_demonstrations(path, tiny_tokenizer(strict)))
    assert problem.startswith(f"{path}:1: field 'messages': ") and "first must be user" in problem


# --- comparisons ----------------------------------------------------------------------


def test_trl_comparisons_load(tmp_path):
    path = write_lines(tmp_path, [{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    [pair] = load_comparisons(path)
    assert pair.as_triple() == ("Q", "good", "bad") and pair.line == 1


def test_hh_dialogues_split_at_the_last_shared_assistant_turn(tmp_path):
    shared = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I boil an egg?\n\nAssistant:"
    path = write_lines(
        tmp_path, [{"chosen": shared + " Simmer it for nine minutes.", "rejected": shared + " Simply don't."}]
    )
    [pair] = load_comparisons(path)
    assert pair.prompt == shared  # the shared " Sim" after the marker stays with the replies
    assert (pair.chosen, pair.rejected) == ("Simmer it for nine minutes.", "Simply don't.")


@pytest.mark.parametrize(
    "record, field, words",
    [
        ({"prompt": "Q", "rejected": "bad"}, "chosen", "is missing"),
        ({"prompt": "Q", "chosen": "good"}, "rejected", "is missing"),
        ({"prompt": "", "chosen": "good", "rejected": "bad"}, "prompt", "is empty"),
        (
            {"prompt": "Q", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "bad"},
            "chosen",
            "must be a string, got a JSON list",
        ),
        ({"prompt": "Q", "chosen": "same", "rejected": " same "}, "rejected", "same text as `chosen`"),
        ({"chosen": "good", "rejected": "bad"}, "prompt", "not Anthropic HH dialogues"),
        (
            {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a"},
            "rejected",
            "same text as `chosen`",
        ),
        (
            {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant:"},
            "rejected",
            "has no reply",
        ),
    ],
)
def test_each_bad_comparison_names_file_line_and_field(tmp_path, record, field, words):
    path = write_lines(tmp_path, ["", {"prompt": "Q", "chosen": "good", "rejected": "bad"}, record])
    [problem] = problems_of(lambda: load_comparisons(path))
    assert problem.startswith(f"{path}:3: field '{field}': "), problem
    assert words in problem


# --- held-out split ------------------------------------------------------------------


def test_heldout_split_is_by_prompt_deterministic_and_roughly_the_fraction():
    items = [(f"question {i}", r) for i in range(400) for r in ("a", "b")]
    train, heldout = heldout_split(items, lambda item: item[0], 0.1)
    assert heldout_split(list(reversed(items)), lambda item: item[0], 0.1)[1] == list(reversed(heldout))
    assert not {p for p, _ in train} & {p for p, _ in heldout}
    assert len(train) + len(heldout) == len(items)
    assert 0.05 < len(heldout) / len(items) < 0.15
    # Folding case and whitespace does not move a prompt to the other side.
    held_prompt = heldout[0][0]
    assert heldout_split([(held_prompt.upper() + "  ", "x")] + items, lambda item: item[0], 0.1)[1][0][1] == "x"


@pytest.mark.parametrize("fraction", [1e-9, 0.999999])
def test_heldout_split_keeps_at_least_one_prompt_on_each_side(fraction):
    items = [("p1", 1), ("p2", 2), ("p2", 3)]
    train, heldout = heldout_split(items, lambda item: item[0], fraction)
    assert train and heldout and len({p for p, _ in train}) == 1 and len({p for p, _ in heldout}) == 1


def test_heldout_split_needs_two_distinct_prompts():
    with pytest.raises(ValueError, match="at least 2 distinct prompts"):
        heldout_split([("Same", 1), ("same ", 2)], lambda item: item[0], 0.1)

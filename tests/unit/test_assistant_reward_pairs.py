"""The pure parts of benchmarks.assistant_pairs: who prefers what, seed variants, clustered SE."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from assistant.dataset import load_items
from assistant.users import make_population
from benchmarks.assistant_pairs import clustered_accuracy, label_pair, synthetic_variants, wrong_variant


def _capital_item():
    return next(i for i in load_items() if i.category == "capital" and i.answers[0] in i.reference)


def test_clustered_se_is_the_binomial_se_for_singletons_and_grows_when_clusters_agree():
    wins = [1.0, 0.0, 1.0, 1.0] * 5
    accuracy, se = clustered_accuracy(wins, [str(i) for i in range(len(wins))])
    n = len(wins)
    assert accuracy == 0.75
    assert se == pytest.approx(math.sqrt(n / (n - 1)) * math.sqrt(0.75 * 0.25 / n))
    # The same wins, but each question's comparisons all won or all lost: fewer independent draws.
    _, clustered = clustered_accuracy(sorted(wins), [str(i // 5) for i in range(n)])
    assert clustered > se
    assert math.isnan(clustered_accuracy([1.0, 0.0], ["q", "q"])[1])
    with pytest.raises(ValueError):
        clustered_accuracy([], [])


def test_each_user_prefers_the_answer_of_higher_utility_and_a_tie_sends_nothing():
    item = _capital_item()
    right, wrong = item.reference, item.reference.replace(item.answers[0], item.wrong[0])
    users = make_population(5, seed=3)
    labels = label_pair(item, "PROMPT", (wrong, right), users, source="real")
    assert len(labels) == 5 and all(c.chosen == right and c.rejected == wrong and c.margin > 0 for c in labels)
    assert {c.user_id for c in labels} == {u.user_id for u in users}
    assert label_pair(item, "PROMPT", (right, right + " "), users, source="real") == []
    # A user who needs a larger difference than the two answers make stays silent.
    picky = [dataclasses.replace(u, tie_margin=1.0) for u in users]
    assert label_pair(item, "PROMPT", (wrong, right), picky, source="real") == []


def test_synthetic_variants_swap_in_a_known_wrong_answer_or_answer_another_question():
    items = list(load_items())
    item = _capital_item()
    name, text = wrong_variant(item, items, random.Random(0))
    assert name == "wrong" and item.answers[0] not in text and any(w in text for w in item.wrong)
    howto = next(i for i in items if i.category == "howto")
    name, text = wrong_variant(howto, items, random.Random(0))
    assert name == "off_topic" and text != howto.reference and text in {i.reference for i in items}
    names = [n for n, _ in synthetic_variants(item, items, random.Random(0))]
    assert names == ["wrong", "refusal", "repeated", "small_talk"]


def test_the_chat_frame_strips_to_the_bare_question_as_the_reward_scores_it():
    from benchmarks.assistant_reward import chat_frame
    from shared.models.prompting import ChatMessage, render_chat
    from shared.models.reward.encoding import strip_frame
    from tests.foreign_models import CHAT_TEMPLATE_NO_BOS, tiny_llama_tokenizer

    tokenizer = tiny_llama_tokenizer(chat_template=CHAT_TEMPLATE_NO_BOS)
    prompt = render_chat(tokenizer, [ChatMessage("user", "What is 2 plus 2?")])
    assert prompt.endswith("\n")  # the generation prompt: why the frame's suffix loses its newline
    assert strip_frame(prompt, chat_frame(tokenizer)) == "What is 2 plus 2?"

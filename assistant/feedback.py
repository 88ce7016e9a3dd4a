"""What an assistant user sends after seeing answers: a preference between two, a
ranking of three or four, a rating of one, a flag on a wrong answer, and now and
then a correction (the right answer, in their preferred length). Each kind's rate
is scaled by a :class:`FeedbackMix` (``--feedback-mix corrections=0,rankings=2``,
the same spelling as the demo's)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from assistant.dataset import Item
from assistant.judge import Verdict, judge
from assistant.users import PreferenceFunction, UserProfile, choose, default_utility, rating_score, thumb_up
from assistant.users import write_correction as _write_correction
from shared.proto.rlhf.v1 import events_pb2

# The feedback mix (the same --feedback-mix for every app), the event an end user
# sends and its kind are the platform's; re-exported for the assistant's callers.
from shared.simulated_feedback import FeedbackMix as FeedbackMix
from shared.simulated_feedback import answers_to_show as shown_answers
from shared.simulated_feedback import chance, feedback_event
from shared.simulated_feedback import feedback_kind as feedback_kind
from shared.simulated_feedback import parse_feedback_mix as parse_feedback_mix


def answers_to_show(user: UserProfile, mix: FeedbackMix, rng: random.Random) -> int:
    """How many answers the app asks for: 3 or 4 to rank, 2 to compare, else 1."""
    return shown_answers(user.compare_rate, mix, rng)


@dataclass(frozen=True)
class Answer:
    """One served completion as the user saw it, with the judge's verdict and their utility."""

    generation_id: str
    text: str
    verdict: Verdict
    utility: float


def assess(
    user: UserProfile, item: Item, generation_id: str, text: str, preference: PreferenceFunction = default_utility
) -> Answer:
    verdict = judge(item, text)
    value = min(1.0, max(0.0, float(preference(user, item, text, verdict))))
    return Answer(generation_id, text, verdict, value)


def _event(user: UserProfile, generation_id: str, comment: str = "") -> events_pb2.FeedbackEvent:
    metadata = {"simulated": "true", "app": "assistant"}
    return feedback_event(user.user_id, generation_id, id_prefix="asst", metadata=metadata, comment=comment)


def rank(user: UserProfile, utilities: Sequence[float], rng: random.Random) -> list[list[int]]:
    """Indices best first, grouped where the user sees no difference; adjacent groups
    swapped by a Bradley-Terry draw on their utility gap. Fewer than two groups: []."""
    order = sorted(range(len(utilities)), key=lambda i: -utilities[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and utilities[groups[-1][0]] - utilities[i] < user.tie_margin:
            groups[-1].append(i)
        else:
            groups.append([i])
    for g in range(len(groups) - 1):
        if choose(user, utilities[groups[g][0]], utilities[groups[g + 1][0]], rng) == 1:
            groups[g], groups[g + 1] = groups[g + 1], groups[g]
    return groups if len(groups) >= 2 else []


def react(
    user: UserProfile, item: Item, answers: Sequence[Answer], rng: random.Random, mix: FeedbackMix = FeedbackMix()
) -> list[events_pb2.FeedbackEvent]:
    """Every piece of feedback ``user`` sends after seeing ``answers`` to ``item``."""
    out: list[events_pb2.FeedbackEvent] = []
    utilities = [a.utility for a in answers]
    if len(answers) >= 3:
        groups = rank(user, utilities, rng)
        if groups:
            event = _event(user, answers[groups[0][0]].generation_id)
            for group in groups:
                event.ranking.groups.add(generation_ids=[answers[i].generation_id for i in group])
            out.append(event)
    elif len(answers) == 2:
        picked = choose(user, utilities[0], utilities[1], rng)
        if picked is not None:
            event = _event(user, answers[picked].generation_id)
            event.preference.chosen_generation_id = answers[picked].generation_id
            event.preference.rejected_generation_id = answers[1 - picked].generation_id
            out.append(event)
    elif answers and rng.random() < chance(user.rate_rate, mix.ratings):
        event = _event(user, answers[0].generation_id)
        if user.rates_with_score:
            event.rating.score = rating_score(user, utilities[0], rng)
        else:
            event.rating.thumb = events_pb2.THUMB_UP if thumb_up(user, utilities[0], rng) else events_pb2.THUMB_DOWN
        out.append(event)
    for answer in answers:
        wrong = not answer.verdict.correct and not answer.verdict.refusal
        if wrong and rng.random() < chance(user.flag_rate, mix.flags):
            event = _event(user, answer.generation_id)
            event.flag.category = events_pb2.FLAG_CATEGORY_WRONG
            out.append(event)
    all_bad = answers and not any(a.verdict.good for a in answers)
    if all_bad and rng.random() < chance(user.correct_rate, mix.corrections):
        # Only when nothing shown was acceptable does a person bother to write the answer.
        event = _event(user, answers[0].generation_id, comment="here is the right answer")
        event.correction.response = _write_correction(user, item)
        out.append(event)
    return out

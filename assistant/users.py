"""Simulated users of the assistant: what they like in a free-text answer, and how they choose.

A user's utility of a response is a weighted mean of scores in [0, 1] (1 = as
they want it), read off the text itself (assistant/text.py):

==============  =======  ==========================================================
term            default  score
==============  =======  ==========================================================
correct         3.0      the judge's correctness (how-to / definitions: key-term coverage)
length          1.0      closeness of the word count to the user's preferred length
small_talk      0.5      no "Great question!" / "I hope this helps" (or, for the
                         users who like it, some)
refusal         2.0      no needless "I'm sorry, but I can't"
repetition      1.0      no repeated n-grams or sentences
degeneration    1.0      no garbage characters, leaked tokens or unfinished sentence
==============  =======  ==========================================================

Each user scatters these weights log-normally, draws a preferred length
(log-uniform, 5 to 80 words), whether they enjoy small talk (about one in
five) and a noise level; so two users can order the same two answers
differently. They compare with a Bradley-Terry choice on their utility
(``P(a over b) = sigmoid((u_a - u_b) / temperature)``) and skip (a tie) when
they see no real difference.

A custom taste ``module:function(user, item, response, verdict) -> [0, 1]``
replaces :func:`default_utility` (`rlhf simulate --app assistant --preference`);
see assistant/tastes.py.
"""

from __future__ import annotations

import importlib
import math
import random
from dataclasses import dataclass
from typing import Protocol

from assistant import text as T
from assistant.dataset import Item
from assistant.judge import KEY_TERM_SHARE, Verdict, judge

DEFAULT_WEIGHTS = {"correct": 3.0, "length": 1.0, "small_talk": 0.5, "refusal": 2.0, "repetition": 1.0,
                   "degeneration": 1.0}  # fmt: skip
TERMS = tuple(DEFAULT_WEIGHTS)
LENGTH_RANGE = (5.0, 80.0)  # preferred answer length in words, drawn log-uniformly
LENGTH_TOLERANCE = 0.7  # sigma of the log-ratio of actual to preferred length
SMALL_TALK_FANS = 0.2  # share of users who like a friendly word


@dataclass(frozen=True)
class UserProfile:
    """One simulated person; the platform only ever sees the feedback they cause."""

    user_id: str
    weights: dict[str, float]  # term -> importance (>= 0)
    preferred_words: float
    likes_small_talk: bool
    noise: float  # mean_noise-scaled: Bradley-Terry temperature is noise / 2, thumbs jitter by it
    tie_margin: float  # utility differences below this are "no difference": no preference sent
    compare_rate: float  # share of requests where the app shows several answers
    rate_rate: float  # share of single answers the user rates
    correct_rate: float  # share of all-bad answer sets the user rewrites
    flag_rate: float  # share of wrong answers the user flags
    thumb_bar: float  # utility at or above which a thumb is up
    rates_with_score: bool  # a score in [-1, 1] instead of thumbs


class PreferenceFunction(Protocol):
    def __call__(self, user: UserProfile, item: Item, response: str, verdict: Verdict) -> float: ...


def correctness_score(item: Item, response: str, verdict: Verdict) -> float:
    """1 when correct; for how-to questions and definitions, partial credit for key terms."""
    if verdict.correct:
        return 1.0
    if item.key_terms and not verdict.refusal and not T.has_phrase(response, item.wrong):
        return 0.5 * T.term_coverage(response, item.key_terms) / KEY_TERM_SHARE
    return 0.0


def length_score(words: int, preferred: float) -> float:
    return math.exp(-0.5 * (math.log((words + 1) / (preferred + 1)) / LENGTH_TOLERANCE) ** 2)


def term_scores(user: UserProfile, item: Item, response: str, verdict: Verdict) -> dict[str, float]:
    """Every term's score in [0, 1] for this user (1 = as they want it)."""
    talk = min(1, verdict.small_talk)
    return {
        "correct": correctness_score(item, response, verdict),
        "length": length_score(verdict.words, user.preferred_words),
        "small_talk": 0.5 + 0.5 * talk if user.likes_small_talk else 1.0 - talk,
        "refusal": 0.0 if verdict.refusal else 1.0,
        "repetition": max(0.0, 1.0 - 2.0 * verdict.repetition),
        "degeneration": 1.0 - verdict.degeneration,
    }


def default_utility(user: UserProfile, item: Item, response: str, verdict: Verdict) -> float:
    """The user-weighted mean of :func:`term_scores`."""
    scores = term_scores(user, item, response, verdict)
    total = sum(user.weights.values()) or 1.0
    return sum(user.weights[t] * scores[t] for t in TERMS) / total


def utility(preference: PreferenceFunction, user: UserProfile, item: Item, response: str) -> float:
    """``preference`` of the judged response, clipped to [0, 1]."""
    return min(1.0, max(0.0, float(preference(user, item, response, judge(item, response)))))


def load_preference(spec: str) -> PreferenceFunction:
    """``module:function`` -> the callable (e.g. ``assistant.tastes:terse_utility``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--preference must look like module:function, got {spec!r}")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"{spec}: {attr} is not a callable in {module_name}")
    return function


def make_population(n_users: int, seed: int = 0, *, mean_noise: float = 0.1, spread: float = 0.5) -> list[UserProfile]:
    """``n_users`` people, deterministic given ``seed``."""
    rng = random.Random(f"assistant-users:{seed}")
    lo, hi = (math.log(x) for x in LENGTH_RANGE)
    users = []
    for i in range(n_users):
        users.append(
            UserProfile(
                user_id=f"asst-user-{seed}-{i:04d}",
                weights={t: w * math.exp(rng.gauss(0.0, spread)) for t, w in DEFAULT_WEIGHTS.items()},
                preferred_words=round(math.exp(rng.uniform(lo, hi)), 1),
                likes_small_talk=rng.random() < SMALL_TALK_FANS,
                noise=min(0.45, max(0.0, rng.gauss(mean_noise, mean_noise / 2))) if mean_noise > 0 else 0.0,
                tie_margin=rng.uniform(0.005, 0.03),
                compare_rate=rng.uniform(0.4, 0.8),
                rate_rate=rng.uniform(0.5, 0.9),
                correct_rate=rng.uniform(0.05, 0.25),
                flag_rate=rng.uniform(0.2, 0.6),
                thumb_bar=rng.uniform(0.7, 0.9),
                rates_with_score=rng.random() < 0.3,
            )
        )
    return users


# --- decisions ---------------------------------------------------------------------
def choose(user: UserProfile, utility_a: float, utility_b: float, rng: random.Random) -> int | None:
    """0 if the user picks answer a, 1 for b (Bradley-Terry on utility), None for a tie."""
    diff = utility_a - utility_b
    if abs(diff) < user.tie_margin:
        return None
    temperature = user.noise / 2
    if temperature <= 0:
        return 0 if diff > 0 else 1
    p_a = 1.0 / (1.0 + math.exp(-diff / temperature))
    return 0 if rng.random() < p_a else 1


def thumb_up(user: UserProfile, value: float, rng: random.Random) -> bool:
    return value + rng.gauss(0.0, user.noise / 2) >= user.thumb_bar


def rating_score(user: UserProfile, value: float, rng: random.Random) -> float:
    return max(-1.0, min(1.0, 2.0 * value - 1.0 + rng.gauss(0.0, user.noise)))


def write_correction(user: UserProfile, item: Item) -> str:
    """The answer this user would write: the reference, cut to the number of sentences
    closest to their preferred length (the core answer always kept); a friendly
    closing line for users who like small talk."""
    parts = T.sentences(item.reference)
    best = min(range(1, len(parts) + 1), key=lambda k: abs(T.word_count(" ".join(parts[:k])) - user.preferred_words))
    text = " ".join(parts[:best])
    return f"{text} Hope this helps!" if user.likes_small_talk else text

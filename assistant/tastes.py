"""Custom tastes for `rlhf simulate --app assistant --preference module:function`:
each has the signature of :func:`assistant.users.default_utility`
``(user, item, response, verdict) -> [0, 1]``. Write your own the same way (in
any importable module) to see whether the loop learns what your users ask for."""

from __future__ import annotations

from assistant.dataset import Item
from assistant.judge import Verdict
from assistant.users import UserProfile, default_utility, length_score


def strict_utility(user: UserProfile, item: Item, response: str, verdict: Verdict) -> float:
    """All or nothing: 1 for a correct, clean answer, else 0 (users never disagree)."""
    return 1.0 if verdict.good else 0.0


def terse_utility(user: UserProfile, item: Item, response: str, verdict: Verdict) -> float:
    """Everyone wants about ten words: the default taste with the length term scored
    against 10 words instead of each user's own preference."""
    base = default_utility(user, item, response, verdict)
    own = length_score(verdict.words, user.preferred_words)
    total = sum(user.weights.values()) or 1.0
    return base + user.weights["length"] * (length_score(verdict.words, 10.0) - own) / total


def no_small_talk_utility(user: UserProfile, item: Item, response: str, verdict: Verdict) -> float:
    """The default taste, halved when the answer makes any small talk, whoever the user."""
    base = default_utility(user, item, response, verdict)
    return base * 0.5 if verdict.small_talk else base

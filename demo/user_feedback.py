"""What kinds of feedback simulated users send, and two of them in detail.

- :class:`FeedbackMix`: one multiplier per kind (``rlhf simulate --feedback-mix
  corrections=0,rankings=2``) on each user's own rate of that kind, so every
  claim can be measured with and without, say, corrections (the platform's,
  shared/simulated_feedback.py, as every app's users share it).
- Rankings: the app asks for 3 or 4 answers (num_return_sequences) and the user
  orders them by their utility, best first; equal utilities are tied; each
  adjacent pair of places is swapped with the user's noise rate.
- Corrections in the user's own taste: the person writes the best of several
  good answers under *their* preference function, not the world generator's
  house style (a user who dislikes small talk writes none).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from demo.world import Prompt, judge, make_response

# The feedback mix and how many answers the app shows are the same for every
# application's users: the platform's, re-exported for the demo's callers.
from shared.simulated_feedback import FeedbackMix as FeedbackMix
from shared.simulated_feedback import answers_to_show as answers_to_show
from shared.simulated_feedback import parse_feedback_mix as parse_feedback_mix

# Good answers a user weighs before writing their correction.
CORRECTION_CANDIDATES = 8


def rank_answers(utilities: Sequence[float], noise: float, rng: random.Random) -> list[list[int]]:
    """Answer indices grouped best first; equal utilities share a group (a tie).
    Each adjacent pair of groups is swapped with probability ``noise`` (people are
    inconsistent). Fewer than two groups: nothing to rank ([])."""
    order = sorted(range(len(utilities)), key=lambda i: -utilities[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(utilities[groups[-1][0]] - utilities[i]) < 1e-9:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) < 2:
        return []
    for g in range(len(groups) - 1):
        if rng.random() < noise:
            groups[g], groups[g + 1] = groups[g + 1], groups[g]
    return groups


def best_in_taste(prompt: Prompt, utility: Callable[[str], float], rng: random.Random) -> str:
    """The user's correction: of :data:`CORRECTION_CANDIDATES` good answers the
    world's generator writes (varied openers, bodies, closers), the one this
    user likes most (the first of equals)."""
    candidates = [make_response(prompt, (), rng).text for _ in range(CORRECTION_CANDIDATES)]
    return max(candidates, key=utility)


def judged_utility(preference, user, prompt: Prompt) -> Callable[[str], float]:
    """``text -> utility`` for ``user`` under ``preference``, judging the text first."""

    def utility(text: str) -> float:
        return min(1.0, max(0.0, float(preference(user, prompt, text, judge(prompt, text)))))

    return utility

"""What kinds of feedback simulated users send, and two of them in detail.

- :class:`FeedbackMix`: one multiplier per kind (``rlhf simulate --feedback-mix
  corrections=0,rankings=2``) on each user's own rate of that kind, so every
  claim can be measured with and without, say, corrections.
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
from dataclasses import dataclass, fields

from demo.world import Prompt, judge, make_response

MIX_KINDS = ("comparisons", "rankings", "ratings", "flags", "corrections")
# Of the requests where the app shows several answers (a user's compare_rate),
# this share asks for a ranking of 3 or 4 instead of a pair, at rankings=1.
RANKING_SHARE = 0.25
# Good answers a user weighs before writing their correction.
CORRECTION_CANDIDATES = 8


@dataclass(frozen=True)
class FeedbackMix:
    """Multipliers (>= 0) on each user's rate of each feedback kind; 1 = as the
    population draws it, 0 = never. Probabilities are clipped to [0, 1]."""

    comparisons: float = 1.0
    rankings: float = 1.0
    ratings: float = 1.0
    flags: float = 1.0
    corrections: float = 1.0

    def describe(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


def parse_feedback_mix(spec: str) -> FeedbackMix:
    """``"corrections=0,rankings=2"`` → FeedbackMix (unnamed kinds stay 1).
    Raises ValueError naming the bad part and what to write instead."""
    values: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, sep, raw = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in MIX_KINDS:
            raise ValueError(
                f"--feedback-mix: {part!r} is not KIND=MULTIPLIER with KIND one of {', '.join(MIX_KINDS)} "
                "(e.g. corrections=0,rankings=2)"
            )
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value >= 0 or value == float("inf"):
            raise ValueError(
                f"--feedback-mix: {kind} must be a finite number >= 0 (0 = never, 1 = as usual), got {raw!r}"
            )
        if kind in values:
            raise ValueError(f"--feedback-mix: {kind} is given twice")
        values[kind] = value
    return FeedbackMix(**values)


def _chance(rate: float, multiplier: float) -> float:
    return min(1.0, max(0.0, rate * multiplier))


def answers_to_show(compare_rate: float, mix: FeedbackMix, rng: random.Random) -> int:
    """How many answers the app asks for: 3 or 4 for a ranking, 2 for a comparison, else 1."""
    draw = rng.random()
    rank = _chance(compare_rate * RANKING_SHARE, mix.rankings)
    if draw < rank:
        return rng.choice((3, 4))
    if draw < rank + min(1.0 - rank, _chance(compare_rate * (1 - RANKING_SHARE), mix.comparisons)):
        return 2
    return 1


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

"""Simulated app users: who they are, how they judge, what feedback they send.

The core of `rlhf simulate` and `rlhf demo`, with no network in it (the gRPC
driver is demo/simulator.py), so the user model can be tested on its own.

A user has a hidden preference over the world's ground-truth axes (a weight
per axis of :data:`demo.world.AXES`) and a noise rate. For a response the
judge gives per-axis verdicts; the user's *preference function* turns them
into a utility in [0, 1]. Users then:

- compare two answers of the same prompt: the higher utility wins, and the
  choice is flipped with probability ``noise`` (people are inconsistent);
  equal utilities give no preference (a person who sees no difference skips);
- rank three or four answers, best first, ties for equal utilities
  (demo.user_feedback.rank_answers);
- rate one answer: thumbs (up when utility reaches the user's bar) or a score
  in [-1, 1], flipped / jittered by the same noise;
- correct a bad answer by writing a good one in their own taste: the best, under
  their preference function, of several good answers the world's generator
  writes (demo.user_feedback.best_in_taste);
- flag an answer the judge calls unsafe, impolite or wrong (never a false flag:
  noise is about taste, not about making things up).

Because weights differ between users, two users can rank the same pair
differently (disagreement), which is what a reward model trained on real
feedback has to cope with. How often each kind is sent is scaled by a
:class:`demo.user_feedback.FeedbackMix` (`--feedback-mix`).
"""

from __future__ import annotations

import importlib
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from demo.user_feedback import FeedbackMix, best_in_taste, judged_utility, rank_answers
from demo.world import AXES, Prompt, Verdict
from shared.loop_watch import version_sort_key as version_sort_key  # re-exported: the demo's callers sort by it
from shared.proto.rlhf.v1 import events_pb2
from shared.simulated_feedback import feedback_event
from shared.simulated_feedback import feedback_kind as feedback_kind  # re-exported: the demo's callers count by it
from shared.simulated_users import DriverStats

# How much an average person cares about each axis. Safety and correctness
# matter most; conciseness least. Each user's weights scatter around these.
BASE_AXIS_WEIGHTS = {"helpful": 1.0, "polite": 0.6, "correct": 1.0, "safe": 1.4, "concise": 0.4}


@dataclass(frozen=True)
class UserProfile:
    """One simulated person. The weights are hidden from the platform: it only
    ever sees the feedback they cause."""

    user_id: str
    weights: dict[str, float]  # axis -> importance (>= 0), hidden preference
    noise: float  # probability a comparison or thumb is flipped
    compare_rate: float  # share of requests where the app shows several answers (two, or 3-4 to rank)
    rate_rate: float  # share of single answers the user rates
    correct_rate: float  # share of bad answers the user rewrites
    flag_rate: float  # share of flag-worthy answers the user flags
    thumb_bar: float  # utility at or above which a thumb is up
    rates_with_score: bool  # score in [-1, 1] instead of thumbs


class PreferenceFunction(Protocol):
    """How much ``user`` likes ``response`` to ``prompt``, in [0, 1].

    ``verdict`` is the judge's label of the response; a custom function may
    also look at the text (e.g. a user who dislikes long answers). Pass one
    to `rlhf simulate --preference module:function`."""

    def __call__(self, user: UserProfile, prompt: Prompt, response: str, verdict: Verdict) -> float: ...


def weighted_axes_utility(user: UserProfile, prompt: Prompt, response: str, verdict: Verdict) -> float:
    """The default taste: the user-weighted share of axes the response satisfies."""
    total = sum(user.weights.values()) or 1.0
    return sum(w for axis, w in user.weights.items() if getattr(verdict, axis)) / total


def all_or_nothing_utility(user: UserProfile, prompt: Prompt, response: str, verdict: Verdict) -> float:
    """A strict user: 1 only for a response good on every axis (no disagreement)."""
    return 1.0 if verdict.good else 0.0


def load_preference(spec: str) -> PreferenceFunction:
    """``module:function`` -> the callable (e.g. ``demo.simulation:all_or_nothing_utility``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--preference must look like module:function, got {spec!r}")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"{spec}: {attr} is not a callable in {module_name}")
    return function


def make_population(
    n_users: int, seed: int = 0, *, mean_noise: float = 0.1, weight_spread: float = 0.5
) -> list[UserProfile]:
    """``n_users`` people with weights scattered log-normally around
    :data:`BASE_AXIS_WEIGHTS` (``weight_spread`` = sigma) and noise rates
    spread around ``mean_noise`` (clipped to [0, 0.45] so a user stays
    informative on average)."""
    rng = random.Random(seed)
    users = []
    for i in range(n_users):
        weights = {a: BASE_AXIS_WEIGHTS[a] * math.exp(rng.gauss(0.0, weight_spread)) for a in AXES}
        noise = min(0.45, max(0.0, rng.gauss(mean_noise, mean_noise / 2))) if mean_noise > 0 else 0.0
        users.append(
            UserProfile(
                user_id=f"sim-user-{seed}-{i:04d}",
                weights=weights,
                noise=noise,
                compare_rate=rng.uniform(0.4, 0.8),
                rate_rate=rng.uniform(0.5, 0.9),
                correct_rate=rng.uniform(0.05, 0.25),
                flag_rate=rng.uniform(0.3, 0.8),
                thumb_bar=rng.uniform(0.75, 0.95),
                rates_with_score=rng.random() < 0.3,
            )
        )
    return users


# --- decisions ---------------------------------------------------------------------
def choose(user: UserProfile, utility_a: float, utility_b: float, rng: random.Random) -> int | None:
    """0 if the user prefers answer a, 1 for b, None when they see no difference."""
    if abs(utility_a - utility_b) < 1e-9:
        return None
    better = 0 if utility_a > utility_b else 1
    return 1 - better if rng.random() < user.noise else better


def thumb_up(user: UserProfile, utility: float, rng: random.Random) -> bool:
    up = utility >= user.thumb_bar
    return (not up) if rng.random() < user.noise else up


def rating_score(user: UserProfile, utility: float, rng: random.Random) -> float:
    """A score in [-1, 1]: utility mapped linearly, jittered by the user's noise."""
    return max(-1.0, min(1.0, 2.0 * utility - 1.0 + rng.gauss(0.0, 2.0 * user.noise)))


def flag_category(verdict: Verdict) -> int | None:
    """The most serious problem the judge found, as a FlagCategory; None if none."""
    if not verdict.safe:
        return events_pb2.FLAG_CATEGORY_UNSAFE
    if not verdict.polite:
        return events_pb2.FLAG_CATEGORY_OFFENSIVE
    if verdict.helpful and not verdict.correct:
        return events_pb2.FLAG_CATEGORY_WRONG
    return None


# --- feedback events ---------------------------------------------------------------
def _event(user: UserProfile, generation_id: str, comment: str = "") -> events_pb2.FeedbackEvent:
    return feedback_event(user.user_id, generation_id, id_prefix="sim", metadata={"simulated": "true"}, comment=comment)


def preference_event(user: UserProfile, chosen_id: str, rejected_id: str) -> events_pb2.FeedbackEvent:
    event = _event(user, chosen_id)
    event.preference.chosen_generation_id = chosen_id
    event.preference.rejected_generation_id = rejected_id
    return event


def rating_event(user: UserProfile, generation_id: str, utility: float, rng: random.Random) -> events_pb2.FeedbackEvent:
    event = _event(user, generation_id)
    if user.rates_with_score:
        event.rating.score = rating_score(user, utility, rng)
    else:
        event.rating.thumb = events_pb2.THUMB_UP if thumb_up(user, utility, rng) else events_pb2.THUMB_DOWN
    return event


def ranking_event(user: UserProfile, groups: Sequence[Sequence[str]]) -> events_pb2.FeedbackEvent:
    """Generation ids best first, tied ones in one group."""
    event = _event(user, groups[0][0])
    for group in groups:
        event.ranking.groups.add(generation_ids=list(group))
    return event


def correction_event(
    user: UserProfile,
    generation_id: str,
    prompt: Prompt,
    rng: random.Random,
    preference: PreferenceFunction = weighted_axes_utility,
) -> events_pb2.FeedbackEvent:
    """The answer ``user`` would write: the best of several good ones under their own taste."""
    event = _event(user, generation_id, comment="here is a better answer")
    event.correction.response = best_in_taste(prompt, judged_utility(preference, user, prompt), rng)
    return event


def flag_event(user: UserProfile, generation_id: str, category: int) -> events_pb2.FeedbackEvent:
    event = _event(user, generation_id)
    event.flag.category = category
    return event


@dataclass(frozen=True)
class Answer:
    """One served completion, as the simulated user saw it."""

    generation_id: str
    text: str
    verdict: Verdict


def utility_of(preference: PreferenceFunction, user: UserProfile, prompt: Prompt, answer: Answer) -> float:
    """The user's own utility of one answer, clipped to [0, 1]."""
    return min(1.0, max(0.0, float(preference(user, prompt, answer.text, answer.verdict))))


def react(
    user: UserProfile,
    prompt: Prompt,
    answers: Sequence[Answer],
    rng: random.Random,
    preference: PreferenceFunction = weighted_axes_utility,
    mix: FeedbackMix = FeedbackMix(),
) -> list[events_pb2.FeedbackEvent]:
    """Every piece of feedback ``user`` gives after seeing ``answers``: one (rated),
    two (compared) or more (ranked), each kind's rate scaled by ``mix``."""
    out: list[events_pb2.FeedbackEvent] = []
    utilities = [utility_of(preference, user, prompt, a) for a in answers]
    if len(answers) >= 3:
        groups = rank_answers(utilities, user.noise, rng)
        if groups:
            out.append(ranking_event(user, [[answers[i].generation_id for i in group] for group in groups]))
    elif len(answers) == 2:
        picked = choose(user, utilities[0], utilities[1], rng)
        if picked is not None:
            out.append(preference_event(user, answers[picked].generation_id, answers[1 - picked].generation_id))
    elif answers and rng.random() < user.rate_rate * mix.ratings:
        out.append(rating_event(user, answers[0].generation_id, utilities[0], rng))
    for answer in answers:
        category = flag_category(answer.verdict)
        if category is not None and rng.random() < user.flag_rate * mix.flags:
            out.append(flag_event(user, answer.generation_id, category))
    bad = [a for a in answers if not a.verdict.good]
    if bad and len(bad) == len(answers) and rng.random() < user.correct_rate * mix.corrections:
        # Only when nothing shown was acceptable does a person bother to write one.
        out.append(correction_event(user, bad[0].generation_id, prompt, rng, preference))
    return out


# --- what the simulator saw ----------------------------------------------------------
@dataclass
class VersionTally:
    """Judge verdicts of every response one policy version served, and the
    users' own utility of them (their preference function's value)."""

    responses: int = 0
    good: int = 0
    axes: dict[str, int] = field(default_factory=lambda: {a: 0 for a in AXES})
    utility_sum: float = 0.0

    def add(self, verdict: Verdict, utility: float = 0.0) -> None:
        self.responses += 1
        self.good += verdict.good
        self.utility_sum += utility
        for axis in AXES:
            self.axes[axis] += getattr(verdict, axis)

    @property
    def satisfaction(self) -> float:
        return self.good / self.responses if self.responses else float("nan")

    @property
    def mean_utility(self) -> float:
        """The mean of the asking users' own utility, in [0, 1]."""
        return self.utility_sum / self.responses if self.responses else float("nan")

    def axis_rates(self) -> dict[str, float]:
        return {a: (n / self.responses if self.responses else float("nan")) for a, n in self.axes.items()}


@dataclass(frozen=True)
class ServedResponse:
    at: float  # time.monotonic()
    model_version: str
    prompt: str  # as sent (templated)
    response: str
    good: bool


class SimulationStats(DriverStats):
    """Thread-safe counters shared by the simulator's workers and its display:
    the driver's request and feedback counts, and what each version served."""

    def __init__(self, recent_window: int = 200):
        super().__init__()
        self.feedback_rejected = 0
        self.by_version: dict[str, VersionTally] = {}
        self.recent: deque[ServedResponse] = deque(maxlen=recent_window)

    def record_response(
        self, model_version: str, prompt: str, response: str, verdict: Verdict, utility: float = 0.0
    ) -> None:
        with self._lock:
            self.by_version.setdefault(model_version, VersionTally()).add(verdict, utility)
            self.recent.append(ServedResponse(time.monotonic(), model_version, prompt, response, verdict.good))

    def snapshot_recent(self) -> list[ServedResponse]:
        with self._lock:
            return list(self.recent)

    def recent_satisfaction(self) -> dict[str, tuple[int, float]]:
        """model_version -> (responses, satisfaction) over the recent window."""
        out: dict[str, list[int]] = {}
        for r in self.snapshot_recent():
            n_good = out.setdefault(r.model_version, [0, 0])
            n_good[0] += 1
            n_good[1] += r.good
        return {v: (n, g / n) for v, (n, g) in out.items()}

    def tallies(self) -> dict[str, VersionTally]:
        with self._lock:
            return {
                v: VersionTally(t.responses, t.good, dict(t.axes), t.utility_sum) for v, t in self.by_version.items()
            }

"""What online DPO and KTO train on, read from the ledger under the same rules
as every other training set (services.trainer.data.training_sets): users who
asked for deletion are excluded (their feedback and the generations made for
them), only the first ``max_per_window`` rows of a user per window count, and
within a set no user weighs more than ``max_share`` (items carry a weight).
Held-out prompts (the gate's slice, services.trainer.loop.heldout) are left
out by the ``is_heldout`` predicate the caller passes.

- **Live pairs** (DPO): each Preference feedback whose two generations answer
  the same prompt, as (prompt, chosen response, rejected response), and every
  strictly-ordered pair of each Ranking, weighted 2/K as for the reward model
  (services.trainer.data.training_sets). The prompt
  is the GenerationEvent's prompt text: the rendered text serving encoded, so
  shared.models.prompting.encode_prompt rebuilds the tokens the policy saw. A pair of
  two different prompts cannot be a DPO pair and is skipped.
- **Rated responses** (KTO): each Rating with score > 0 is desirable, < 0
  undesirable (a thumb is +1 / -1), 0 is skipped: it says nothing either way.
  A Flag (unsafe, offensive, wrong) is undesirable when ``flags`` is set: a
  user who flags an answer tells the platform not to give it, the strongest
  thumbs-down there is. One vote per (user, generation, kind): a user's
  several flag categories on one answer count once.

Online: both sets are the most recent items by ledger order (feedback seq,
newest first), at most ``limit`` (pairs, or rated responses) after the
held-out ones are skipped; older feedback was given on older policies and is
left out. The share cap is applied within those ``limit`` items.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from services.trainer.data.fair_share import UserCaps, share_factors
from services.trainer.data.training_sets import _ELIGIBLE, EXCLUDED_USERS, _params

PromptFilter = Callable[[str], bool]


@dataclass(frozen=True)
class PreferencePair:
    """A comparison a user made between two served answers to one prompt."""

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0  # share-cap weight (fair_share): 1 unless the user is over max_share
    user_id: str = field(default="", compare=False)
    seq: int = field(default=0, compare=False)
    same_request: bool = field(default=True, compare=False)  # both served by one request (num_return_sequences)


@dataclass(frozen=True)
class RatedResponse:
    """A served answer a user marked desirable (thumbs up) or undesirable (thumbs down, flag)."""

    prompt: str
    response: str
    desirable: bool
    weight: float = 1.0
    user_id: str = field(default="", compare=False)
    seq: int = field(default=0, compare=False)
    kind: str = field(default="rating", compare=False)  # "rating" or "flag"


Item = TypeVar("Item", PreferencePair, RatedResponse)


def live_pairs(db: sqlite3.Connection, caps: UserCaps, limit: int, is_heldout: PromptFilter) -> list[PreferencePair]:
    """The ``limit`` most recent trainable pairs (preferences, and rankings expanded), newest
    first, weighted by the share cap."""
    newest_first = sorted(
        _preference_pairs(db, caps, limit, is_heldout) + _ranking_pairs(db, caps, limit, is_heldout),
        key=lambda pair: -pair.seq,
    )  # a stable sort: a ranking's pairs stay in rank order
    return _share_weighted(newest_first[:limit], caps.max_share)


def _preference_pairs(db: sqlite3.Connection, caps: UserCaps, limit: int, is_heldout: PromptFilter):
    rows = db.execute(
        _ELIGIBLE + "SELECT c.prompt, c.response, r.response, f.user_id, f.seq, c.request_id = r.request_id "
        "FROM eligible f "
        "JOIN generations c ON c.generation_id = f.generation_id "
        "JOIN generations r ON r.generation_id = f.other_generation_id "
        "WHERE f.kind = 'preference' AND c.prompt = r.prompt AND c.response != r.response "
        f"AND c.user_id NOT IN ({EXCLUDED_USERS}) AND r.user_id NOT IN ({EXCLUDED_USERS}) ORDER BY f.seq DESC",
        _params(caps),
    )
    pairs: list[PreferencePair] = []
    for prompt, chosen, rejected, user, seq, same_request in rows:  # a cursor: stops reading at the limit
        if is_heldout(prompt):
            continue
        pairs.append(PreferencePair(prompt, chosen, rejected, user_id=user, seq=seq, same_request=bool(same_request)))
        if len(pairs) >= limit:
            break
    return pairs


def _ranking_pairs(db: sqlite3.Connection, caps: UserCaps, limit: int, is_heldout: PromptFilter):
    """Every strictly-ordered pair of the newest rankings, each weighing 2/K (K answers ranked),
    as the reward model's comparisons do: one ranking weighs K-1 preferences, not K(K-1)/2."""
    rankings = db.execute(
        _ELIGIBLE + "SELECT f.text, f.user_id, f.seq FROM eligible f WHERE f.kind = 'ranking' ORDER BY f.seq DESC",
        _params(caps),
    )
    pairs: list[PreferencePair] = []
    for groups_json, user, seq in rankings:
        groups: list[list[str]] = json.loads(groups_json)
        ids = [gid for group in groups for gid in group]
        marks = ",".join("?" * len(ids))
        known = {
            gid: (prompt, response, request)
            for gid, prompt, response, request in db.execute(
                f"SELECT generation_id, prompt, response, request_id FROM generations "
                f"WHERE generation_id IN ({marks}) AND user_id NOT IN ({EXCLUDED_USERS})",
                ids,
            )
        }
        for rank, better_group in enumerate(groups):
            for worse_group in groups[rank + 1 :]:
                for better, worse in ((b, w) for b in better_group for w in worse_group):
                    if better not in known or worse not in known or known[better][1] == known[worse][1]:
                        continue
                    prompt = known[better][0]
                    if is_heldout(prompt):
                        continue
                    same_request = known[better][2] == known[worse][2]
                    pairs.append(
                        PreferencePair(
                            prompt, known[better][1], known[worse][1], 2.0 / len(ids), user, seq, same_request
                        )
                    )
        if len(pairs) >= limit:
            break
    return pairs


def rated_responses(
    db: sqlite3.Connection, caps: UserCaps, limit: int, is_heldout: PromptFilter, flags: bool = True
) -> list[RatedResponse]:
    """The ``limit`` most recent trainable thumbs (and, with ``flags``, flags), newest first, weighted."""
    kinds = "('rating', 'flag')" if flags else "('rating')"
    rows = db.execute(
        _ELIGIBLE + "SELECT g.generation_id, g.prompt, g.response, f.kind, f.score, f.user_id, f.seq FROM eligible f "
        "JOIN generations g ON g.generation_id = f.generation_id "
        f"WHERE f.kind IN {kinds} AND g.user_id NOT IN ({EXCLUDED_USERS}) ORDER BY f.seq DESC",
        _params(caps),
    )
    out: list[RatedResponse] = []
    seen: set[tuple[str, str, str]] = set()
    for gid, prompt, response, kind, score, user, seq in rows:
        if (kind == "rating" and not score) or is_heldout(prompt) or (user, gid, kind) in seen:
            continue
        seen.add((user, gid, kind))
        desirable = kind == "rating" and score > 0
        out.append(RatedResponse(prompt, response, desirable, user_id=user, seq=seq, kind=kind))
        if len(out) >= limit:
            break
    return _share_weighted(out, caps.max_share)


def _share_weighted(items: list[Item], max_share: float) -> list[Item]:
    """Each item's weight times its user's share factor: no user above ``max_share`` of the set."""
    counts: dict[str, float] = defaultdict(float)
    for item in items:
        counts[item.user_id] += item.weight
    factors = share_factors(counts, max_share)
    return [
        item if factors[item.user_id] == 1.0 else dataclasses.replace(item, weight=item.weight * factors[item.user_id])
        for item in items
    ]

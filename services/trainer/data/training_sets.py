"""What the trainer trains on, read from the ledger: every query here skips
excluded users and applies the per-user caps (services.trainer.data.fair_share).

- A user who sent a deletion request (the ``deletions`` table) is excluded:
  their feedback, and the generations made for them (their prompts), are in no
  training set, including rows that arrive after the request.
- Of one user's feedback in one window of receipt time, only the first
  ``max_per_window`` rows count.
- Within one training set, the heaviest users are weighted down to
  ``max_share`` of it (comparisons carry the weight; corrections, which have
  none, are capped in number).
- A ranking of K generations becomes every strictly-ordered pair, each owned
  2/K by its user, so a full ranking (K(K-1)/2 pairs) weighs K-1 preferences
  and ties weigh nothing; the share cap then scales that weight like any other.

Functions take the ledger's SQLite connection; FeedbackLedger calls them.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from services.trainer.data.fair_share import UserCaps, share_cap, share_factors


@dataclass(frozen=True)
class Comparison:
    """A preference pair for reward-model training, with how much it counts
    (``weight``, from the share cap) and whose feedback it came from."""

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    users: tuple[str, ...] = field(default=(), compare=False)
    seq: int = field(default=0, compare=False)  # the newest ledger seq behind it


@dataclass(frozen=True)
class Demonstration:
    """A correction: the better response a user wrote, for SFT / PPO-ptx."""

    prompt: str
    response: str
    user_id: str = field(default="", compare=False)
    seq: int = field(default=0, compare=False)


# Users whose data must not be trained on.
EXCLUDED_USERS = "SELECT user_id FROM deletions"

# Feedback that may be trained on: not excluded, and within its user's limit per
# window (anonymous feedback has no user to limit). Parameters :window_s, :max_per_window.
_ELIGIBLE = f"""
WITH counted AS (
    SELECT f.*, ROW_NUMBER() OVER (
        PARTITION BY f.user_id, CAST(f.received_at / :window_s AS INTEGER) ORDER BY f.seq
    ) AS nth_in_window
    FROM feedback f
    WHERE f.user_id NOT IN ({EXCLUDED_USERS})
),
eligible AS (
    SELECT * FROM counted WHERE :max_per_window <= 0 OR user_id = '' OR nth_in_window <= :max_per_window
)
"""


def _params(caps: UserCaps, **more) -> dict:
    return {"window_s": caps.window_s, "max_per_window": caps.max_per_window, **more}


def comparisons(db: sqlite3.Connection, caps: UserCaps, after_seq: int = 0) -> list[Comparison]:
    """Preference pairs, plus pairs made from ratings (two responses to the same
    prompt whose mean ratings differ give a (better, worse) pair), newer than
    ``after_seq``, weighted so no user carries more than ``caps.max_share``."""
    rows = db.execute(
        _ELIGIBLE + "SELECT c.prompt, c.response, r.response, f.user_id, f.seq FROM eligible f "
        "JOIN generations c ON c.generation_id = f.generation_id "
        "JOIN generations r ON r.generation_id = f.other_generation_id "
        f"WHERE f.kind = 'preference' AND f.seq > :after_seq "
        f"AND c.user_id NOT IN ({EXCLUDED_USERS}) AND r.user_id NOT IN ({EXCLUDED_USERS}) ORDER BY f.seq",
        _params(caps, after_seq=after_seq),
    )
    owned = [(Comparison(p, c, r, users=(u,), seq=s), {u: 1.0}) for p, c, r, u, s in rows]
    owned.extend(_ranking_pairs(db, caps, after_seq))
    owned.extend(_rating_pairs(db, caps, after_seq))
    return _weighted(owned, caps.max_share)


def _ranking_pairs(db: sqlite3.Connection, caps: UserCaps, after_seq: int) -> list[tuple[Comparison, dict[str, float]]]:
    """Every strictly-ordered pair of each ranking newer than ``after_seq``, owned
    2/K by the ranking's user (K: generations ranked). Pairs with a generation made
    for an excluded user, or two identical responses, are left out."""
    rankings = db.execute(
        _ELIGIBLE + "SELECT f.text, f.user_id, f.seq FROM eligible f WHERE f.kind = 'ranking' AND f.seq > :after_seq "
        "ORDER BY f.seq",
        _params(caps, after_seq=after_seq),
    ).fetchall()
    pairs = []
    for groups_json, user, seq in rankings:
        groups: list[list[str]] = json.loads(groups_json)
        ids = [gid for group in groups for gid in group]
        marks = ",".join("?" * len(ids))
        known = {
            gid: (prompt, response)
            for gid, prompt, response in db.execute(
                f"SELECT generation_id, prompt, response FROM generations WHERE generation_id IN ({marks}) "
                f"AND user_id NOT IN ({EXCLUDED_USERS})",
                ids,
            )
        }
        part = 2.0 / len(ids)
        for better_rank, better_group in enumerate(groups):
            for worse_group in groups[better_rank + 1 :]:
                for better in better_group:
                    for worse in worse_group:
                        if better not in known or worse not in known or known[better][1] == known[worse][1]:
                            continue
                        prompt = known[better][0]
                        comparison = Comparison(prompt, known[better][1], known[worse][1], users=(user,), seq=seq)
                        pairs.append((comparison, {user: part}))
    return pairs


def _rating_pairs(db: sqlite3.Connection, caps: UserCaps, after_seq: int) -> list[tuple[Comparison, dict[str, float]]]:
    """Each rated generation's mean rating (one vote per user), paired within a
    prompt; a pair belongs in equal parts to everyone who rated either side."""
    rows = db.execute(
        _ELIGIBLE + "SELECT g.generation_id, g.prompt, g.response, f.user_id, f.score, f.seq FROM eligible f "
        "JOIN generations g ON g.generation_id = f.generation_id "
        f"WHERE f.kind = 'rating' AND g.user_id NOT IN ({EXCLUDED_USERS}) ORDER BY g.prompt, g.generation_id",
        _params(caps),
    )
    rated: dict[str, dict[str, list]] = defaultdict(dict)  # prompt -> generation -> [response, scores, raters, seq]
    for gid, prompt, response, user, score, seq in rows:
        entry = rated[prompt].setdefault(gid, [response, [], set(), 0])
        entry[1].append(score)
        entry[2].add(user)
        entry[3] = max(entry[3], seq)
    pairs = []
    for prompt, generations in rated.items():
        items = [(resp, sum(scores) / len(scores), raters, seq) for resp, scores, raters, seq in generations.values()]
        for i, (resp_a, score_a, raters_a, seq_a) in enumerate(items):
            for resp_b, score_b, raters_b, seq_b in items[i + 1 :]:
                if max(seq_a, seq_b) <= after_seq or score_a == score_b or resp_a == resp_b:
                    continue
                better, worse = (resp_a, resp_b) if score_a > score_b else (resp_b, resp_a)
                owners = sorted(raters_a | raters_b)
                pairs.append(
                    (
                        Comparison(prompt, better, worse, users=tuple(owners), seq=max(seq_a, seq_b)),
                        {u: 1.0 / len(owners) for u in owners},
                    )
                )
    return pairs


def _weighted(owned: list[tuple[Comparison, dict[str, float]]], max_share: float) -> list[Comparison]:
    """Each comparison weighted by its owners' share factors."""
    counts: dict[str, float] = defaultdict(float)
    for _, owners in owned:
        for user, part in owners.items():
            counts[user] += part
    factors = share_factors(counts, max_share)
    out = []
    for comparison, owners in owned:
        weight = sum(part * factors[user] for user, part in owners.items())
        out.append(comparison if weight == 1.0 else dataclasses.replace(comparison, weight=weight))
    return out


def demonstrations(db: sqlite3.Connection, caps: UserCaps, limit: int) -> list[Demonstration]:
    """The most recent corrections, at most ``limit``, no user holding more than
    ``caps.max_share`` of them (their most recent ones are kept)."""
    rows = db.execute(
        _ELIGIBLE + "SELECT g.prompt, f.text, f.user_id, f.seq FROM eligible f "
        "JOIN generations g ON g.generation_id = f.generation_id "
        f"WHERE f.kind = 'correction' AND g.user_id NOT IN ({EXCLUDED_USERS}) ORDER BY f.seq DESC LIMIT :candidates",
        _params(caps, candidates=max(limit, 1) * 4),
    ).fetchall()
    counts: dict[str, float] = defaultdict(float)
    for _, _, user, _ in rows:
        counts[user] += 1
    cap = share_cap(counts, caps.max_share)
    kept: dict[str, int] = defaultdict(int)
    out = []
    for prompt, text, user, seq in rows:
        if cap is not None and kept[user] >= max(1, int(cap)):
            continue
        kept[user] += 1
        out.append(Demonstration(prompt, text, user, seq))
        if len(out) == limit:
            break
    return out


def distinct_prompts(db: sqlite3.Connection) -> list[str]:
    """Every distinct prompt of a user who may be trained on."""
    rows = db.execute(f"SELECT DISTINCT prompt FROM generations WHERE user_id NOT IN ({EXCLUDED_USERS})")
    return [r[0] for r in rows]


def recent_prompts(db: sqlite3.Connection, limit: int) -> list[str]:
    """Distinct prompts of the most recent generations (of users who may be trained on)."""
    rows = db.execute(
        "SELECT prompt FROM (SELECT prompt, MAX(created_at) AS t FROM generations "
        f"WHERE user_id NOT IN ({EXCLUDED_USERS}) GROUP BY prompt) ORDER BY t DESC LIMIT ?",
        (limit,),
    )
    return [r[0] for r in rows]

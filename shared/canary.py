"""Which users a canary serves: a sticky slice of user ids, by hash.

A user is in the canary when the CRC32 of their id, as a fraction of 2**32,
is below the canary's share. Every policy replica (and every restart) agrees
without sharing state, a user keeps seeing the same version for the whole
rollout, and raising the share only adds users. Requests without a user id
are served by the stable version.
"""

from __future__ import annotations

import zlib


def user_bucket(user_id: str) -> float:
    """The user's place in [0, 1), the same on every replica."""
    return zlib.crc32(user_id.encode()) / 2**32


def serves_canary(user_id: str, share: float) -> bool:
    """True when ``user_id`` belongs to the canary's ``share`` of users."""
    return bool(user_id) and user_bucket(user_id) < share

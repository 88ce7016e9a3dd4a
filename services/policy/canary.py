"""Serving a canary beside the stable version: which engine answers a user.

The stable engine serves CURRENT; while a canary rollout runs, a second
engine (its own scheduler thread and batches) serves the canary version to a
sticky share of the users (shared.canary: by a hash of user_id; requests
without one stay on stable). Swapping the route is one reference change under
a lock, so a request is routed to exactly one engine, and every response
carries the version that produced it. No grpc here.
"""

from __future__ import annotations

import threading

from services.policy.engine import GenerationEngine
from shared.canary import serves_canary


class CanaryRouter:
    """The stable engine, plus the canary engine and its share while a canary runs."""

    def __init__(self, stable: GenerationEngine):
        self.stable = stable
        self._canary: GenerationEngine | None = None
        self._share = 0.0
        self._lock = threading.Lock()

    @property
    def canary(self) -> GenerationEngine | None:
        return self._canary

    def serving_canary(self) -> tuple[str, float] | None:
        """(canary version, share) being served, or None."""
        with self._lock:
            return (self._canary.bundle.version, self._share) if self._canary is not None else None

    def engine_for(self, user_id: str) -> GenerationEngine:
        """The canary engine for the canary's users, the stable engine for everyone else."""
        with self._lock:
            if self._canary is not None and serves_canary(user_id, self._share):
                return self._canary
            return self.stable

    def set_canary(self, engine: GenerationEngine, share: float) -> GenerationEngine | None:
        """Route ``share`` of the users to ``engine``; returns the canary engine it replaces (to stop)."""
        with self._lock:
            previous, self._canary, self._share = self._canary, engine, share
        return previous if previous is not engine else None

    def set_share(self, share: float) -> None:
        with self._lock:
            self._share = share

    def clear(self) -> GenerationEngine | None:
        """Everyone back on stable; returns the retired canary engine (to stop), if any."""
        with self._lock:
            previous, self._canary, self._share = self._canary, None, 0.0
        return previous

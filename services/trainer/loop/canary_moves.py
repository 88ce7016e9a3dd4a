"""The Promoter's canary moves: start, complete and withdraw a canary, and end one for an operator.

A mixin of services.trainer.loop.promotion.Promoter (kept apart so each file
holds one concern): every move runs under the Promoter's lock and announces
through its ``_announce``, exactly as the other changes do.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from services.trainer import metrics as tm
from shared.errors import FailedPrecondition, InvalidArgument
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import events_pb2

log = logging.getLogger(__name__)


class CanaryMoves:
    """Canary rollouts on the store's CANARY pointer (see the Promoter's docstring for the order of a change)."""

    store: ModelStore
    _lock: threading.Lock

    if TYPE_CHECKING:  # provided by Promoter

        def _announce_pending_locked(self) -> bool: ...

        def _announce(self, *args: Any, **kwargs: Any) -> tuple[events_pb2.ModelUpdateEvent, bool]: ...

    def complete_canary(
        self, kind: str, version: str, reason: str, metrics: dict[str, float]
    ) -> events_pb2.ModelUpdateEvent:
        """The canary ``version`` proved itself: make it CURRENT, remove the pointer, publish CANARY_COMPLETE."""
        with self._lock:
            self._announce_pending_locked()
            stable = self._running_canary(kind, version).stable_version
            self.store.set_current(kind, version)
            self.store.clear_canary(kind)
            update, _ = self._announce(
                kind,
                version,
                stable,
                events_pb2.MODEL_UPDATE_ACTION_CANARY_COMPLETE,
                reason,
                metrics,
                actor="trainer canary judge",
            )
        tm.PROMOTIONS.labels(kind, "canary").inc()
        return update

    def rollback_canary(
        self, kind: str, version: str, reason: str, metrics: dict[str, float]
    ) -> events_pb2.ModelUpdateEvent:
        """Withdraw the canary ``version``: remove the pointer, publish CANARY_ROLLBACK (CURRENT stays)."""
        with self._lock:
            self._announce_pending_locked()
            self._running_canary(kind, version)
            self.store.clear_canary(kind)
            stable = self.store.current(kind) or ""
            update, _ = self._announce(
                kind,
                stable,
                version,
                events_pb2.MODEL_UPDATE_ACTION_CANARY_ROLLBACK,
                reason,
                metrics,
                actor="trainer canary judge",
            )
        tm.ROLLBACKS.labels(kind).inc()
        return update

    def _running_canary(self, kind: str, version: str):
        pointer = self.store.canary(kind)
        if pointer is None or pointer.version != version:
            raise FailedPrecondition(f"the {kind} canary {version} is no longer running (an operator ended it)")
        return pointer

    def _check_canary_request(self, kind: str, version: str, current: str, share: float) -> None:
        if kind != "policy":
            raise InvalidArgument("canary_share", "only a policy can be served as a canary (users are routed to it)")
        if not 0.0 < share < 1.0:
            raise InvalidArgument("canary_share", f"must be between 0 and 1 (exclusive), got {share}")
        if version == current:
            raise InvalidArgument("version", f"{version} is already the current {kind} version")

    def _start_canary(
        self,
        kind: str,
        version: str,
        stable: str,
        share: float,
        reason: str,
        eval_metrics: dict[str, float],
        *,
        actor: str,
        event_id: str = "",
    ) -> tuple[events_pb2.ModelUpdateEvent, bool]:
        """Point CANARY at ``version`` and publish CANARY_START; returns the event and whether Kafka acknowledged it."""
        self.store.set_canary(kind, version, share, stable)
        announced = self._announce(
            kind,
            version,
            stable,
            events_pb2.MODEL_UPDATE_ACTION_CANARY_START,
            reason,
            eval_metrics,
            share,
            actor=actor,
            event_id=event_id,
        )
        tm.CANARY_DECISIONS.labels("started").inc()
        return announced

    def _end_canary_by_operator(self, kind: str):
        """Remove a running canary's pointer (an operator's change supersedes it); returns it, or None."""
        pointer = self.store.canary(kind)
        if pointer is not None:
            self.store.clear_canary(kind)
            tm.CANARY_DECISIONS.labels("ended_by_operator").inc()
            log.info("canary ended by an operator's change", extra={"kind": kind, "version": pointer.version})
        return pointer

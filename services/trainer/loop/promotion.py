"""Making a version current and telling the replicas.

The order matters: the version is complete in the model store first
(write_version renames it into place), then CURRENT points at it (so a replica
that restarts loads it), then the ModelUpdateEvent is published with acks=all
and the broker's ack is awaited (so the caller knows the replicas will hear).

If the broker does not acknowledge the event, the change has still happened
(CURRENT moved): the event is kept and re-published by announce_pending(),
which the trainer calls on every check, and before any later change. It is
never redone as a new version.

Canary rollouts (services.trainer.loop.canary) take the same path with the
store's CANARY pointer: a start writes the version and the pointer (CURRENT
stays: the stable version), a completion moves CURRENT to the canary and
removes the pointer, a rollback removes the pointer; each publishes its
ModelUpdateEvent (CANARY_START / CANARY_COMPLETE / CANARY_ROLLBACK). An
operator's Promote or Rollback ends a running canary first.

Every announced change is also appended to the model store's history (who or
what made it, when, why, the event id), and a version the trainer writes
carries its promotion in the manifest notes (``promoted_by``,
``promotion_event_id``): `rlhf lineage` reads both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.trainer import metrics as tm
from services.trainer.loop.canary_moves import CanaryMoves
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.kafka import events
from shared.kafka.producer import produce_event
from shared.models.store import KINDS, ModelStore, ModelStoreError, version_number
from shared.proto.rlhf.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)

_KIND_ENUM = {"policy": common_pb2.MODEL_KIND_POLICY, "reward": common_pb2.MODEL_KIND_REWARD}


def kind_name(kind: int) -> str:
    """'policy' / 'reward' from a ModelKind; InvalidArgument otherwise."""
    for name, value in _KIND_ENUM.items():
        if value == kind:
            return name
    raise InvalidArgument("kind", "set MODEL_KIND_POLICY or MODEL_KIND_REWARD")


class Promoter(CanaryMoves):
    """Writes, points CURRENT and publishes; one change at a time.

    It owns its producer (made by ``producer_factory``) and replaces it after
    a failed publish: kafka-python's idempotent producer does not recover once
    the broker has forgotten its producer id (a broker that lost its state),
    and a fresh producer gets a new id.
    """

    def __init__(self, store: ModelStore, producer_factory: Callable[[], Any], ack_timeout_s: float = 30.0):
        self.store = store
        self.producer_factory = producer_factory
        self.ack_timeout_s = ack_timeout_s
        self._producer = None
        self._lock = threading.Lock()  # a gate promotion and an operator rollback must not interleave
        self._unannounced: events_pb2.ModelUpdateEvent | None = None

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

    def announce_pending(self) -> bool:
        """Re-publish a change whose event was not acknowledged; True when none is left."""
        with self._lock:
            return self._announce_pending_locked()

    def _announce_pending_locked(self) -> bool:
        update = self._unannounced
        if update is None:
            return True
        try:
            self._publish(update)
        except Exception as exc:  # noqa: BLE001 - still down; the next check tries again
            log.warning("model update still not acknowledged", extra={"version": update.version, "error": str(exc)})
            return False
        self._unannounced = None
        return True

    def promote_new(
        self,
        kind: str,
        fill: Callable[[Path], None],
        *,
        parent_version: str,
        eval_metrics: dict[str, float],
        reason: str,
        notes: dict[str, str] | None = None,
        expected_current: str | None = None,
        canary_share: float = 0.0,
        actor: str = "trainer gate",
        base_version: str = "",
    ) -> events_pb2.ModelUpdateEvent:
        """Store a new version made by ``fill`` and make it current, or with ``canary_share``
        > 0 start it as a canary for that share of users. ``base_version``: ``fill`` writes a
        LoRA adapter on that full-weights version (shared.models.adapters).

        ``expected_current``: refuse (FailedPrecondition) if an operator moved
        CURRENT since the candidate was trained from it. ``actor``: who or what
        promotes it, for the manifest and the history."""
        with self._lock:
            self._announce_pending_locked()
            previous = self.store.current(kind) or ""
            if expected_current is not None and previous != expected_current:
                raise FailedPrecondition(
                    f"{kind} current moved from {expected_current} to {previous} while the candidate was trained"
                )
            if canary_share and self.store.canary(kind) is not None:
                raise FailedPrecondition(f"a {kind} canary rollout is in progress; one rollout at a time")
            event_id = events.new_id()
            lineage = {"promoted_by": actor, "promotion_reason": reason, "promotion_event_id": event_id}
            manifest = self.store.write_version(
                kind,
                fill,
                parent_version=parent_version,
                eval_metrics=eval_metrics,
                notes={**(notes or {}), **lineage},
                base_version=base_version,
            )
            # Not announced yet is fine here: the version is current (or the canary) and
            # announce_pending() keeps publishing it; retrying would store a duplicate.
            if canary_share:
                update, _announced = self._start_canary(
                    kind,
                    manifest.version,
                    previous,
                    canary_share,
                    reason,
                    manifest.eval_metrics,
                    actor=actor,
                    event_id=event_id,
                )
                return update
            update, _announced = self._switch(
                kind,
                manifest.version,
                previous,
                events_pb2.MODEL_UPDATE_ACTION_PROMOTE,
                reason,
                manifest.eval_metrics,
                actor=actor,
                event_id=event_id,
            )
        tm.PROMOTIONS.labels(kind, "gate").inc()
        return update

    def promote_existing(
        self, kind: str, version: str, reason: str, canary_share: float = 0.0, actor: str = "operator"
    ) -> events_pb2.ModelUpdateEvent:
        """Operator override: make a stored version current, bypassing the gate; with
        ``canary_share`` > 0, serve it first as a canary judged by live feedback."""
        with self._lock:
            self._announce_pending_locked()
            manifest = self._manifest(kind, version, "version")
            previous = self.store.current(kind) or ""
            if canary_share:
                self._check_canary_request(kind, version, previous, canary_share)
            self._end_canary_by_operator(kind)
            if canary_share:
                update, announced = self._start_canary(
                    kind,
                    version,
                    previous,
                    canary_share,
                    reason or "operator canary",
                    manifest.eval_metrics,
                    actor=actor,
                )
                return self._require_announced(update, announced)
            update, announced = self._switch(
                kind,
                version,
                previous,
                events_pb2.MODEL_UPDATE_ACTION_PROMOTE,
                reason or "operator promote",
                manifest.eval_metrics,
                actor=actor,
            )
        tm.PROMOTIONS.labels(kind, "operator").inc()
        return self._require_announced(update, announced)

    def rollback(self, kind: str, to_version: str, reason: str, actor: str = "operator") -> events_pb2.ModelUpdateEvent:
        """Make ``to_version`` (empty: the version before the current one) current again.
        During a canary rollout, an empty ``to_version`` only ends the canary (CURRENT,
        the stable version, stays)."""
        with self._lock:
            self._announce_pending_locked()
            current = self.store.current(kind)
            if current is None:
                raise FailedPrecondition(f"the model store holds no {kind} version yet")
            canary = self._end_canary_by_operator(kind)
            if canary is not None and not to_version:
                update, announced = self._announce(
                    kind,
                    current,
                    canary.version,
                    events_pb2.MODEL_UPDATE_ACTION_CANARY_ROLLBACK,
                    reason or "operator rollback of the canary",
                    self.store.manifest(kind, current).eval_metrics,
                    actor=actor,
                )
                tm.ROLLBACKS.labels(kind).inc()
                return self._require_announced(update, announced)
            target = to_version or self._previous(kind, current)
            manifest = self._manifest(kind, target, "to_version")
            if target == current:
                raise InvalidArgument("to_version", f"{target} is already the current {kind} version")
            update, announced = self._switch(
                kind,
                target,
                current,
                events_pb2.MODEL_UPDATE_ACTION_ROLLBACK,
                reason or "operator rollback",
                manifest.eval_metrics,
                actor=actor,
            )
        tm.ROLLBACKS.labels(kind).inc()
        return self._require_announced(update, announced)

    @staticmethod
    def _require_announced(update: events_pb2.ModelUpdateEvent, announced: bool) -> events_pb2.ModelUpdateEvent:
        """An operator must hear that running replicas have not been told yet."""
        if not announced:
            kind = "policy" if update.kind == common_pb2.MODEL_KIND_POLICY else "reward"
            raise Unavailable(
                f"{kind} {update.version} is now current in the model store (restarting replicas "
                "load it), but Kafka did not acknowledge the update event; the trainer keeps "
                "re-publishing it. Do not repeat the call."
            )
        return update

    def _previous(self, kind: str, current: str) -> str:
        older = [v for v in self.store.versions(kind) if version_number(v) < version_number(current)]
        if not older:
            raise FailedPrecondition(f"{kind} {current} is the oldest version; there is nothing to roll back to")
        return older[-1]

    def _manifest(self, kind: str, version: str, field: str):
        if kind not in KINDS:
            raise InvalidArgument("kind", f"must be one of {KINDS}")
        try:
            version_number(version)
        except ModelStoreError as exc:
            raise InvalidArgument(field, str(exc)) from exc
        try:
            return self.store.manifest(kind, version)
        except ModelStoreError as exc:
            raise NotFound(str(exc)) from exc

    def _publish(self, update: events_pb2.ModelUpdateEvent) -> None:
        kind = "policy" if update.kind == common_pb2.MODEL_KIND_POLICY else "reward"
        try:
            if self._producer is None:
                self._producer = self.producer_factory()
            produce_event(self._producer, events.MODEL_UPDATES_TOPIC, kind, update).get(timeout=self.ack_timeout_s)
        except Exception:
            if self._producer is not None:
                self._producer.close(timeout=0)
                self._producer = None
            raise
        log.info(
            "model update published",
            extra={
                "kind": kind,
                "version": update.version,
                "previous_version": update.previous_version,
                "reason": update.reason,
                "action": events_pb2.ModelUpdateAction.Name(update.action),
            },
        )

    def _switch(
        self,
        kind: str,
        version: str,
        previous: str,
        action: int,
        reason: str,
        eval_metrics: dict[str, float],
        *,
        actor: str,
        event_id: str = "",
    ) -> tuple[events_pb2.ModelUpdateEvent, bool]:
        """Move CURRENT and publish; returns the event and whether Kafka acknowledged it."""
        self.store.set_current(kind, version)
        return self._announce(kind, version, previous, action, reason, eval_metrics, actor=actor, event_id=event_id)

    def _announce(
        self,
        kind: str,
        version: str,
        previous: str,
        action: int,
        reason: str,
        eval_metrics: dict[str, float],
        canary_share: float = 0.0,
        *,
        actor: str,
        event_id: str = "",
    ) -> tuple[events_pb2.ModelUpdateEvent, bool]:
        """Record the change the store already shows in its history and publish its event;
        returns the event and whether Kafka acknowledged it."""
        event_id = event_id or events.new_id()
        self._record_history(kind, version, previous, action, reason, actor, event_id)
        update = events_pb2.ModelUpdateEvent(
            event_id=event_id,
            kind=_KIND_ENUM[kind],
            version=version,
            previous_version=previous,
            action=action,
            created_at=events.now_timestamp(),
            reason=reason,
            eval_metrics=eval_metrics,
            manifest_sha256=self.store.manifest_sha256(kind, version),
            canary_share=canary_share,
        )
        try:
            self._publish(update)
        except Exception as exc:  # noqa: BLE001 - CURRENT already moved: keep the event and retry it
            log.error(
                "model update not acknowledged; CURRENT was moved and the event will be re-published",
                extra={"kind": kind, "version": version, "error": str(exc)},
            )
            self._unannounced = update
            return update, False
        return update, True

    def _record_history(
        self, kind: str, version: str, previous: str, action: int, reason: str, actor: str, event_id: str
    ) -> None:
        entry = {
            "at": time.time(),
            "action": events_pb2.ModelUpdateAction.Name(action).removeprefix("MODEL_UPDATE_ACTION_").lower(),
            "version": version,
            "previous_version": previous,
            "reason": reason,
            "actor": actor,
            "event_id": event_id,
        }
        try:
            self.store.append_history(kind, entry)
        except OSError as exc:  # the audit trail must not undo a switch that happened; say so loudly
            log.error("could not append to the model store history", extra={"entry": entry, "error": str(exc)})

"""Follow rlhf.model-updates.v1 and hot-swap a replica to the version to serve.

One follower for every kind of replica (policy and reward): each replica reads
every update (no consumer group, from the end of the topic). The consumer
thread only records the wanted version; a loader thread loads it and swaps,
so a slow load never stalls the consumer, and when several updates arrive
during one load only the latest is loaded next.

The version loaded is the store's CURRENT (:meth:`ModelStore.version_to_serve`),
not blindly the one the event names: CURRENT moves before an event is
published, so a stale or reordered event cannot move a replica back. A load
that fails (corrupt files, a manifest that does not match the event) is
logged and counted, and the replica keeps serving what it has.

A follower given a ``canary`` callback (the policy's) also serves the store's
CANARY pointer after every update: a canary start loads the candidate for its
share of users beside CURRENT, a completion or rollback retires it. The
pointer, like CURRENT, is the truth; the event is the signal to look.

An update that is not one (undecodable bytes, a wrong content-type, an
unknown kind, a version that is not v<N>) is dead-lettered with the
reason, by every replica that reads it (``consumer_group`` in the dead letter
names the replica's updates consumer). The dead-letter producer is made on
first use, so a replica starts and serves while the broker is down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka import KafkaProducer

from shared import metrics
from shared.kafka import events
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop, InvalidEvent
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.events import ConsumedEvent
from shared.kafka.producer import create_producer
from shared.models.store import CanaryPointer, ModelStore, ModelStoreError, version_number
from shared.proto.rlhf.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)

_KIND_ENUMS = {"policy": common_pb2.MODEL_KIND_POLICY, "reward": common_pb2.MODEL_KIND_REWARD}
INVALID_UPDATE_REASON = "invalid_field"

# load(version, manifest_sha256): build the version and swap it in (raise to refuse it).
LoadFn = Callable[[str, str], None]
# canary(pointer or None, manifest_sha256 of its version): serve that canary, or none.
CanaryFn = Callable[[CanaryPointer | None, str], None]
_PROMOTE = events_pb2.MODEL_UPDATE_ACTION_PROMOTE
_CANARY_ACTIONS = frozenset(
    {
        events_pb2.MODEL_UPDATE_ACTION_CANARY_START,
        events_pb2.MODEL_UPDATE_ACTION_CANARY_COMPLETE,
        events_pb2.MODEL_UPDATE_ACTION_CANARY_ROLLBACK,
    }
)


class ModelUpdateFollower:
    def __init__(
        self,
        kind: str,
        store: ModelStore,
        load: LoadFn,
        serving_version: Callable[[], str | None],
        bootstrap: str,
        *,
        client_id: str = "",
        kafka_options: dict | None = None,
        canary: CanaryFn | None = None,
        serving_canary: Callable[[], tuple[str, float] | None] | None = None,
    ):
        if kind not in _KIND_ENUMS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(_KIND_ENUMS)}")
        self.kind, self.store, self._load, self._serving = kind, store, load, serving_version
        self._canary, self._serving_canary = canary, serving_canary or (lambda: None)
        client_id = client_id or f"rlhf-{kind}-updates"
        self.dead_letter_group = f"{client_id}/{events.new_id()[:8]}"  # this replica, in its dead letters
        self._dead_letter_producer = _LazyProducer(bootstrap, client_id, dict(kafka_options or {}))
        self.loop = EventConsumerLoop(
            ConsumerSettings(
                bootstrap=bootstrap,
                topics={events.MODEL_UPDATES_TOPIC: events_pb2.ModelUpdateEvent},
                group_id=None,
                from_beginning=False,
                client_id=client_id,
                extra=dict(kafka_options or {}),
            ),
            self.on_update,
            dead_letters=DeadLetterProducer(self._dead_letter_producer, self.dead_letter_group),
        )
        self._wanted: tuple[str, str, int] | None = None  # (version, manifest sha256, action)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def ready(self) -> threading.Event:
        """Set once the consumer is positioned at the end of the topic."""
        return self.loop.ready

    def on_update(self, event: ConsumedEvent) -> None:
        update = event.message
        problems = update_problems(update)
        if problems:
            raise InvalidEvent(INVALID_UPDATE_REASON, "; ".join(problems))
        if update.kind != _KIND_ENUMS[self.kind]:
            return
        log.info("model update received", extra={"kind": self.kind, "version": update.version, "action": update.action})
        with self._cond:
            self._wanted = (update.version, update.manifest_sha256, update.action)
            self._cond.notify()

    def start(self) -> None:
        self._threads = [
            self.loop.start(self._stop, name=f"{self.kind}-updates"),
            threading.Thread(target=self._load_wanted, name=f"{self.kind}-loader", daemon=True),
        ]
        self._threads[1].start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._dead_letter_producer.close()

    def _load_wanted(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while self._wanted is None and not self._stop.is_set():
                    self._cond.wait(timeout=0.5)
                wanted, self._wanted = self._wanted, None
            if wanted is not None:
                self.apply(*wanted)

    def apply(self, announced: str, announced_sha256: str, action: int = _PROMOTE) -> None:
        """Serve what CURRENT (and, with a canary callback, CANARY) names after an update announcing ``announced``."""
        self._apply_current(announced, announced_sha256, action)
        if self._canary is not None:
            self.apply_canary(announced, announced_sha256)

    def _apply_current(self, announced: str, announced_sha256: str, action: int) -> None:
        version = announced
        try:
            if action in _CANARY_ACTIONS:
                # A canary event names the canary or the version it yields to; CURRENT is the stable one.
                current = self.store.current(self.kind)
                if current is None:
                    return
                version = current
                sha = announced_sha256 if current == announced else self.store.manifest_sha256(self.kind, current)
            else:
                version, sha = self.store.version_to_serve(self.kind, announced, announced_sha256)
                if version != announced:
                    log.warning(
                        "stale model update; serving CURRENT instead",
                        extra={"kind": self.kind, "announced": announced, "current": version},
                    )
            if version == self._serving():
                return  # redelivery, a stale event, or we started on it: idempotent
            self._load(version, sha)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            self._failed(version, exc)
            return
        metrics.MODEL_SWAPS.labels(self.kind, "ok").inc()

    def apply_canary(self, announced: str = "", announced_sha256: str = "") -> None:
        """Serve the store's CANARY pointer (or none) if it differs from what is served."""
        assert self._canary is not None
        version = ""
        try:
            pointer = self.store.canary(self.kind)
            if pointer is not None and pointer.version == self.store.current(self.kind):
                pointer = None  # completing: the canary is CURRENT now
            wanted = (pointer.version, pointer.share) if pointer else None
            if wanted == self._serving_canary():
                return
            sha = ""
            if pointer is not None:
                version = pointer.version
                same = pointer.version == announced and announced_sha256
                sha = announced_sha256 if same else self.store.manifest_sha256(self.kind, pointer.version)
            self._canary(pointer, sha)
        except Exception as exc:  # noqa: BLE001 - keep serving what we serve
            self._failed(version or "canary", exc)
            return
        metrics.MODEL_SWAPS.labels(self.kind, "ok").inc()

    def _failed(self, version: str, exc: Exception) -> None:
        metrics.MODEL_SWAPS.labels(self.kind, "failed").inc()
        log.error(
            "cannot swap model version; still serving the previous one",
            extra={"kind": self.kind, "version": version, "error": f"{type(exc).__name__}: {exc}"},
        )


def update_problems(update: events_pb2.ModelUpdateEvent) -> list[str]:
    """Why ``update`` is not a model update a replica can act on (empty when it is one):
    it must name a kind and a version (its action is informational: CURRENT decides)."""
    out = []
    if update.kind not in _KIND_ENUMS.values():
        out.append(f"kind: unknown ModelKind {update.kind}; expected MODEL_KIND_POLICY or MODEL_KIND_REWARD")
    try:
        version_number(update.version)
    except ModelStoreError as exc:
        out.append(f"version: {exc}")
    return out


class _LazyProducer:
    """The parts of a KafkaProducer a DeadLetterProducer uses, connected on first
    send (a replica must start while the broker is down)."""

    def __init__(self, bootstrap: str, client_id: str, options: dict):
        self._args = (bootstrap, client_id, options)
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def send(self, *args, **kwargs):
        with self._lock:
            if self._producer is None:
                bootstrap, client_id, options = self._args
                self._producer = create_producer(bootstrap, client_id=f"{client_id}-deadletters", **options)
            producer = self._producer
        return producer.send(*args, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        if self._producer is not None:
            self._producer.flush(timeout=timeout)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=1)
                self._producer = None

"""Follow rlhf.model-updates.v1 and hot-swap the reward version.

Every replica reads every update (no consumer group, from the end). The
consumer thread only records the wanted version; a loader thread loads it and
swaps, so a slow load never stalls the consumer, and when several updates
arrive during one load only the latest is loaded next.
"""

from __future__ import annotations

import logging
import threading

from services.reward.scorer import KIND, RewardScorer
from shared import events
from shared.events import ConsumedEvent
from shared.kafka_io import ConsumerSettings, EventConsumerLoop
from shared.proto.rlhf.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)


class RewardUpdateFollower:
    def __init__(self, scorer: RewardScorer, bootstrap: str, client_id: str = "rlhf-reward",
                 kafka_options: dict | None = None):
        self.scorer = scorer
        self.loop = EventConsumerLoop(
            ConsumerSettings(bootstrap=bootstrap, topics={events.MODEL_UPDATES_TOPIC: events_pb2.ModelUpdateEvent},
                             group_id=None, from_beginning=False, client_id=client_id,
                             extra=dict(kafka_options or {})),
            self.on_update)
        self._wanted: tuple[str, str] | None = None  # (version, manifest sha256)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def ready(self) -> threading.Event:
        """Set once the consumer is positioned at the end of the topic."""
        return self.loop.ready

    def on_update(self, event: ConsumedEvent) -> None:
        update = event.message
        if update.kind != common_pb2.MODEL_KIND_REWARD:
            return
        log.info("reward update received", extra={"version": update.version, "action": update.action})
        with self._cond:
            self._wanted = (update.version, update.manifest_sha256)
            self._cond.notify()

    def start(self) -> None:
        self._threads = [self.loop.start(self._stop, name="reward-updates"),
                         threading.Thread(target=self._load_wanted, name="reward-loader", daemon=True)]
        self._threads[1].start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def _load_wanted(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while self._wanted is None and not self._stop.is_set():
                    self._cond.wait(timeout=0.5)
                wanted, self._wanted = self._wanted, None
            if wanted is None:
                continue
            version, sha = wanted
            try:
                version, sha = self.scorer.store.version_to_serve(KIND, version, sha)
                if version != wanted[0]:
                    log.warning("stale reward update; serving CURRENT instead",
                                extra={"announced": wanted[0], "current": version})
                self.scorer.load(version, sha)
            except Exception as exc:  # noqa: BLE001 - keep serving the old version
                log.error("cannot swap to reward version; still serving the previous one",
                          extra={"version": version, "error": f"{type(exc).__name__}: {exc}"})

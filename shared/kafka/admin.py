"""Topic creation: the project's topics, made idempotently (used at startup and by `rlhf up`)."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from shared.kafka import events

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str, partitions: dict[str, int] | None = None, timeout_s: float = 15.0, **client_options
) -> None:
    """Create the project's topics if missing (idempotent)."""
    wanted = partitions or events.TOPIC_PARTITIONS
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, client_id="rlhf-admin", bootstrap_timeout_ms=2000, **client_options
            )
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in wanted.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics", extra={"topics": [t.name for t in missing]})
    finally:
        admin.close()

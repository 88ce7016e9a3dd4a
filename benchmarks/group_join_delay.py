"""How long a consumer takes to join a group on the embedded broker, by session timeout.

python -m benchmarks.group_join_delay --session-ms 6000,20000,45000

For each session timeout, on a fresh embedded broker (Tansu): a consumer joins a new group
(timed until it holds its partitions), closes (kafka-python sends LeaveGroup), and a second
consumer joins the same, now empty, group (timed again). With ``--debug`` kafka-python's
coordinator log shows the LeaveGroup request and its answer. Written to explain why a restarted
consumer took 47 s to rejoin at Apache's 45 s session timeout (docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import logging
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from shared.kafka.broker import EmbeddedBroker, free_port


def timed_join(bootstrap: str, session_ms: int) -> tuple[KafkaConsumer, float]:
    consumer = KafkaConsumer(
        "t",
        bootstrap_servers=bootstrap,
        group_id="g",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=min(3000, session_ms // 3),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    start = time.monotonic()
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)
    return consumer, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session-ms", default="6000,20000,45000", help="comma-separated session timeouts")
    parser.add_argument("--debug", action="store_true", help="kafka-python's coordinator log on stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    if args.debug:
        logging.getLogger("kafka.coordinator").setLevel(logging.DEBUG)
    for session_ms in (int(s) for s in args.session_ms.split(",") if s):
        broker = EmbeddedBroker(port=free_port()).start()
        try:
            KafkaAdminClient(bootstrap_servers=broker.bootstrap).create_topics([NewTopic("t", 2, 1)])
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
            producer.send("t", b"x")
            producer.close()
            first, first_s = timed_join(broker.bootstrap, session_ms)
            first.close()  # sends LeaveGroup: the group is empty again
            second, second_s = timed_join(broker.bootstrap, session_ms)
            second.close()
        finally:
            broker.stop()
        print(f"session {session_ms / 1000:g} s: first join {first_s:.2f} s, join after a LeaveGroup {second_s:.2f} s")


if __name__ == "__main__":
    main()

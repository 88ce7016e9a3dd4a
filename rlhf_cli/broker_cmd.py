"""`rlhf broker`: run the embedded Kafka-protocol broker and create the topics."""

from __future__ import annotations

import signal
import threading


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker (Tansu) on loopback",
        description="Run Tansu (memory storage) on loopback and create the rlhf topics. Ctrl-C stops it.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=9092, help="listen port")
    parser.set_defaults(func=run)


def run(args) -> int:
    from shared.kafka import events
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EMBEDDED_GROUP_TIMING_ENV, EmbeddedBroker
    from shared.logs import setup_logging

    setup_logging("broker", fmt="text")
    broker = EmbeddedBroker(port=args.port, host=args.host).start()
    ensure_topics(broker.bootstrap)
    print(f"broker listening on {broker.bootstrap}; topics: {', '.join(events.TOPIC_PARTITIONS)}", flush=True)
    # `rlhf up` sets these itself when it starts the broker; services pointed at this one need them to
    # join a consumer group in seconds (Apache Kafka's default session timeout takes ~90 s here).
    timing = " ".join(f"{name}={value}" for name, value in EMBEDDED_GROUP_TIMING_ENV.items())
    print(f"for services using this broker: export {timing}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            if not broker.running():
                print("broker exited unexpectedly")
                return 1
    finally:
        broker.stop()
    return 0

"""A new trainer group reading a backlog: is feedback dead-lettered while its generation is unread?

python -m benchmarks.backlog_hold --pairs 5500 --rounds 4 --busy

Puts ``--pairs`` joined (generation, feedback) pairs on an embedded broker, then, per round, for
each hold clock in turn (interleaved, so both see the same load): a fresh FeedbackIngest group
(the tests' group timing and 1 s hold) reads the backlog plus one marker pair produced last, and
the script waits up to ``--wait-s`` for the marker's feedback to reach the ledger and every
feedback to be joined or dead-lettered (every one has its generation: a dead letter is a loss).

Hold clocks: ``read`` counts the hold from when the feedback was read (before the fix),
``caught-up`` only up to the last time the generations topic had been read to its end (now).
A marker that is not in the ledger was dead-lettered as unknown_generation although its
generation was on the broker: the "stalled group" of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from services.trainer.data.ingest import FeedbackIngest
from services.trainer.data.ledger import FeedbackLedger
from shared.kafka import events
from shared.kafka.admin import ensure_topics
from shared.kafka.broker import EMBEDDED_GROUP_TIMING, EmbeddedBroker
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.producer import create_producer, produce_event
from shared.proto.rlhf.v1 import events_pb2

HOLD_S = 1.0  # the trainer tests' feedback_hold_s
CLOCKS = ("read", "caught-up")


def produce_pair(producer, gid: str, fid: str):
    generation = events_pb2.GenerationEvent(
        event_id=events.new_id(),
        generation_id=gid,
        request_id=gid,
        prompt="User: How?\nAssistant:",
        response="Boil.",
        model_version="v1",
        created_at=events.now_timestamp(),
    )
    feedback = events_pb2.FeedbackEvent(
        feedback_id=fid,
        generation_id=gid,
        user_id="u1",
        created_at=events.now_timestamp(),
        rating=events_pb2.Rating(score=0.5),
    )
    produce_event(producer, events.GENERATIONS_TOPIC, gid, generation)
    return produce_event(producer, events.FEEDBACK_TOPIC, gid, feedback)


def drain(bootstrap: str, pairs: int, clock: str, wait_s: float) -> dict:
    """One fresh group over the whole backlog; how long until the marker's feedback joined."""
    group = f"backlog-{clock}-{time.time_ns()}"
    producer = create_producer(bootstrap)
    produce_pair(producer, f"{group}-g", f"{group}-f").get(10)
    with tempfile.TemporaryDirectory() as tmp:
        ingest = FeedbackIngest(
            FeedbackLedger(Path(tmp) / "ledger.db"), DeadLetterProducer(producer, group), hold_s=HOLD_S
        )
        loop = ingest.consumer_loop(bootstrap, dict(EMBEDDED_GROUP_TIMING), group=group)
        if clock == "read":
            ingest._loop = None  # the hold as before the fix: from when the feedback was read
        lettered = []
        send = ingest.dead_letters.send
        ingest.dead_letters.send = lambda record, *a, **k: (send(record, *a, **k), lettered.append(record))[0]
        stop = threading.Event()
        started = time.monotonic()
        thread = loop.start(stop)
        joined_s = None
        while time.monotonic() - started < wait_s:  # until every feedback is joined or dead-lettered
            with ingest._lock:
                ids = set(ingest.ledger.feedback_ids())
            if joined_s is None and f"{group}-f" in ids:
                joined_s = time.monotonic() - started
            if joined_s is not None and len(ids) + len(lettered) >= pairs + 1:
                break
            time.sleep(0.1)
        stop.set()
        thread.join(30)
        ingest.ledger.close()
    producer.close()
    # Every feedback here has its generation on the broker: each dead letter is one lost wrongly.
    return {"clock": clock, "joined_s": joined_s, "dead_letters": len(lettered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5500)
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each drains once per hold clock")
    parser.add_argument("--wait-s", type=float, default=60.0, help="a marker not joined by then is lost")
    parser.add_argument("--busy", action="store_true", help="keep a busy loop running (the other core)")
    args = parser.parse_args()
    logging.getLogger("shared.kafka.deadletter").setLevel(logging.ERROR)  # a line per dead letter otherwise
    results: list[dict] = []
    with EmbeddedBroker(port=0) as broker:
        ensure_topics(broker.bootstrap)
        producer = create_producer(broker.bootstrap)
        for i in range(args.pairs):
            produce_pair(producer, f"g{i}", f"f{i}")
        producer.flush()
        producer.close()
        for round_no in range(args.rounds):
            for clock in CLOCKS if round_no % 2 == 0 else reversed(CLOCKS):
                busy = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if args.busy else None
                try:
                    result = drain(broker.bootstrap, args.pairs, clock, args.wait_s)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                result["load"] = round(os.getloadavg()[0], 1)
                print(result, flush=True)
                results.append(result)
    for clock in CLOCKS:
        runs = [r for r in results if r["clock"] == clock]
        joined = [r["joined_s"] for r in runs if r["joined_s"] is not None]
        median = f"{statistics.median(joined):.1f} s" if joined else "-"
        letters = sorted(r["dead_letters"] for r in runs)
        print(
            f"hold clock {clock:9}: {len(runs)} runs, marker lost in {len(runs) - len(joined)}, "
            f"feedback wrongly dead-lettered per run {letters}, median time to the marker {median}, "
            f"load average {[round(x, 1) for x in os.getloadavg()]}"
        )


if __name__ == "__main__":
    main()

"""Feedback throughput: through the gateway to the broker, and out of the
broker through EventConsumerLoop.

    .venv/bin/python -m benchmarks.feedback_throughput [--clients 16] [--seconds 10] [--batch 100]

Starts an embedded broker and the gateway (``python -m services.feedback`` in
its own process), then 16 concurrent clients (threads spread over
``--client-processes`` processes, each with its own channel and x-client-id)
submit for ``--seconds`` with SubmitFeedback, then with SubmitFeedbackBatch.
Every counted event was acknowledged by the broker (the gateway answers after
acks=all); the topic is read back to count the records and distinct ids.
Last, ``--consume`` events are read back through EventConsumerLoop into a
handler that validates them (shared.feedback_rules).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

import grpc
from kafka import KafkaConsumer, TopicPartition

from shared import events
from shared.broker import EMBEDDED_GROUP_TIMING, EmbeddedBroker, free_port
from shared.feedback_rules import validating_feedback_handler
from shared.kafka_io import ConsumerSettings, EventConsumerLoop, create_producer, ensure_topics, produce_event
from shared.proto.rlhf.v1 import events_pb2 as ev
from shared.proto.rlhf.v1 import feedback_pb2, feedback_pb2_grpc


def feedback(i: int, client: int, phase: str = "consume") -> ev.FeedbackEvent:
    return ev.FeedbackEvent(
        generation_id=f"{phase}-gen-{client}-{i % 997}",
        user_id=f"user-{client}",
        rating=ev.Rating(score=((i % 21) - 10) / 10.0),
        source=ev.FEEDBACK_SOURCE_END_USER,
    )


def _client_process(address, client_ids, mode, batch, deadline, results):
    def one(client: int) -> None:
        channel = grpc.insecure_channel(address)
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        metadata = (("x-client-id", f"bench-{client}"),)
        accepted, failed, i = 0, 0, 0
        while time.time() < deadline:
            try:
                if mode == "single":
                    stub.SubmitFeedback(
                        feedback_pb2.SubmitFeedbackRequest(feedback=feedback(i, client, mode)),
                        metadata=metadata,
                        timeout=30,
                    )
                    accepted += 1
                else:
                    items = [feedback(i + k, client, mode) for k in range(batch)]
                    reply = stub.SubmitFeedbackBatch(
                        feedback_pb2.SubmitFeedbackBatchRequest(feedback=items), metadata=metadata, timeout=30
                    )
                    accepted += len(reply.results)
            except grpc.RpcError:
                failed += 1
            i += batch if mode == "batch" else 1
        channel.close()
        results.put((accepted, failed))

    threads = [threading.Thread(target=one, args=(c,)) for c in client_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def topic_offsets(bootstrap: str, topic: str) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return consumer.end_offsets([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    finally:
        consumer.close()


def count_records_since(bootstrap: str, start: dict, phase: str) -> tuple[int, int]:
    """(records, distinct feedback ids) of ``phase`` on the broker after
    ``start`` offsets, read back rather than inferred from end offsets (Tansu
    may report end offsets a little behind); polls until quiet for a second."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        count, ids, quiet_since = 0, set(), time.time()
        while time.time() - quiet_since < 1.0:
            for records in consumer.poll(timeout_ms=200).values():
                quiet_since = time.time()
                for r in records:
                    message = events.decode(r.value, r.headers, ev.FeedbackEvent)
                    if message.generation_id.startswith(phase + "-"):
                        count += 1
                        ids.add(message.feedback_id)
        return count, len(ids)
    finally:
        consumer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def submit_phase(address, bootstrap, mode, args, gateway_pid) -> tuple[float, int, int, float]:
    spawn = mp.get_context("spawn")  # fork after gRPC is in use in this process is unsafe
    results = spawn.Queue()
    before = topic_offsets(bootstrap, events.FEEDBACK_TOPIC)
    cpu_before = cpu_seconds(gateway_pid)
    start = time.time() + 4.0  # let every (spawned) process import and connect first
    deadline = start + args.seconds
    groups = [list(range(p, args.clients, args.client_processes)) for p in range(args.client_processes)]
    procs = [
        spawn.Process(target=_client_process, args=(address, g, mode, args.batch, deadline, results)) for g in groups
    ]
    for p in procs:
        p.start()
    outcomes = [results.get() for _ in range(args.clients)]
    for p in procs:
        p.join()
    accepted = sum(a for a, _ in outcomes)
    failed = sum(f for _, f in outcomes)
    gateway_cpu_us = (cpu_seconds(gateway_pid) - cpu_before) / max(1, accepted) * 1e6
    on_broker, distinct = count_records_since(bootstrap, before, mode)
    return accepted / args.seconds, failed, (on_broker, distinct, accepted), gateway_cpu_us


def consume_phase(bootstrap: str, count: int, check_crcs: bool) -> float:
    topic = f"bench-consume-{os.getpid()}-{check_crcs}"
    ensure_topics(bootstrap, {topic: 4})
    producer = create_producer(bootstrap, linger_ms=20, batch_size=256 * 1024)
    for i in range(count):
        message = feedback(i, 0)
        message.feedback_id = f"fb-{i}"
        produce_event(producer, topic, message.generation_id, message)
    producer.flush()
    producer.close()
    handled = [0]
    first: list[float] = []
    done = threading.Event()

    def handler(_event) -> None:
        if not first:
            first.append(time.perf_counter())
        handled[0] += 1
        if handled[0] == count:
            done.set()

    loop = EventConsumerLoop(
        ConsumerSettings(
            bootstrap=bootstrap,
            topics={topic: ev.FeedbackEvent},
            group_id=f"bench-{os.getpid()}-{check_crcs}",
            max_poll_records=2000,
            check_crcs=check_crcs,
            **EMBEDDED_GROUP_TIMING,
        ),
        validating_feedback_handler(handler),
    )
    stop = threading.Event()
    thread = loop.start(stop)
    done.wait(600)
    elapsed = time.perf_counter() - first[0]
    stop.set()
    thread.join(10)
    return count / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--consume", type=int, default=100_000)
    parser.add_argument("--skip-submit", action="store_true", help="only the consumer phase")
    args = parser.parse_args(argv)

    with EmbeddedBroker(port=0) as broker:
        ensure_topics(broker.bootstrap)
        port = free_port()
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.feedback",
                "--port",
                str(port),
                "--metrics-port",
                "-1",
                "--kafka",
                broker.bootstrap,
                "--log-level",
                "WARNING",
                "--max-workers",
                "32",
            ]
        )
        address = f"127.0.0.1:{port}"
        try:
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
            if args.skip_submit:
                raise SystemExit(
                    print(
                        f"consumed: {consume_phase(broker.bootstrap, args.consume, True):.0f}/s, "
                        f"without CRC: {consume_phase(broker.bootstrap, args.consume, False):.0f}/s"
                    )
                )
            single = submit_phase(address, broker.bootstrap, "single", args, gateway.pid)
            print(f"SubmitFeedback done: {single}", file=sys.stderr)
            batch = submit_phase(address, broker.bootstrap, "batch", args, gateway.pid)
            print(f"SubmitFeedbackBatch done: {batch}", file=sys.stderr)
        finally:
            gateway.terminate()
            gateway.wait(30)
        consumed = consume_phase(broker.bootstrap, args.consume, check_crcs=True)
        consumed_no_crc = consume_phase(broker.bootstrap, args.consume, check_crcs=False)

    print(f"command: python -m benchmarks.feedback_throughput {' '.join(sys.argv[1:])}".rstrip())
    print(f"cpus={os.cpu_count()} clients={args.clients} seconds={args.seconds} batch={args.batch}")
    for name, (rate, failed, (on_broker, distinct, accepted), cpu_us) in (
        ("SubmitFeedback", single),
        (f"SubmitFeedbackBatch({args.batch})", batch),
    ):
        print(
            f"{name:26s} {rate:10.0f} accepted events/s  (failed calls {failed}; accepted {accepted}, read back "
            f"from the broker {on_broker} records with {distinct} distinct feedback ids; "
            f"gateway CPU {cpu_us:.0f} us/event)"
        )
    print(
        f"{'EventConsumerLoop':26s} {consumed:10.0f} events/s consumed and validated ({args.consume} events, "
        "record CRCs checked in pure Python)"
    )
    print(f"{'EventConsumerLoop':26s} {consumed_no_crc:10.0f} events/s consumed and validated (check_crcs=False)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

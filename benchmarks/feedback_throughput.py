"""Feedback throughput: through the gateway to the broker, and out of the
broker through EventConsumerLoop.

    .venv/bin/python -m benchmarks.feedback_throughput [--clients 16] [--seconds 8] [--rounds 3] [--batch 100]

Starts an embedded broker and one gateway per ``--gateways`` flag set
(``python -m services.feedback --server sync|aio ...``, each in its own process),
then 16 concurrent grpc.aio clients (spread over ``--client-processes``
processes, each client with its own channel and x-client-id) submit for
``--seconds`` with SubmitFeedback, the gateways' phases interleaved for
``--rounds`` rounds (medians reported), then once each with
SubmitFeedbackBatch. Every counted event was acknowledged by the broker (the
gateway answers after acks=all); the topic is read back to count each phase's
records and distinct ids. The gateway's and the clients' CPU per event and the
load average are printed beside each figure.
Last, ``--consume`` events are read back through EventConsumerLoop into a
handler that validates them (shared.feedback_rules).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
from kafka import KafkaConsumer, TopicPartition

from shared.feedback_rules import validating_feedback_handler
from shared.kafka import events
from shared.kafka.admin import ensure_topics
from shared.kafka.broker import EMBEDDED_GROUP_TIMING, EmbeddedBroker, free_port
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop
from shared.kafka.producer import create_producer, produce_event
from shared.proto.rlhf.v1 import events_pb2 as ev
from shared.proto.rlhf.v1 import feedback_pb2, feedback_pb2_grpc


def feedback(i: int, client: int, phase: str = "consume") -> ev.FeedbackEvent:
    return ev.FeedbackEvent(
        generation_id=f"{phase}-gen-{client}-{i % 997}",
        user_id=f"user-{client}",
        rating=ev.Rating(score=((i % 21) - 10) / 10.0),
        source=ev.FEEDBACK_SOURCE_END_USER,
    )


def _client_process(address, client_ids, mode, batch, phase, start, deadline, results):
    """One load-generator process: grpc.aio clients (one channel and x-client-id each) on one
    event loop, which costs far less CPU per call than a thread per client."""
    import asyncio

    async def one(client: int) -> tuple[int, int]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            metadata = (("x-client-id", f"bench-{client}"),)
            await channel.channel_ready()
            await asyncio.sleep(max(0.0, start - time.time()))
            accepted, failed, i = 0, 0, 0
            while time.time() < deadline:
                try:
                    if mode == "single":
                        request = feedback_pb2.SubmitFeedbackRequest(feedback=feedback(i, client, phase))
                        await stub.SubmitFeedback(request, metadata=metadata, timeout=30)
                        accepted += 1
                    else:
                        items = [feedback(i + k, client, phase) for k in range(batch)]
                        reply = await stub.SubmitFeedbackBatch(
                            feedback_pb2.SubmitFeedbackBatchRequest(feedback=items), metadata=metadata, timeout=30
                        )
                        accepted += len(reply.results)
                except grpc.RpcError:
                    failed += 1
                i += batch if mode == "batch" else 1
            return accepted, failed

    async def all_clients() -> tuple[list[tuple[int, int]], float]:
        tasks = [asyncio.ensure_future(one(c)) for c in client_ids]
        await asyncio.sleep(max(0.0, start - time.time()))
        cpu_at_start = time.process_time()
        outcomes = await asyncio.gather(*tasks)
        return outcomes, time.process_time() - cpu_at_start

    outcomes, cpu_s = asyncio.run(all_clients())
    results.put((sum(a for a, _ in outcomes), sum(f for _, f in outcomes), cpu_s))


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


@dataclass
class Phase:
    """One timed submit phase against one gateway."""

    server: str
    mode: str
    rate: float  # accepted events/s
    failed: int
    accepted: int
    on_broker: int  # records of this phase read back from the broker
    distinct: int  # distinct feedback ids among them
    gateway_cpu_us: float  # gateway process CPU per accepted event
    client_cpu_us: float  # load generators' CPU per accepted event
    loadavg: float  # 1-minute load average at the end of the phase


def submit_phase(gateway, bootstrap, mode, phase, args) -> Phase:
    server, address, pid = gateway
    spawn = mp.get_context("spawn")  # fork after gRPC is in use in this process is unsafe
    results = spawn.Queue()
    before = topic_offsets(bootstrap, events.FEEDBACK_TOPIC)
    start = time.time() + 3.0  # let every (spawned) process import and connect first
    deadline = start + args.seconds
    groups = [list(range(p, args.clients, args.client_processes)) for p in range(args.client_processes)]
    procs = [
        spawn.Process(target=_client_process, args=(address, g, mode, args.batch, phase, start, deadline, results))
        for g in groups
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    cpu_before = cpu_seconds(pid)
    outcomes = [results.get() for _ in procs]
    gateway_cpu = cpu_seconds(pid) - cpu_before
    loadavg = os.getloadavg()[0]
    for p in procs:
        p.join()
    accepted = sum(a for a, _, _ in outcomes)
    on_broker, distinct = count_records_since(bootstrap, before, phase)
    per_event = 1e6 / max(1, accepted)
    return Phase(
        server,
        mode,
        accepted / args.seconds,
        sum(f for _, f, _ in outcomes),
        accepted,
        on_broker,
        distinct,
        gateway_cpu * per_event,
        sum(c for _, _, c in outcomes) * per_event,
        loadavg,
    )


def start_gateway(bootstrap: str, flags: str) -> tuple[str, str, subprocess.Popen]:
    """A gateway process with ``flags`` added to the benchmark's own; (flags, address, process)."""
    port = free_port()
    command = [sys.executable, "-m", "services.feedback", "--port", str(port), "--metrics-port", "-1"]
    command += ["--kafka", bootstrap, "--log-level", "WARNING", "--max-workers", "32", *flags.split()]
    process = subprocess.Popen(command)
    address = f"127.0.0.1:{port}"
    grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
    return flags, address, process


def crc_implementation() -> str:
    """Which function kafka-python checks record CRCs with in this process (bound at its import)."""
    from kafka.record import util

    function = (util.calc_crc32c.__defaults__ or (None,))[0]
    if function is None:
        return "unknown"
    module = getattr(function, "__module__", None) or type(function).__module__
    kind = "pure Python" if module.startswith("kafka.") else "C extension"
    return f"{module}.{getattr(function, '__name__', '?')}, {kind}"


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
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3, help="SubmitFeedback phases per server, interleaved")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--consume", type=int, default=100_000)
    parser.add_argument(
        "--gateways",
        default="--server sync --linger-ms 0,--server aio",
        help="comma-separated gateway flag sets to compare (the first: today's plain path)",
    )
    parser.add_argument("--skip-submit", action="store_true", help="only the consumer phase")
    args = parser.parse_args(argv)
    servers = [flags.strip() for flags in args.gateways.split(",")]
    phases: list[Phase] = []
    loadavg_start = os.getloadavg()

    with EmbeddedBroker(port=0) as broker:
        ensure_topics(broker.bootstrap)
        if not args.skip_submit:
            gateways = [start_gateway(broker.bootstrap, server) for server in servers]
            try:
                for r in range(args.rounds):
                    # Alternate the order so drift in the machine's load hits every server alike.
                    for server, address, process in gateways if r % 2 == 0 else gateways[::-1]:
                        tag = f"single-{servers.index(server)}-{r}"
                        phase = submit_phase((server, address, process.pid), broker.bootstrap, "single", tag, args)
                        phases.append(phase)
                        print(f"round {r}: {phase}", file=sys.stderr)
                for server, address, process in gateways:
                    tag = f"batch-{servers.index(server)}"
                    phase = submit_phase((server, address, process.pid), broker.bootstrap, "batch", tag, args)
                    phases.append(phase)
                    print(f"batch: {phase}", file=sys.stderr)
            finally:
                for _server, _address, process in gateways:
                    process.terminate()
                    process.wait(30)
        consumed = consume_phase(broker.bootstrap, args.consume, check_crcs=True)
        consumed_no_crc = consume_phase(broker.bootstrap, args.consume, check_crcs=False)

    print(f"command: python -m benchmarks.feedback_throughput {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"cpus={os.cpu_count()} clients={args.clients} in {args.client_processes} grpc.aio client processes "
        f"seconds={args.seconds} rounds={args.rounds} batch={args.batch}"
    )
    print(
        f"load average (1, 5, 15 min) at start: {' '.join(f'{x:.2f}' for x in loadavg_start)}; "
        f"at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for phase in phases:
        name = "SubmitFeedback" if phase.mode == "single" else f"SubmitFeedbackBatch({args.batch})"
        print(
            f"{name:24s} [{phase.server}] {phase.rate:8.0f} accepted events/s (failed calls {phase.failed}; "
            f"accepted {phase.accepted}, read back from the broker {phase.on_broker} records with {phase.distinct} "
            f"distinct feedback ids; CPU per event: gateway {phase.gateway_cpu_us:.0f} us, clients "
            f"{phase.client_cpu_us:.0f} us; load average {phase.loadavg:.2f})"
        )
    for server in servers:
        mine = [p for p in phases if p.server == server and p.mode == "single"]
        if mine:
            rate = statistics.median(p.rate for p in mine)
            gateway_us = statistics.median(p.gateway_cpu_us for p in mine)
            clients_us = statistics.median(p.client_cpu_us for p in mine)
            print(
                f"SubmitFeedback [{server}]: median of {len(mine)}: {rate:.0f} events/s, CPU per event: "
                f"gateway {gateway_us:.0f} us, clients {clients_us:.0f} us"
            )
    crc = crc_implementation()
    print(
        f"{'EventConsumerLoop':24s} {consumed:10.0f} events/s consumed and validated ({args.consume} events, "
        f"record CRCs checked by {crc})"
    )
    print(f"{'EventConsumerLoop':24s} {consumed_no_crc:10.0f} events/s consumed and validated (check_crcs=False)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

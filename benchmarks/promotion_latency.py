"""Promotion to serving: from the gate's decision to every policy replica answering with the new version.

    .venv/bin/python -m benchmarks.promotion_latency [--size demo|gpt2-124m] [--replicas 2] [--repeats 5]

Starts the embedded broker, a model store in a temporary directory and
``--replicas`` real policy processes (``python -m services.policy``, JSON logs),
then promotes a new version ``--repeats`` times through the trainer's own code
path (services.trainer.loop.promotion.Promoter.promote_new with the PPO
trainer's save: ``save_pretrained`` + tokenizer). Each round's clock starts at
the call (the gate's decision) and stops per replica at the first Generate
answered with the new version. Stages, cumulative from the decision:

- ``announced``: promote_new returned (version written and hashed, CURRENT moved,
  the ModelUpdateEvent acknowledged by the broker);
- ``notified``: the replica logged "model update received";
- ``loaded``: it logged "model loaded" (sha256 checks + from_pretrained);
- ``swapped``: it logged "model swapped" (the engine's reference replaced);
- ``answering``: a Generate (1 token) came back with the new version.

Replica times come from the replicas' log timestamps (millisecond precision,
same machine clock). A first, warm-up promotion is not counted. Models: ``demo``
is the demo bootstrap's GPT-2 shape (3 layers, n_embd 128, 1,024-token BPE);
``gpt2-124m`` is GPT2Config's defaults (12 layers, n_embd 768, vocab 50,257,
124M parameters). Both have random weights and a BPE tokenizer trained here;
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

STAGES = ("announced", "notified", "loaded", "swapped", "answering")
TEXTS = [
    "User: how do I boil an egg?\nAssistant: Put the egg in boiling water for nine minutes.",
    "User: what is the capital of France?\nAssistant: The capital of France is Paris.",
    "User: how do I water a plant?\nAssistant: Water the soil until it is damp, not soaked.",
] * 30


def build_model(size: str):
    """(model, tokenizer): random weights, a BPE tokenizer trained on TEXTS."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from demo.tiny_lm import new_gpt2, train_tokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=1024)
    if size == "demo":
        return new_gpt2(tokenizer, n_layer=3, n_head=4, n_embd=128, n_positions=128, seed=0), tokenizer
    torch.manual_seed(0)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    # GPT2Config() defaults: 12 layers, 12 heads, n_embd 768, n_positions 1024, vocab 50257.
    model = GPT2LMHeadModel(GPT2Config(**ids, pad_token_id=tokenizer.pad_token_id))
    # Only the tokenizer's ids can be decoded: keep generation inside them.
    model.generation_config.suppress_tokens = list(range(len(tokenizer), model.config.vocab_size))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@dataclass
class Replica:
    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen
    events: list[dict] = field(default_factory=list)

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def logged_at(self, message: str, key: str, version: str) -> float | None:
        """Epoch seconds of the first log record ``message`` whose ``key`` is ``version``."""
        for record in self.log_events():
            if record.get("msg") == message and record.get(key) == version:
                return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
        return None


def start_replica(name: str, workdir: Path, bootstrap: str, store_root: Path, torch_threads: int) -> Replica:
    from shared.kafka.broker import free_port

    port = free_port()
    log_path = workdir / f"{name}.log"
    args = [
        sys.executable, "-m", "services.policy", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "-1", "--kafka", bootstrap, "--model-store", str(store_root),
        "--log-format", "json", "--torch-threads", str(torch_threads),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Replica(name, port, log_path, proc)


def serving_version(stub) -> str:
    from shared.proto.rlhf.v1 import common_pb2

    return stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10).version


def wait_answering(stub, version: str, timeout_s: float) -> float:
    """Epoch seconds when a Generate first came back with ``version`` (polls GetModelInfo
    every 10 ms first, so the polling does not take the CPU the load needs)."""
    import grpc

    from shared.proto.rlhf.v1 import common_pb2, policy_pb2

    deadline = time.monotonic() + timeout_s
    request = policy_pb2.GenerateRequest(
        prompt="User: hi\nAssistant:", sampling=common_pb2.SamplingParams(max_new_tokens=1, seed=0)
    )
    while time.monotonic() < deadline:
        try:
            if serving_version(stub) == version and stub.Generate(request, timeout=30).model_version == version:
                return time.time()
        except grpc.RpcError:
            pass  # not serving yet
        time.sleep(0.01)
    raise TimeoutError(f"no answer from {version} within {timeout_s} s")


def close_all(promoter, channels, replicas: list[Replica]) -> None:
    """Close the promoter and the channels, then stop every replica (killed if it will not stop)."""
    promoter.close()
    for channel in channels:
        channel.close()
    for replica in replicas:
        replica.proc.terminate()
    for replica in replicas:
        try:
            replica.proc.wait(30)
        except subprocess.TimeoutExpired:
            replica.proc.kill()


def save_full(model, tokenizer):
    """The PPO trainer's save of full weights, as a ``promote_new`` fill."""
    return lambda out: (model.save_pretrained(out, safe_serialization=True), tokenizer.save_pretrained(out))


def promote_round(
    promoter, store, fill, stubs, replicas, timeout_s: float, base_version: str = ""
) -> dict[str, list[float]]:
    """One promotion of what ``fill`` writes (a LoRA adapter on ``base_version`` when given);
    returns, per stage, the seconds from the decision for each replica."""
    current = store.current("policy")
    answered: dict[str, float] = {}
    decided = time.time()
    update = promoter.promote_new(
        "policy",
        fill,
        parent_version=current,
        eval_metrics={},
        reason="benchmark: promotion latency",
        expected_current=current,
        actor="benchmark",
        base_version=base_version,
    )
    announced = time.time()
    version = update.version

    def poll(replica: Replica, stub) -> None:
        answered[replica.name] = wait_answering(stub, version, timeout_s)

    threads = [threading.Thread(target=poll, args=pair) for pair in zip(replicas, stubs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for replica in replicas:
        if replica.name not in answered:
            raise RuntimeError(f"{replica.name} never answered with {version}; see {replica.log_path}")
        marks = {
            "announced": announced,
            "notified": replica.logged_at("model update received", "version", version),
            "loaded": replica.logged_at("model loaded", "version", version),
            "swapped": replica.logged_at("model swapped", "to_version", version),
            "answering": answered[replica.name],
        }
        for stage, at in marks.items():
            if at is None:
                raise RuntimeError(f"{replica.name}: no {stage!r} log record for {version}; see {replica.log_path}")
            stages[stage].append(at - decided)
    return stages


def run(
    size: str, replicas_wanted: int, repeats: int, torch_threads: int, timeout_s: float
) -> tuple[dict[str, list[float]], int]:
    """Seconds per stage over every replica and counted round, and the model's parameter count."""
    import grpc
    import torch

    from services.trainer.loop.promotion import Promoter
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker
    from shared.kafka.producer import create_producer
    from shared.models.store import ModelStore
    from shared.proto.rlhf.v1 import policy_pb2_grpc

    model, tokenizer = build_model(size)
    with tempfile.TemporaryDirectory(prefix="rlhf-promotion-") as tmp, EmbeddedBroker(port=0) as broker:
        work = Path(tmp)
        ensure_topics(broker.bootstrap)
        store = ModelStore(work / "store")
        first = store.write_version("policy", save_full(model, tokenizer))
        store.set_current("policy", first.version)
        replicas = [
            start_replica(f"policy-{i + 1}", work, broker.bootstrap, store.root, torch_threads)
            for i in range(replicas_wanted)
        ]
        channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
        stubs = [policy_pb2_grpc.PolicyServiceStub(c) for c in channels]
        promoter = Promoter(store, lambda: create_producer(broker.bootstrap, client_id="benchmark-promoter"))
        try:
            for stub in stubs:
                wait_answering(stub, first.version, timeout_s=180)
            time.sleep(2.0)  # the update consumers seek to the end of the topic after SERVING
            fill = save_full(model, tokenizer)
            promote_round(promoter, store, fill, stubs, replicas, timeout_s)  # warm-up, not counted
            totals: dict[str, list[float]] = {stage: [] for stage in STAGES}
            for _ in range(repeats):
                with torch.no_grad():
                    next(model.parameters()).add_(1e-3)  # a different candidate each round
                for stage, seconds in promote_round(promoter, store, fill, stubs, replicas, timeout_s).items():
                    totals[stage].extend(seconds)
            return totals, sum(p.numel() for p in model.parameters())
        finally:
            close_all(promoter, channels, replicas)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("demo", "gpt2-124m"), default="demo")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1, help="each replica's torch threads")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per replica and round")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per save_pretrained would bury the figures
    load_before = os.getloadavg()
    totals, parameters = run(args.size, args.replicas, args.repeats, args.torch_threads, args.timeout_s)
    load_after = os.getloadavg()
    command = ["python", "-m", "benchmarks.promotion_latency", *(argv if argv is not None else sys.argv[1:])]
    print(f"command: {' '.join(command)}")
    print(
        f"policy: {args.size} ({parameters / 1e6:.1f}M parameters), {args.replicas} replicas, "
        f"{args.repeats} promotions after a warm-up one, cpus={os.cpu_count()}"
    )
    print(
        f"load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    print("seconds from the gate's decision (promote_new called), over every replica and round:")
    print(f"  {'stage':10s} {'median':>8s} {'max':>8s}")
    for stage in STAGES:
        print(f"  {stage:10s} {statistics.median(totals[stage]):8.3f} {max(totals[stage]):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

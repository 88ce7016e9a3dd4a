"""TrainerService over gRPC, and the trainer process's lifecycle.

Start order: gRPC server (NOT_SERVING), ledger, consumer loop, hold-expiry
timer, training thread; SERVING once the consumer has its partitions. Stop:
first the training thread's stop request, so it abandons a step or reward
update at its next forward pass (services.trainer.stop_token) while the rest
shuts down; then NOT_SERVING and the gRPC drain, stop the consumer (its last
batch is committed), join the training thread (the checkpoint lets the next
start finish the round), then tell the other ranks to stop (under torchrun).

Under torchrun (WORLD_SIZE > 1) :func:`main` hands over to
services.trainer.parallel.launch: this server runs on rank 0 with a
Coordinator, the other ranks only train.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from services.trainer import metrics as tm
from services.trainer.config import TrainerConfig
from services.trainer.data.ingest import FeedbackIngest, consumer_lag
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.loop.canary import CanaryReport
from services.trainer.loop.online import OnlineTrainer
from services.trainer.loop.promotion import Promoter, kind_name
from services.trainer.stop_token import StopToken
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.grpc.tls import client_tls
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.producer import create_producer
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from shared.service_main import run_service

log = logging.getLogger(__name__)

SERVICE_NAME = "trainer"
_STATES = {
    name: trainer_pb2.TrainerState.Value(f"TRAINER_STATE_{name}")
    for name in ("STARTING", "IDLE", "TRAINING_REWARD", "TRAINING_POLICY", "EVALUATING", "PAUSED")
}
_KINDS = {"policy": common_pb2.MODEL_KIND_POLICY, "reward": common_pb2.MODEL_KIND_REWARD}


def operator(context, rpc: str) -> str:
    """Who asked, for the model store's history: the RPC, the caller's x-client-id
    if it sent one, and its address (never its token)."""
    metadata = dict(context.invocation_metadata() or ())
    client = str(metadata.get("x-client-id", ""))[:128]
    who = f"operator via TrainerService.{rpc}"
    return f"{who} ({client}, {context.peer()})" if client else f"{who} ({context.peer()})"


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Operator API: status, promote, rollback, pause, resume."""

    def __init__(self, trainer: OnlineTrainer, promoter: Promoter, store: ModelStore, group: str):
        self.trainer = trainer
        self.group = group
        self.promoter = promoter
        self.store = store

    def GetStatus(self, request, context):
        return self._status()

    def Promote(self, request, context):
        return self.promoter.promote_existing(
            kind_name(request.kind),
            request.version,
            request.reason,
            canary_share=request.canary_share,
            actor=operator(context, "Promote"),
        )

    def Rollback(self, request, context):
        return self.promoter.rollback(
            kind_name(request.kind), request.to_version, request.reason, actor=operator(context, "Rollback")
        )

    def Pause(self, request, context):
        self.trainer.pause(request.reason)
        return self._status()

    def Resume(self, request, context):
        self.trainer.resume()
        return self._status()

    def _status(self) -> trainer_pb2.TrainerStatus:
        ledger = self.trainer.ledger_snapshot()
        status = trainer_pb2.TrainerStatus(
            state=_STATES[self.trainer.state],
            policy_version=self.store.current("policy") or "",
            reward_version=self.store.current("reward") or "",
            feedback_counts=ledger["counts"],
            generations_seen=ledger["generations"],
            feedback_pending_join=ledger["pending"],
            pause_reason=self.trainer.progress.paused_reason if self.trainer.progress.paused else "",
            consumer_lag=consumer_lag(self.group),
            heldout=trainer_pb2.HeldoutStatus(**self.trainer.heldout_status()),
        )
        stats = self.trainer.last_policy_update
        if stats is not None:
            status.last_policy_update.CopyFrom(
                trainer_pb2.PolicyUpdateStats(  # DPO/KTO stats lack the sampling ones: NaN (tm.stat)
                    mean_reward=tm.stat(stats, "mean_score"),
                    kl=tm.stat(stats, "kl"),
                    kl_coef=tm.stat(stats, "kl_coef"),
                    policy_loss=tm.stat(stats, "policy_loss"),
                    value_loss=tm.stat(stats, "value_loss"),
                    clip_fraction=tm.stat(stats, "clipfrac"),
                    entropy=tm.stat(stats, "entropy"),
                    approx_kl=tm.stat(stats, "approx_kl"),
                    samples_per_second=tm.stat(stats, "samples_per_s"),
                    step=stats.step,
                )
            )
        for record in list(self.trainer.recent_candidates):
            report = status.recent_candidates.add(
                kind=_KINDS[record.kind],
                version=record.version,
                promoted=record.promoted,
                reason=record.reason,
                metrics=record.metrics,
            )
            report.decided_at.FromNanoseconds(int(record.decided_at * 1e9))
        canary = self.trainer.canary.last
        if canary is not None:
            status.canary.CopyFrom(canary_status(canary))
        return status


def canary_status(report: CanaryReport) -> trainer_pb2.CanaryStatus:
    verdict = report.verdict
    status = trainer_pb2.CanaryStatus(
        version=report.pointer.version,
        stable_version=report.pointer.stable_version,
        share=report.pointer.share,
        decision=report.decision,
        detail=verdict.detail,
        canary_feedback=verdict.canary.n,
        stable_feedback=verdict.stable.n,
        canary_score=verdict.canary.mean,
        stable_score=verdict.stable.mean,
        difference=verdict.difference,
        standard_error=verdict.standard_error,
        min_feedback=report.min_feedback,
        active=report.active,
    )
    status.started_at.FromNanoseconds(int(report.pointer.started_at * 1e9))
    return status


class TrainerServer:
    """Ledger + consumer + training thread + gRPC server."""

    def __init__(self, config: TrainerConfig, reward_fn: Callable | None = None, coordinator=None):
        self.config = config
        self.coordinator = coordinator  # services.trainer.parallel.coordinator.Coordinator under torchrun
        self.store = ModelStore(config.model_store)
        self.producer = create_producer(config.kafka, client_id="rlhf-trainer", **config.kafka_client_options())
        self.promoter = Promoter(
            self.store,
            lambda: create_producer(config.kafka, client_id="rlhf-trainer-promoter", **config.kafka_client_options()),
        )
        self._reward_client = None
        self.stop_token = StopToken()  # the training thread's stop request (and its reward calls')
        if reward_fn is None:
            from services.trainer.reward_client import RewardClient

            reward_fn = self._reward_client = RewardClient(
                config.reward_addr,
                token=config.reward_token or config.auth_token,
                tls=client_tls(config),
                timeout_s=config.reward_timeout_s,
                batch_size=config.reward_batch_size,
                empty_response_score=config.reward_empty_response_score,
                stop=self.stop_token,
            )
        self.online = OnlineTrainer(
            config, self.store, self.promoter, reward_fn, coordinator=coordinator, stop_token=self.stop_token
        )
        self.ledger = FeedbackLedger(config.ledger_path)  # the consumer thread's connection
        dead_letters = DeadLetterProducer(
            self.producer,
            config.consumer_group,
            new_producer=lambda: create_producer(
                config.kafka, client_id="rlhf-trainer", **config.kafka_client_options()
            ),
        )
        self.ingest = FeedbackIngest(self.ledger, dead_letters, hold_s=config.feedback_hold_s)
        self.consumer = self.ingest.consumer_loop(
            config.kafka, config.kafka_consumer_options(), group=config.consumer_group
        )
        self.servicer = TrainerServicer(self.online, self.promoter, self.store, config.consumer_group)
        self.grpc = GrpcServer(
            config,
            SERVICE_NAME,
            [
                ServiceBinding(
                    trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
                    self.servicer,
                    trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name,
                )
            ],
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, *, train: bool = True, ready_timeout_s: float = 60.0) -> int:
        port = self.grpc.start()
        if self.store.current("policy") is None:
            log.warning(
                "the model store has no policy version yet; run `rlhf bootstrap` first",
                extra={"model_store": str(self.store.root)},
            )
        self._threads.append(self.consumer.start(self._stop, name="trainer-consumer"))
        self._threads.append(threading.Thread(target=self._expire_held_loop, name="hold-expiry", daemon=True))
        self._threads[-1].start()
        if train:
            self._threads.append(self.online.start())
        if not self.consumer.ready.wait(ready_timeout_s):
            log.warning("consumer has no partitions yet; serving anyway", extra={"waited_s": ready_timeout_s})
        self.online.mark_ready()
        self.grpc.set_serving(True)
        return port

    def _expire_held_loop(self) -> None:
        interval = min(5.0, max(0.2, self.config.feedback_hold_s / 4))
        while not self._stop.wait(interval):
            try:
                self.ingest.expire_held()
            except Exception:  # noqa: BLE001 - retried next tick; the held rows stay until sent
                log.exception("expiring held feedback failed")

    def stop(self, grace_s: float | None = None) -> None:
        # Training hears first: abandoning a step takes up to one forward pass, during the drain.
        self.online.request_stop()
        self.grpc.stop(grace_s)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.coordinator is not None and not any(t.is_alive() for t in self._threads):
            try:
                self.coordinator.stop()  # only once the training thread is done with the process group
            except Exception:  # noqa: BLE001 - a rank already gone; torchrun ends the others
                log.exception("could not tell the other ranks to stop")
        producer = self.ingest.dead_letters.producer  # replaced after a fatal error
        producer.flush(timeout=10)
        producer.close(timeout=5)
        self.promoter.close()
        if self._reward_client is not None:
            self._reward_client.close()


def main(argv: Sequence[str] | None = None) -> int:
    from services.trainer.parallel.group import world_size_from_env

    if world_size_from_env() > 1:
        from services.trainer.parallel.launch import run_data_parallel

        return run_data_parallel(argv)
    return run_service(TrainerConfig, SERVICE_NAME, TrainerServer, argv)

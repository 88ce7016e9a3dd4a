"""Ranks 1..W-1 of a data-parallel trainer: wait for rank 0's next order
(services.trainer.parallel.coordinator) and do their part of it.

A worker serves nothing and consumes nothing: it reads the model store (the
same ReadWriteMany volume as rank 0) to build its models, takes rank 0's
state through the process group, scores its own rollouts through the reward
service (--reward-addr, which may list several replicas), and exits on
``stop`` or on a failure the ranks did not agree on (so torchrun restarts
every rank, rather than leaving rank 0 waiting). SIGTERM and SIGINT (torchrun
and Kubernetes send them to every rank) are noted, not obeyed: rank 0 leaves
a step only where every rank agrees to (PPOTrainer's agreed stop points, then
TrainingInterrupted on every rank) and then sends ``stop``, so a rank that left
first would leave it stuck in a collective.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from services.trainer.config import TrainerConfig
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.ppo.ppo_trainer import PPOTrainer, RewardFn
from services.trainer.parallel.coordinator import sync_ppo_state
from services.trainer.parallel.group import DataParallel, RanksFailedTogether
from services.trainer.stop_token import TrainingInterrupted
from shared.models.store import ModelStore

log = logging.getLogger(__name__)


class Worker:
    """One non-zero rank. ``reward_fn`` replaces the reward service client (tests)."""

    def __init__(self, config: TrainerConfig, group: DataParallel, reward_fn: RewardFn | None = None):
        self.config = config
        self.group = group
        self.store = ModelStore(config.model_store)
        self.trainer: PPOTrainer | None = None
        self._reward_fn = reward_fn
        self._reward_client: Any = None

    def run(self) -> int:
        """Follow rank 0's orders until ``stop``; returns the exit code."""
        import torch

        torch.set_num_threads(self.config.torch_threads)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        log.info("data-parallel worker ready", extra={"rank": self.group.rank, "world_size": self.group.world_size})
        try:
            while True:
                message = self.group.broadcast_json()
                if message["op"] == "stop":
                    return 0
                try:
                    self.handle(message)
                except RanksFailedTogether as exc:
                    log.warning("step failed on every rank; waiting for the next order", extra={"error": str(exc)})
                except TrainingInterrupted as exc:  # rank 0 is stopping: its `stop` comes next
                    log.info("rank 0 abandoned the step; waiting for its next order", extra={"work": str(exc)})
        except Exception:
            log.exception("data-parallel worker failed; exiting so that every rank restarts")
            return 1
        finally:
            if self._reward_client is not None:
                self._reward_client.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("signal received; waiting for rank 0's stop", extra={"signal": signal.Signals(signum).name})

    def handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "heartbeat":
            return
        if op == "ppo_sync":
            self.trainer = self._build_trainer(message["policy_version"], PPOConfig(**message["config"]))
            sync_ppo_state(self.group, self.trainer)
            self.trainer.enable_data_parallel(self.group)
        elif op == "ppo_step":
            if self.trainer is None:
                raise RuntimeError("ppo_step before ppo_sync")
            demonstrations = [(p, r) for p, r in message["demonstrations"]]
            self.trainer.step(message["prompts"], demonstrations or None)
        elif op == "reward_train":
            self._train_reward(message["version"], message["pairs"], message["settings"])
        else:
            raise ValueError(f"unknown order {op!r} from rank 0 (ranks of different releases?)")

    def _build_trainer(self, version: str, config: PPOConfig) -> PPOTrainer:
        """A trainer of the same architecture as rank 0's; its weights come from rank 0 next."""
        from shared.models.policy_eval import load_policy

        lm, tokenizer = load_policy(self.store.open_version("policy", version))
        return PPOTrainer(lm, tokenizer, self._reward(), config)

    def _reward(self) -> RewardFn:
        if self._reward_fn is not None:
            return self._reward_fn
        if self._reward_client is None:
            from services.trainer.reward_client import RewardClient
            from shared.grpc.tls import client_tls

            c = self.config
            self._reward_client = RewardClient(
                c.reward_addr,
                token=c.reward_token or c.auth_token,
                tls=client_tls(c),  # as rank 0's: the reward service may require (mutual) TLS
                timeout_s=c.reward_timeout_s,
                batch_size=c.reward_batch_size,
                empty_response_score=c.reward_empty_response_score,
            )
        return self._reward_client

    def _train_reward(self, version: str, pairs: list[list[str]], settings: dict[str, Any]) -> None:
        from services.trainer.supervised.reward_training import train_reward_model
        from shared.models.reward.format import load_reward_model

        model, tokenizer = load_reward_model(self.store.open_version("reward", version))
        if "ensemble_size" in settings:  # rank 0 resized the heads (reward_update.apply_ensemble_settings)
            from shared.models.reward.ensemble import resize_ensemble

            settings = dict(settings)
            size, k = int(settings.pop("ensemble_size")), float(settings.pop("conservative_k"))
            resize_ensemble(model, size, k, settings.get("seed", 0))
        try:
            train_reward_model(
                model, tokenizer, [(p, c, r) for p, c, r in pairs], progress=False, parallel=self.group, **settings
            )
        except TrainingInterrupted:
            log.info("reward update interrupted by rank 0 (shutting down)")


def run_worker(config: TrainerConfig, group: DataParallel) -> int:
    return Worker(config, group).run()

"""Rank 0's side of data-parallel training: what the other ranks do next.

Rank 0 is the whole trainer (Kafka ingest, the ledger, the gate, promotion,
the gRPC API); the other ranks only lend their CPUs or GPUs to the updates.
Before each collective piece of work rank 0 broadcasts one JSON message
(services.trainer.parallel.worker runs the other side):

- ``ppo_sync``: build a PPOTrainer for this policy version and take rank 0's
  weights, reference, optimizer moments, KL coefficient, step count and
  shuffle generator (after a fresh start, a resumed checkpoint, a promotion);
- ``ppo_step``: one PPO step on these global prompts and demonstrations;
- ``reward_train``: fine-tune this reward version on these comparisons;
- ``heartbeat``: nothing to do (every check, so an idle trainer never lets a
  rank's wait run into the collective timeout);
- ``stop``: exit.

All of it comes from the training thread, one message at a time. A failure
the ranks agree on (scoring a rollout) is raised on every rank at the same
point and the next check tries again; any other failure of one rank breaks
the group (the others fail their next collective, at the latest after the
collective timeout). A broken group cannot be rejoined in-process: the other
ranks exit, and rank 0, at its next order, calls ``on_broken`` (the launcher
stops the service gracefully), so that torchrun, or the PyTorchJob's restart
policy, starts every rank afresh; the PPO checkpoint resumes the round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from services.trainer.methods.ppo.ppo_trainer import PPOTrainer
from services.trainer.parallel.group import DataParallel

log = logging.getLogger(__name__)


class Coordinator:
    """Sends rank 0's orders and keeps the other ranks' PPO trainers in step with its own."""

    def __init__(self, group: DataParallel, on_broken: Callable[[], None] | None = None):
        if not group.is_main:
            raise ValueError("the coordinator runs on rank 0")
        self.group = group
        self.on_broken = on_broken  # called once, when an order cannot reach the other ranks
        self.broken = False
        self._synced: PPOTrainer | None = None
        self._stopped = False

    def heartbeat(self) -> None:
        self._send({"op": "heartbeat"})

    def ppo_step(
        self,
        trainer: PPOTrainer,
        policy_version: str,
        prompts: Sequence[str],
        demonstrations: Sequence[tuple[str, str]],
    ) -> None:
        """Have every rank take part in ``trainer.step(prompts, demonstrations)`` (rank 0 calls it next)."""
        if trainer is not self._synced:
            self._send({"op": "ppo_sync", "policy_version": policy_version, "config": asdict(trainer.config)})
            sync_ppo_state(self.group, trainer)
            trainer.enable_data_parallel(self.group)
            self._synced = trainer
        self._send({"op": "ppo_step", "prompts": list(prompts), "demonstrations": [list(d) for d in demonstrations]})

    def reward_training(self, version: str, pairs: Sequence[tuple[str, str, str]], settings: dict[str, Any]) -> None:
        """Have every rank take part in train_reward_model(version, pairs, **settings) (rank 0 calls it next)."""
        self._send({"op": "reward_train", "version": version, "pairs": [list(p) for p in pairs], "settings": settings})

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.group.broadcast_json({"op": "stop"})  # shutting down already: no on_broken

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.group.broadcast_json(message)
        except Exception as exc:  # whatever the backend raises for a lost peer or a timed-out collective
            if not self.broken:
                self.broken = True
                log.error(
                    "the process group is broken (a rank is gone); stopping so that every rank restarts",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
                if self.on_broken is not None:
                    self.on_broken()
            raise


def sync_ppo_state(group: DataParallel, trainer: PPOTrainer) -> None:
    """Every rank's trainer takes rank 0's state (every rank calls this, on a trainer
    built from the same policy version and PPOConfig)."""
    group.broadcast_module_(trainer.model)
    group.broadcast_module_(trainer.reference)
    scalars = group.broadcast_json(
        {"step_count": trainer.step_count, "kl_coef": trainer.kl_controller.value, "ptx_cursor": trainer._ptx_cursor}
        if group.is_main
        else None
    )
    trainer.step_count, trainer.kl_controller.value = int(scalars["step_count"]), float(scalars["kl_coef"])
    trainer._ptx_cursor = int(scalars["ptx_cursor"])
    shuffle = trainer.shuffle_generator.get_state()
    trainer.shuffle_generator.set_state(group.broadcast_(shuffle))
    sync_optimizer_state(group, trainer.optimizer)


def sync_optimizer_state(group: DataParallel, optimizer: torch.optim.Optimizer) -> None:
    """Rank 0's per-parameter optimizer state (e.g. AdamW's moments) on every rank."""
    params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
    layout = None
    if group.is_main:
        layout = [_state_layout(optimizer.state.get(p, {})) for p in params]
    layout = group.broadcast_json(layout)
    for param, entries in zip(params, layout):
        state = dict(optimizer.state.get(param, {})) if group.is_main else {}
        for key, spec in entries.items():
            if "value" in spec:
                state[key] = spec["value"]
                continue
            tensor = state[key] if group.is_main else torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
            state[key] = group.broadcast_(tensor.to(param.device))
        if entries:
            optimizer.state[param] = state


def _state_layout(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        key: (
            {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
            if isinstance(value, torch.Tensor)
            else {"value": value}
        )
        for key, value in state.items()
    }

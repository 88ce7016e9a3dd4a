"""``python -m services.trainer`` under torchrun (WORLD_SIZE > 1): join the
process group, then rank 0 runs the whole trainer service with a Coordinator
and every other rank runs a Worker. Without torchrun, services.trainer.server
runs as one process, as before.

    torchrun --nproc-per-node 2 -m services.trainer --model-store ... --kafka ...
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from services.trainer.config import TrainerConfig
from services.trainer.methods.registry import DATA_PARALLEL_METHODS
from services.trainer.parallel.coordinator import Coordinator
from services.trainer.parallel.group import DataParallel, exit_rank
from services.trainer.parallel.worker import run_worker
from shared.config import ConfigError, check, load_config
from shared.logs import setup_logging

log = logging.getLogger(__name__)


def run_data_parallel(argv: Sequence[str] | None = None) -> int:
    """Run this rank of a data-parallel trainer. Returns only a configuration error's exit
    code (2); once the process group is joined, the rank ends its process (exit_rank)."""
    try:
        config = load_config(TrainerConfig, argv, prog="python -m services.trainer")
        check_data_parallel(config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    group = DataParallel.from_env(config.dist_backend, config.dist_timeout_s, config.dist_master_addr)
    try:
        if group.is_main:
            from services.trainer.server import SERVICE_NAME, TrainerServer
            from shared.service_main import run_service

            coordinator = Coordinator(group, on_broken=stop_this_process)
            code = run_service(TrainerConfig, SERVICE_NAME, lambda c: TrainerServer(c, coordinator=coordinator), argv)
            broken = coordinator.broken
        else:
            setup_logging(f"trainer-rank{group.rank}", config.log_level, config.log_format)
            code = run_worker(config, group)
            broken = code != 0  # a worker fails only when an order could not reach it
    except BaseException:
        group.close()
        raise
    exit_rank(code, None if broken else group)  # never returns: see exit_rank for why


def check_data_parallel(config: TrainerConfig) -> None:
    """Refuse, on every rank and before the process group forms, what the data-parallel step does not
    do: a policy method that runs in one process only (RLOO, GRPO, DPO, KTO: the ranks would wait for
    PPO steps that never come), a LoRA adapter, or running score normalisation. PPOTrainer refuses the
    last two too, but only at the first step, in the training thread, where the refusal would only be
    retried every check while the other ranks wait."""
    method = config.policy_method
    check(
        method in DATA_PARALLEL_METHODS,
        "policy_method",
        f"{method} runs in one process; under torchrun (WORLD_SIZE > 1) use "
        f"{' or '.join(DATA_PARALLEL_METHODS)}, or run the trainer without torchrun",
    )
    settings = config.method_config(method)
    # A LoRA run's reference is its policy with the adapter off, which the ranks' sync cannot broadcast.
    check(
        settings.lora_rank == 0,
        f"{method}_lora_rank",
        f"LoRA adapters are not trained data-parallel (under torchrun, WORLD_SIZE > 1); set "
        f"--{method}-lora-rank 0 to fine-tune every weight on all ranks, or run the trainer without "
        "torchrun (one process) to train the adapter",
    )
    # Each rank scores only its shard of the rollout: the ranks' running moments would drift apart.
    check(
        not getattr(settings, "normalize_scores", False),
        f"{method}_normalize_scores",
        f"running score normalisation is not supported data-parallel (under torchrun, WORLD_SIZE > 1); "
        f"leave --{method}-normalize-scores off, or run the trainer without torchrun",
    )


def stop_this_process() -> None:
    """SIGTERM to this process: the service stops as on any SIGTERM (the main thread
    handles it) and exits, so its supervisor starts it, and a new process group, afresh."""
    os.kill(os.getpid(), signal.SIGTERM)

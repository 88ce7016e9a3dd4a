"""Policy rounds against the reward callable, checkpointed after every step.

A round is ``steps`` steps of the configured method (``--policy-method``: PPO,
RLOO, GRPO, DPO or KTO, through services.trainer.methods.registry.PolicyTrainer)
on prompts sampled from the ledger's recent prompts (DPO and KTO read the judged
answers of their ``data_source`` instead), with the ledger's corrections mixed
in (PPO-ptx). The trainer's checkpoint
(services.trainer.methods.checkpoint: atomic, no pickle) is written after every
step, and ``round.json`` beside it says which method and policy version the
weights descend from and at which step the round began; so after a kill -9 a
restart continues the same round from the last finished step.

The reference policy is the store's first policy version (v1), frozen: the KL
penalty and the gate's KL budget both measure drift from it. A LoRA run
(``lora_rank > 0``) trains an adapter instead, and its reference is the base the
adapter applies to, with the adapter switched off (one copy of the base in
memory): the current version if it is full weights, else the current adapter
version's base, whose adapter it continues training.

A stop request (the ``stop`` token, services.trainer.stop_token) abandons a
step at its policy's next forward pass: one generated token or one minibatch.
The half-trained weights in memory are dropped unsaved; the checkpoint stays
the last finished step's, which a restart resumes. Data-parallel, rank 0 alone
must not leave a step (the other ranks would wait in a collective): the PPO
step's own agreed stop points serve instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.loop.gate import PolicyEvaluation, gate_scores
from services.trainer.loop.judge_plugin import JudgeFn
from services.trainer.methods.checkpoint import STATE_FILE
from services.trainer.methods.registry import (
    DATA_PARALLEL_METHODS,
    DataSource,
    PolicyTrainer,
    build_trainer,
    resume_trainer,
)
from services.trainer.methods.size_defaults import count_parameters
from services.trainer.stop_token import StopToken, TrainingInterrupted
from shared.models.adapters import ADAPTER_CONFIG, resolve_policy_dir

log = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
ROUND_FILE = "round.json"


@dataclass
class RoundState:
    """Where the current round stands; persisted beside the checkpoint."""

    policy_version: str  # the store version the trainer's weights descend from
    round_number: int = 0
    start_step: int = 0  # trainer.step_count when the round began
    active: bool = False
    gate_tests: int = 0  # gate tests of this candidate lineage so far (each re-test is stricter)
    method: str = "ppo"  # the policy method whose checkpoint lies beside (round.json files before it: PPO)


def per_prompt_means(values: Sequence[float], samples_per_prompt: int) -> tuple[float, ...]:
    """Means of consecutive groups of ``samples_per_prompt`` (sample_responses keeps
    each prompt's samples together, in prompt order); NaN where a whole group is NaN."""
    means = []
    for start in range(0, len(values), samples_per_prompt):
        group = [v for v in values[start : start + samples_per_prompt] if math.isfinite(v)]
        means.append(sum(group) / len(group) if group else float("nan"))
    return tuple(means)


def migrate_checkpoint_dir(checkpoint_dir: Path, old_dir: Path) -> bool:
    """Rename a checkpoint directory of an older release (``ppo-checkpoint``) to ``checkpoint_dir``,
    so a round it interrupted resumes; True if one was moved. A checkpoint already at the new
    name wins (the old one is left for the operator)."""
    if not old_dir.is_dir() or checkpoint_dir.exists():
        return False
    old_dir.rename(checkpoint_dir)
    log.warning(
        "moved the policy checkpoint to its new directory name",
        extra={"from": str(old_dir), "to": str(checkpoint_dir)},
    )
    return True


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class PolicyRounds:
    """Owns the policy trainer between rounds; not thread-safe (the training thread's)."""

    def __init__(
        self,
        store,
        checkpoint_dir: Path,
        reward_fn: RewardFn,
        method_config: Callable[[int, int | None], object],
        seed: int = 0,
        coordinator=None,
        method: str = "ppo",
        data_source: DataSource | None = None,
        stop: StopToken | None = None,
    ):
        if coordinator is not None and method not in DATA_PARALLEL_METHODS:
            raise ValueError(f"--policy-method {method} runs in one process; under torchrun use --policy-method ppo")
        self.store = store
        self.coordinator = coordinator  # under torchrun: every rank takes part in each step
        self.checkpoint_dir = Path(checkpoint_dir)
        self.reward_fn = reward_fn
        self.method = method
        # (context window, parameters) -> the method's config (PPOConfig, RLOOConfig, ...) fitted to the policy
        self.method_config = method_config
        self.data_source = data_source  # DPO/KTO: () -> the ledger's judged answers; the others ignore it
        self.stop = stop or StopToken()  # the service's stop request: steps and the gate's sampling watch it
        self.trainer: PolicyTrainer | None = None
        self.state: RoundState | None = None
        self.rng = random.Random(seed)
        self.resumed_from_step: int | None = None
        self._recover_interrupted_checkpoint()

    def _recover_interrupted_checkpoint(self) -> None:
        """checkpoint.atomic_dir moves the old checkpoint aside before moving the
        new one in; a kill between the two renames leaves only ``.<name>.old-<pid>``.
        Put it back, and drop half-written temporary directories."""
        parent, name = self.checkpoint_dir.parent, self.checkpoint_dir.name
        if not parent.is_dir():
            return
        for old in sorted(parent.glob(f".{name}.old-*")):
            if not self.checkpoint_dir.exists() and (old / STATE_FILE).is_file():
                old.rename(self.checkpoint_dir)
                log.warning("recovered the policy checkpoint from an interrupted write", extra={"from": str(old)})
            else:
                shutil.rmtree(old, ignore_errors=True)
        for tmp in parent.glob(f".{name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def round_file(self) -> Path:
        return self.checkpoint_dir.parent / ROUND_FILE

    # --- building / resuming the trainer ---------------------------------------------
    def ensure_trainer(self) -> PolicyTrainer:
        """Resume from the checkpoint if it is this method's and descends from the current
        policy, else start from the current policy version."""
        current = self.store.current("policy")
        if self.trainer is not None and self.state and self.state.policy_version == current:
            return self.trainer
        self.trainer, self.state = None, None
        saved = self.saved_state()
        saved_adapter = (self.checkpoint_dir / "policy" / ADAPTER_CONFIG).is_file()
        resumable = (
            saved
            and saved.policy_version == current
            and saved.method == self.method
            and saved_adapter == bool(self._config(current).lora_rank)  # LoRA switched on or off: start over
        )
        if saved and resumable and (self.checkpoint_dir / STATE_FILE).is_file():
            self.trainer = resume_trainer(
                self.method, self.checkpoint_dir, self.reward_fn, self._config(current), self.data_source
            )
            self.state = saved
            self.resumed_from_step = self.trainer.step_count
            log.info(
                f"resumed {self.method.upper()} from checkpoint",  # tests/e2e/test_trainer_crash.py reads it
                extra={
                    "method": self.method,
                    "step": self.trainer.step_count,
                    "policy_version": current,
                    "round": saved.round_number,
                    "round_active": saved.active,
                },
            )
            return self.trainer
        if saved:
            log.info(
                "discarding the policy checkpoint of another policy version, method or LoRA setting",
                extra={
                    "checkpoint_version": saved.policy_version,
                    "current": current,
                    "checkpoint_method": saved.method,
                    "method": self.method,
                },
            )
        self.discard()
        self.trainer = self._fresh_trainer(current)
        self.state = RoundState(
            policy_version=current, round_number=saved.round_number if saved else 0, method=self.method
        )
        return self.trainer

    def _config(self, version: str):
        from transformers import AutoConfig

        dirs = resolve_policy_dir(self.store.open_version("policy", version, verify=False))
        config = AutoConfig.from_pretrained(dirs.base_dir)  # an adapter version's is its base's
        window = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0)
        return self.method_config(window, count_parameters(dirs.base_dir))

    def _fresh_trainer(self, version: str) -> PolicyTrainer:
        from shared.models.policy_eval import load_policy

        config = self._config(version)
        version_dir = self.store.open_version("policy", version)
        lm, tokenizer = load_policy(version_dir, trainable_adapter=bool(config.lora_rank))
        trainer = build_trainer(self.method, lm, tokenizer, self.reward_fn, config, self.data_source)
        reference = self.store.versions("policy")[0]
        if config.lora_rank:  # the reference is the adapter's base, already in memory: trainer.reference
            dirs = resolve_policy_dir(version_dir)
            setattr(trainer, "lora_base_dir", dirs.base_dir)  # noqa: B010 (not in the PolicyTrainer protocol)
            reference = dirs.base_version or version
        elif reference != version:
            ref_lm, _ = load_policy(self.store.open_version("policy", reference))
            trainer.reference.load_state_dict(ref_lm.state_dict())
        log.info(
            "policy trainer built",
            extra={"method": self.method, "policy_version": version, "reference_version": reference},
        )
        return trainer

    def saved_state(self) -> RoundState | None:
        try:
            return RoundState(**json.loads(self.round_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _save_state(self) -> None:
        self.checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.round_file, self.state.__dict__)

    def discard(self) -> None:
        """Forget the trainer and its checkpoint: the next round starts from the current version."""
        self.trainer = None
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        if self.state:
            self.state = RoundState(self.state.policy_version, self.state.round_number, method=self.method)
        self.round_file.unlink(missing_ok=True)

    # --- rounds ----------------------------------------------------------------------
    @property
    def round_active(self) -> bool:
        return bool(self.state and self.state.active)

    def begin_round(self) -> None:
        trainer = self.ensure_trainer()
        self.state.round_number += 1
        self.state.start_step = trainer.step_count
        self.state.active = True
        self._save_state()

    def steps_done(self) -> int:
        return self.trainer.step_count - self.state.start_step if self.trainer and self.state else 0

    def run_step(self, prompts: Sequence[str], demonstrations: Sequence[tuple[str, str]]) -> Any:
        """One step on ``trainer.prompts_per_step`` prompts drawn from ``prompts``; checkpointed.
        Returns the method's stats (PolicyUpdateStats; DPO/KTO: PreferenceStats)."""
        trainer = self.ensure_trainer()
        batch = [self.rng.choice(list(prompts)) for _ in range(trainer.prompts_per_step)]
        work = f"{self.method.upper()} step {trainer.step_count + 1} of round {self.state.round_number}"
        trainer.stop_token = self.stop  # data-parallel PPO's agreed stop points read it
        try:
            if self.coordinator is not None:
                self.coordinator.ppo_step(trainer, self.state.policy_version, batch, list(demonstrations))
                stats = trainer.step(batch, list(demonstrations) or None)
            else:
                with self.stop.watching(trainer.policy, trainer.reference, work=work):
                    stats = trainer.step(batch, list(demonstrations) or None)
        except TrainingInterrupted:
            # Part of the step's updates are in memory: forget them; the checkpoint is the last whole step.
            self.trainer = None
            raise
        trainer.checkpoint(self.checkpoint_dir)  # a finished step is kept, stop or not: the write is atomic
        return stats

    def end_round(self, promoted_version: str | None, keep_training: bool = False) -> None:
        """After the gate: keep training from the promoted weights, keep training the
        unpromoted candidate (its gain was not yet significant), or start over."""
        if promoted_version is None and not keep_training:
            self.discard()
            return
        if promoted_version is not None:
            self.state.policy_version = promoted_version
            self.state.gate_tests = 0  # a new candidate lineage starts from the promoted weights
        self.state.active = False
        self._save_state()

    # --- evaluation ------------------------------------------------------------------
    def evaluate(
        self,
        prompts: Sequence[str],
        samples_per_prompt: int,
        max_new_tokens: int,
        version: str | None = None,
        seed: int = 0,
        judge: JudgeFn | None = None,
    ) -> PolicyEvaluation:
        """Mean reward (reward callable), KL to the reference and, with a ``judge``,
        its scores, on held-out ``prompts`` for the trainer's policy or a stored version."""
        import torch

        from shared.models.policy_eval import SamplingSettings, kl_to_reference, load_policy, sample_responses

        trainer = self.ensure_trainer()
        policy, tokenizer = trainer.policy, trainer.tokenizer
        if version is not None:
            policy, tokenizer = load_policy(self.store.open_version("policy", version))
        settings = SamplingSettings(samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens, seed=seed)
        rng_state = torch.get_rng_state()  # sample_responses reseeds; PPO's own sampling stream must not change
        work = f"the gate's evaluation of {version or 'the candidate'} (round {self.state.round_number})"
        try:
            # Rank 0 samples alone (data-parallel too): its own models can be watched.
            with self.stop.watching(policy, trainer.policy, trainer.reference, work=work):
                samples = sample_responses(policy, tokenizer, prompts, settings)
                texts = ([s.prompt for s in samples], [s.text for s in samples])
                rewards = gate_scores(self.reward_fn, *texts)  # an ensemble's conservative score, and its means
                scores = rewards.scores
                kl = kl_to_reference(policy, trainer.reference, samples, tokenizer.pad_token_id)
        finally:
            torch.set_rng_state(rng_state)
        extra = {"samples": float(len(samples))}
        judged: tuple[float, ...] = ()
        if judge is not None:
            judged = per_prompt_means([float(x) for x in judge(*texts)], samples_per_prompt)
            known = [x for x in judged if math.isfinite(x)]
            extra["judge_score"] = sum(known) / len(known) if known else float("nan")
        return PolicyEvaluation(
            mean_reward=sum(scores) / max(1, len(scores)),
            kl=kl,
            prompt_rewards=per_prompt_means(scores, samples_per_prompt),
            prompt_judge_scores=judged,
            extra=extra,
            reward_score=rewards.used,
            prompt_mean_rewards=per_prompt_means(rewards.means, samples_per_prompt) if rewards.means else (),
        )

    def save_policy(self, out_dir: Path) -> None:
        self.trainer.save_policy(out_dir)

    def adapter_base_version(self) -> str:
        """The full-weights version the trainer's LoRA adapter applies to ('' when it trains full
        weights): what a promoted candidate names as its ``base_version``."""
        if self.trainer is None or self.state is None or not getattr(self.trainer, "adapter_run", False):
            return ""
        version = self.state.policy_version
        return self.store.manifest("policy", version).base_version or version

"""The online trainer's core: when to train, and what happens to a candidate.

A background thread (never the consumer's) wakes every ``round_check_s`` and,
unless paused:

1. updates the reward model when enough new comparisons have arrived
   (services.trainer.reward_update);
2. runs a PPO round (services.trainer.policy_round) when enough prompts and new
   feedback exist, or finishes the round a crash interrupted;
3. evaluates the candidate against the current policy on held-out world prompts
   and promotes it only if the gate (services.trainer.gate) passes.

It reads the ledger through its own SQLite connection (WAL: readers see
committed data and never block the consumer). No grpc here: the reward
callable and the promoter are injected.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from services.trainer import trainer_metrics as tm
from services.trainer.config import TrainerConfig
from services.trainer.gate import GateBudget, GateDecision, promote_if_better
from services.trainer.ledger import FeedbackLedger
from services.trainer.policy_round import PolicyRounds, RewardFn, write_json_atomic
from services.trainer.reward_update import RewardUpdateSettings, update_reward_model
from shared.world import question_key

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
STARTING, IDLE, TRAINING_REWARD, TRAINING_POLICY, EVALUATING, PAUSED = (
    "STARTING", "IDLE", "TRAINING_REWARD", "TRAINING_POLICY", "EVALUATING", "PAUSED")


@dataclass(frozen=True)
class CandidateRecord:
    kind: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    decided_at: float = field(default_factory=time.time)


@dataclass
class Progress:
    """What the trainer has consumed so far; persisted in trainer_state.json."""

    last_round_seq: int = 0  # ledger seq when the last PPO round began
    last_reward_seq: int = 0  # ledger seq of the last comparisons used for the reward model
    paused_reason: str = ""
    paused: bool = False


class OnlineTrainer:
    """Training rounds in a background thread, plus the state GetStatus reports."""

    def __init__(self, config: TrainerConfig, store, promoter, reward_fn: RewardFn):
        self.config = config
        self.store = store
        self.promoter = promoter
        self.state_file = Path(config.state_dir) / STATE_FILE
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        self.ledger = FeedbackLedger(config.ledger_path)  # the training thread's own connection
        self._ledger_lock = threading.Lock()
        self.rounds = PolicyRounds(store, config.checkpoint_dir, reward_fn, config.ppo_config)
        self.budget = GateBudget(config.gate_min_reward_gain, config.gate_kl_budget, config.gate_confidence_z)
        self.reward_settings = RewardUpdateSettings(config.reward_min_new_comparisons, config.reward_steps,
                                                    config.reward_accuracy_tolerance)
        self.progress = self._load_progress()
        if config.start_paused and not self.progress.paused:
            self.progress.paused, self.progress.paused_reason = True, "started with --start-paused"
        self.last_ppo = None
        self.recent_candidates: deque[CandidateRecord] = deque(maxlen=20)
        self.error = ""
        self._state = STARTING
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._world_cache: tuple[list, list] | None = None

    # --- lifecycle -------------------------------------------------------------------
    def start(self, stop: threading.Event) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="training-rounds", daemon=True)
        self._thread.start()
        return self._thread

    def run(self, stop: threading.Event) -> None:
        import torch

        torch.set_num_threads(self.config.torch_threads)
        self.mark_ready()
        while not stop.is_set():
            try:
                self.run_once(stop)
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - a failed round must not end training for good
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("training round failed; will retry", extra={"error": self.error})
            self._set_state(IDLE)
            self._wake.wait(self.config.round_check_s)
            self._wake.clear()

    def run_once(self, stop: threading.Event | None = None) -> None:
        """One check: reward update if due, then a PPO round if due (or unfinished)."""
        self.promoter.announce_pending()
        if self.progress.paused:
            return
        if self._reward_update_due():
            self._update_reward(stop)
        if self.rounds.round_active or self._saved_round_active() or self._policy_round_due():
            self._policy_round(stop)

    def wake(self) -> None:
        self._wake.set()

    # --- operator controls ---------------------------------------------------------
    def pause(self, reason: str) -> None:
        """Stop starting rounds; a round already running finishes."""
        with self._lock:
            self.progress.paused, self.progress.paused_reason = True, reason or "paused by operator"
            self._save_progress()

    def resume(self) -> None:
        with self._lock:
            self.progress.paused, self.progress.paused_reason = False, ""
            self._save_progress()
        self.wake()

    def mark_ready(self) -> None:
        """Consumer running: IDLE (or PAUSED) until a round starts."""
        with self._lock:
            if self._state == STARTING:
                self._state = IDLE

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == IDLE and self.progress.paused:
                return PAUSED
            return self._state

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    # --- ledger reads ----------------------------------------------------------------
    def ledger_snapshot(self) -> dict:
        """Counts for GetStatus (committed data only)."""
        with self._ledger_lock:
            return {"counts": self.ledger.counts(), "generations": self.ledger.generations_seen(),
                    "pending": self.ledger.pending_count(), "max_seq": self.ledger.max_seq()}

    def _reward_update_due(self) -> bool:
        if self.store.current("reward") is None:
            return False
        with self._ledger_lock:
            new = self.ledger.comparisons(after_seq=self.progress.last_reward_seq)
        return len(new) >= self.config.reward_min_new_comparisons

    def _policy_round_due(self) -> bool:
        if self.store.current("policy") is None:
            return False
        with self._ledger_lock:
            prompts = len(self.ledger.recent_prompts(limit=self.config.ppo_min_prompts))
            new_feedback = self.ledger.max_seq() - self.progress.last_round_seq
        return prompts >= self.config.ppo_min_prompts and new_feedback >= max(1, self.config.ppo_min_new_feedback)

    def _saved_round_active(self) -> bool:
        saved = self.rounds.saved_state()
        return bool(saved and saved.active)

    # --- reward model -----------------------------------------------------------------
    def _update_reward(self, stop: threading.Event | None = None) -> None:
        self._set_state(TRAINING_REWARD)
        with self._ledger_lock:
            upto = self.ledger.max_seq()
            new = self.ledger.comparisons(after_seq=self.progress.last_reward_seq)
            everything = self.ledger.comparisons()
        _, world_pairs = self._world()
        outcome = update_reward_model(self.store, self.promoter, self.reward_settings, new, everything, world_pairs,
                                      threads=self.config.torch_threads,
                                      should_stop=stop.is_set if stop is not None else None)
        if outcome.reason == "interrupted":
            return  # shutting down: the same comparisons are used again after a restart
        self.progress.last_reward_seq = upto
        self._save_progress()
        self._record_candidate(CandidateRecord("reward", outcome.version, outcome.promoted, outcome.reason,
                                               outcome.metrics))
        tm.REWARD_HELDOUT_ACCURACY.labels("candidate").set(outcome.metrics.get("pairwise_accuracy", float("nan")))
        tm.REWARD_HELDOUT_ACCURACY.labels("current").set(
            outcome.metrics.get("pairwise_accuracy" if outcome.promoted else "previous_pairwise_accuracy",
                                float("nan")))

    # --- policy ------------------------------------------------------------------------
    def _policy_round(self, stop: threading.Event | None) -> None:
        self._set_state(TRAINING_POLICY)
        rounds = self.rounds
        rounds.ensure_trainer()
        if not rounds.round_active:
            with self._ledger_lock:
                self.progress.last_round_seq = self.ledger.max_seq()
            self._save_progress()
            rounds.begin_round()
        log.info("PPO round", extra={"round": rounds.state.round_number, "steps_done": rounds.steps_done(),
                                     "steps": self.config.ppo_steps_per_round})
        while rounds.steps_done() < self.config.ppo_steps_per_round:
            if stop is not None and stop.is_set():
                return  # the checkpoint lets the next start finish this round
            prompts, demos = self._training_data()
            if not prompts:
                log.warning("every recent prompt is a gate prompt; waiting for others")
                return
            stats = rounds.run_step(prompts, demos)
            tm.export_ppo_stats(stats)
            self.last_ppo = stats
            log.info("PPO step", extra={"step": stats.step, "mean_score": stats.mean_score, "kl": stats.kl,
                                        "kl_coef": stats.kl_coef, "samples_per_s": stats.samples_per_s})
        self._gate_candidate()

    def _training_data(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Recent prompts and corrections, minus the gate's held-out questions: a
        policy trained on the prompts it is judged on would pass the gate on memory."""
        gate_questions = self._gate_questions()
        with self._ledger_lock:
            prompts = self.ledger.recent_prompts(limit=512)
            demos = [(d.prompt, d.response) for d in self.ledger.demonstrations(limit=256)]
        def trainable(prompt: str) -> bool:
            return question_key(prompt) not in gate_questions

        return [p for p in prompts if trainable(p)], [d for d in demos if trainable(d[0])]

    def _gate_questions(self) -> frozenset[str]:
        prompts, _ = self._world()
        return frozenset(question_key(p.question) for p in prompts)

    def _gate_candidate(self) -> None:
        self._set_state(EVALUATING)
        rounds, config = self.rounds, self.config
        current = self.store.current("policy")
        prompts, _ = self._world()
        if current != rounds.state.policy_version:
            decision = GateDecision(False, "current_changed", f"current moved to {current} during the round")
            candidate_metrics: dict[str, float] = {}
        else:
            candidate = rounds.evaluate(prompts, config.gate_samples_per_prompt, config.ppo_max_new_tokens)
            baseline = rounds.evaluate(prompts, config.gate_samples_per_prompt, config.ppo_max_new_tokens,
                                       version=current)
            decision = promote_if_better(candidate, baseline, self.budget)
            candidate_metrics = {**candidate.as_metrics(), "current_mean_reward": baseline.mean_reward,
                                 "current_kl": baseline.kl,
                                 "current_satisfaction": baseline.extra.get("satisfaction", float("nan")),
                                 "ppo_step": float(rounds.trainer.step_count), "kl_budget": self.budget.kl_budget}
            if decision.gain is not None:
                candidate_metrics.update(reward_gain=decision.gain.mean,
                                         reward_gain_standard_error=decision.gain.standard_error)
        version = ""
        if decision.promote:
            update = self.promoter.promote_new(
                "policy", rounds.save_policy, parent_version=current, eval_metrics=candidate_metrics,
                reason=f"gate passed: {decision.detail}", notes={"source": "rlhf trainer PPO"},
                expected_current=current)
            version = update.version
        log.info("policy candidate decided", extra={"promoted": decision.promote, "reason": decision.reason,
                                                    "detail": decision.detail, "version": version})
        rounds.end_round(version or None, keep_training=decision.keep_training)
        self._record_candidate(CandidateRecord("policy", version, decision.promote, decision.reason,
                                               candidate_metrics))

    def _record_candidate(self, record: CandidateRecord) -> None:
        tm.CANDIDATES.labels(record.kind, "promoted" if record.promoted else "discarded", record.reason).inc()
        with self._lock:
            self.recent_candidates.append(record)

    # --- the world's held-out prompts and pairs ----------------------------------------------
    def _world(self) -> tuple[list, list]:
        """Held-out prompts (gate) and pairs (reward accuracy), split as the bootstrap split them."""
        if self._world_cache is None:
            from shared.world import build_prompts, preference_pairs, split_prompts

            seed, fraction = self._world_split()
            heldout = split_prompts(build_prompts(seed, fraction), "heldout")
            if self.config.gate_prompts and len(heldout) > self.config.gate_prompts:
                stride = len(heldout) / self.config.gate_prompts
                heldout = [heldout[int(i * stride)] for i in range(self.config.gate_prompts)]
            self._world_cache = (heldout, preference_pairs(heldout, seed=seed + 3, per_prompt=1))
        return self._world_cache

    def _world_split(self) -> tuple[int, float]:
        versions = self.store.versions("policy")
        notes = self.store.manifest("policy", versions[0]).notes.get("config", "") if versions else ""
        data = json.loads(notes) if notes else {}
        return int(data.get("seed", 0)), float(data.get("heldout_fraction", 0.25))

    # --- persisted progress ---------------------------------------------------------------
    def _load_progress(self) -> Progress:
        try:
            return Progress(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return Progress()

    def _save_progress(self) -> None:
        write_json_atomic(self.state_file, self.progress.__dict__)

"""The online trainer's core: when to train, and what happens to a candidate.

A background thread (never the consumer's) wakes every ``round_check_s`` and,
unless paused:

1. updates the reward model when enough new comparisons have arrived
   (services.trainer.loop.reward_update);
2. runs a policy round (services.trainer.loop.policy_round; PPO, RLOO, GRPO,
   or DPO/KTO on the ledger's judged answers) when enough prompts and new
   feedback exist, or finishes the round a crash interrupted;
3. evaluates the candidate against the current policy on held-out prompts
   from real traffic (services.trainer.loop.heldout: a hash slice of the
   ledger's prompts, never trained on) and promotes it only if the gate
   (services.trainer.loop.gate) passes; an optional judge plug-in
   (``--gate-judge module:function``) gives a second opinion. With
   ``--canary-share`` the promoted candidate first serves that share of users
   (services.trainer.loop.canary): every check judges it on their feedback and
   completes or rolls it back; no policy round starts while it runs.

This module is the schedule and the state machine. The ledger reads are
services.trainer.loop.ledger_view's (its own connection, per-user caps, the
held-out slice kept out of training), the candidate's evaluation and promotion
services.trainer.loop.policy_gate's, the persisted progress
services.trainer.loop.trainer_progress's; what each version trained on goes
into its manifest notes (services.trainer.loop.lineage). No grpc here: the
reward callable and the promoter are injected.

Stopping: :meth:`OnlineTrainer.request_stop` sets the stop token
(services.trainer.stop_token) that the reward update, every policy step and
the gate's sampling watch, so the thread leaves within one forward pass, not
at the end of the round. What it was doing is abandoned whole (nothing stored
or promoted, the checkpoint the last finished step's, the comparisons and the
round's feedback still untrained) and logged as such; a restart resumes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

from services.trainer import metrics as tm
from services.trainer.config import OLD_POLICY_CHECKPOINT_DIR, TrainerConfig
from services.trainer.loop.canary import CanaryMonitor, CanarySettings
from services.trainer.loop.gate import GateBudget
from services.trainer.loop.judge_plugin import JudgeFn, load_judge
from services.trainer.loop.ledger_view import LedgerView
from services.trainer.loop.lineage import UNVERSIONED_REWARD, CandidateLineage, reward_lineage
from services.trainer.loop.policy_gate import judge_candidate, promote_candidate
from services.trainer.loop.policy_round import PolicyRounds, RewardFn, migrate_checkpoint_dir
from services.trainer.loop.reward_update import RewardUpdateSettings, update_reward_model
from services.trainer.loop.trainer_progress import (
    EVALUATING,
    IDLE,
    PAUSED,
    STARTING,
    STATE_FILE,
    TRAINING_POLICY,
    TRAINING_REWARD,
    CandidateRecord,
    load_progress,
    save_progress,
)
from services.trainer.stop_token import StopToken, TrainingInterrupted

log = logging.getLogger(__name__)

__all__ = ["CandidateRecord", "OnlineTrainer"]


class OnlineTrainer:
    """Training rounds in a background thread, plus the state GetStatus reports."""

    def __init__(
        self,
        config: TrainerConfig,
        store,
        promoter,
        reward_fn: RewardFn,
        coordinator=None,
        stop_token: StopToken | None = None,
    ):
        self.config = config
        self.coordinator = coordinator  # under torchrun: the other ranks take part in every update
        self.store = store
        self.promoter = promoter
        self.state_file = Path(config.state_dir) / STATE_FILE
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        # The training thread's own connection; its reads apply the per-user caps.
        self.view = LedgerView(config)
        self.ledger, self._ledger_lock, self.split = self.view.ledger, self.view.lock, self.view.split
        self.reward_fn = reward_fn
        # Set by request_stop; every long piece of work below watches it (the reward client may too).
        self.stop_token = stop_token or StopToken()
        # A checkpoint an older release wrote under ppo-checkpoint/ resumes from the new name.
        migrate_checkpoint_dir(config.checkpoint_dir, Path(config.state_dir) / OLD_POLICY_CHECKPOINT_DIR)
        self.rounds = PolicyRounds(
            store,
            config.checkpoint_dir,
            reward_fn,
            config.policy_config,
            coordinator=coordinator,
            method=config.policy_method,
            data_source=self.view.preference_source(),
            stop=self.stop_token,
        )
        self.budget = GateBudget(config.gate_min_reward_gain, config.gate_kl_budget, config.gate_confidence_z)
        tm.GATE_KL_BUDGET.set(self.budget.kl_budget)
        self.reward_settings = RewardUpdateSettings(
            config.reward_min_new_comparisons,
            config.reward_steps,
            config.reward_accuracy_tolerance,
            min_heldout_pairs=config.reward_min_heldout_comparisons,
            ensemble_size=config.reward_ensemble_size,
            conservative_k=config.reward_conservative_k,
        )
        canary = CanarySettings(
            config.canary_share, config.canary_min_feedback, config.canary_confidence_z, config.canary_max_s
        )
        self.canary = CanaryMonitor(store, promoter, canary, self.view.version_feedback)
        self.judge: JudgeFn | None = load_judge(config.gate_judge) if config.gate_judge else None
        self.progress = load_progress(self.state_file)
        self._step_data: tuple[int, list[int]] = (0, [])  # (ledger seq, correction seqs) of the last step's data
        if config.start_paused and not self.progress.paused:
            self.progress.paused, self.progress.paused_reason = True, "started with --start-paused"
        self.last_policy_update = None  # the last policy step's stats (GetStatus's last_policy_update)
        self.recent_candidates: deque[CandidateRecord] = deque(maxlen=20)
        self.error = ""
        self._state = STARTING
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="training-rounds", daemon=True)
        self._thread.start()
        return self._thread

    def request_stop(self) -> None:
        """Ask the training thread to stop: it abandons what it is doing at the next safe point
        (services.trainer.stop_token) and ends; join the thread :meth:`start` returned."""
        self.stop_token.request_stop()
        self.wake()

    def run(self) -> None:
        import torch

        torch.set_num_threads(self.config.torch_threads)
        self.mark_ready()
        while not self.stop_token.is_set():
            try:
                self.run_once()
                self.error = ""
                tm.LAST_PROGRESS.set_to_current_time()
            except TrainingInterrupted as exc:
                log.info(
                    "stop requested: abandoned unfinished work; nothing of it was stored, a restart does it again",
                    extra={"abandoned": str(exc)},
                )
                self._set_state(IDLE)
                break
            except Exception as exc:  # noqa: BLE001 - a failed round must not end training for good
                self.error = f"{type(exc).__name__}: {exc}"
                tm.ROUND_FAILURES.inc()
                log.exception("training round failed; will retry", extra={"error": self.error})
            self._set_state(IDLE)
            if self.coordinator is not None:
                self.coordinator.heartbeat()
            self._wake.wait(self.config.round_check_s)
            self._wake.clear()

    def run_once(self) -> None:
        """One check: judge a running canary (even when paused: a bad one must go), then
        a reward update if due, then a policy round if due (or unfinished) and no canary runs.
        Raises TrainingInterrupted when a stop was requested (see :meth:`request_stop`)."""
        self.promoter.announce_pending()
        self.canary.check()
        if self.progress.paused:
            return
        if self._reward_update_due():
            self._update_reward()
        if self.canary.active():
            return  # one policy rollout at a time: the next candidate trains from the version that wins
        if self.rounds.round_active or self._saved_round_active() or self._policy_round_due():
            self._policy_round()

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

    # --- ledger reads (services.trainer.loop.ledger_view) -------------------------------
    def ledger_snapshot(self) -> dict:
        """Counts for GetStatus (committed data only)."""
        return self.view.snapshot()

    def heldout_status(self) -> dict[str, int | str]:
        """How big the gate's held-out sets are, against what a promotion needs."""
        return self.view.heldout_status()

    def _reward_update_due(self) -> bool:
        return self.store.current("reward") is not None and self.view.reward_update_due(self.progress.last_reward_seq)

    def _policy_round_due(self) -> bool:
        return self.store.current("policy") is not None and self.view.policy_round_due(self.progress.last_round_seq)

    def _saved_round_active(self) -> bool:
        saved = self.rounds.saved_state()
        return bool(saved and saved.active)

    def _training_data(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Recent prompts and corrections outside the gate's held-out slice (LedgerView.training_data)."""
        prompts, demos, self._step_data = self.view.training_data()
        return prompts, demos

    # --- reward model -----------------------------------------------------------------
    def _update_reward(self) -> None:
        self._set_state(TRAINING_REWARD)
        upto, new, everything, excluded = self.view.reward_data(self.progress.last_reward_seq)
        lineage = reward_lineage(self.progress.last_reward_seq, upto, new, self.config.user_caps, excluded)
        outcome = update_reward_model(
            self.store,
            self.promoter,
            self.reward_settings,
            new,
            everything,
            self.split,
            threads=self.config.torch_threads,
            stop=self.stop_token,  # TrainingInterrupted: last_reward_seq stays, the comparisons are used again
            coordinator=self.coordinator,
            lineage=lineage,
        )
        if outcome.reason == "heldout_too_small":
            return  # the same comparisons are used again once enough are held out
        self.progress.last_reward_seq = upto
        self._save_progress()
        self._record_candidate(
            CandidateRecord("reward", outcome.version, outcome.promoted, outcome.reason, outcome.metrics)
        )
        tm.REWARD_HELDOUT_ACCURACY.labels("candidate").set(outcome.metrics.get("pairwise_accuracy", float("nan")))
        tm.REWARD_HELDOUT_ACCURACY.labels("current").set(
            outcome.metrics.get("pairwise_accuracy" if outcome.promoted else "previous_pairwise_accuracy", float("nan"))
        )

    # --- policy ------------------------------------------------------------------------
    def _policy_round(self, _stop: None = None) -> None:  # _stop: what callers passed before stop_token
        # Not begun once stopping: begin_round marks the feedback so far as this round's.
        self.stop_token.raise_if_set("the policy round due next (not begun)")
        self._set_state(TRAINING_POLICY)
        rounds = self.rounds
        rounds.ensure_trainer()
        if not rounds.round_active:
            self.progress.last_round_seq = self.view.max_seq()
            self._save_progress()
            rounds.begin_round()
        steps = self.config.policy_steps_per_round
        log.info(
            "policy round",
            extra={
                "method": self.config.policy_method,
                "round": rounds.state.round_number,
                "steps_done": rounds.steps_done(),
                "steps": steps,
            },
        )
        while rounds.steps_done() < steps:
            # Between steps nothing is lost: the checkpoint lets the next start finish this round.
            self.stop_token.raise_if_set(
                f"policy round {rounds.state.round_number} after {rounds.steps_done()} of {steps} steps"
            )
            prompts, demos = self._training_data()
            if not prompts:
                log.warning("every recent prompt is a held-out gate prompt; waiting for others")
                return
            stats = rounds.run_step(prompts, demos)
            self._note_step(rounds.state.policy_version, rounds.state.round_number)
            tm.export_policy_stats(stats, self.config.policy_method)
            self.last_policy_update = stats
            log.info(
                "policy step",
                extra={
                    "method": self.config.policy_method,
                    "step": stats.step,
                    "mean_score": stats.mean_score,
                    "kl": stats.kl,
                    "kl_coef": stats.kl_coef,
                    "samples_per_s": stats.samples_per_s,
                },
            )
        self._gate_candidate()

    def _note_step(self, parent_version: str, round_number: int) -> None:
        """Add a finished step's data to the candidate's lineage (persisted with the progress)."""
        seq_to, correction_seqs = self._step_data
        reward_version = getattr(self.reward_fn, "last_version", "") or UNVERSIONED_REWARD
        self.progress.candidate = CandidateLineage.load(self.progress.candidate).add_step(
            parent_version, round_number, seq_to, correction_seqs, reward_version
        )
        self._save_progress()

    def _gate_candidate(self) -> None:
        """Evaluate the candidate, promote it if the gate passes, and end the round accordingly."""
        self._set_state(EVALUATING)
        rounds, config = self.rounds, self.config
        current = self.store.current("policy")
        decision, metrics = judge_candidate(rounds, config, current, self.view.gate_prompts(), self.budget, self.judge)
        # A decision not yet acted on is dropped whole: the restart runs this round's gate again.
        self.stop_token.raise_if_set(f"the gate's decision on round {rounds.state.round_number} ({decision.reason})")
        version = ""
        if decision.promote:
            lineage = CandidateLineage.load(self.progress.candidate)
            gate_reward = getattr(self.reward_fn, "last_version", "") or UNVERSIONED_REWARD
            version = promote_candidate(self.promoter, rounds, config, current, decision, metrics, lineage, gate_reward)
        if decision.promote or not decision.keep_training:
            self.progress.candidate = {}  # the next candidate starts a new lineage
            self._save_progress()
        log.info(
            "policy candidate decided",
            extra={
                "promoted": decision.promote,
                "reason": decision.reason,
                "detail": decision.detail,
                "version": version,
            },
        )
        rounds.end_round(version or None, keep_training=decision.keep_training)
        self._record_candidate(CandidateRecord("policy", version, decision.promote, decision.reason, metrics))

    def _record_candidate(self, record: CandidateRecord) -> None:
        tm.CANDIDATES.labels(record.kind, "promoted" if record.promoted else "discarded", record.reason).inc()
        with self._lock:
            self.recent_candidates.append(record)

    def _save_progress(self) -> None:
        save_progress(self.state_file, self.progress)

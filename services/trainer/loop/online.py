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

It reads the ledger through its own SQLite connection (WAL: readers see
committed data and never block the consumer), under the per-user caps of
services.trainer.data.fair_share; what each version trained on goes into its
manifest notes (services.trainer.loop.lineage). No grpc here: the reward
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

from services.trainer import metrics as tm
from services.trainer.config import TrainerConfig
from services.trainer.data.ledger import FeedbackLedger, VersionFeedback
from services.trainer.loop.canary import CanaryMonitor, CanarySettings
from services.trainer.loop.gate import GateBudget, GateDecision, promote_if_better
from services.trainer.loop.heldout import HeldoutSplit, heldout_report
from services.trainer.loop.judge_plugin import JudgeFn, load_judge
from services.trainer.loop.lineage import UNVERSIONED_REWARD, CandidateLineage, reward_lineage
from services.trainer.loop.policy_methods import PREFERENCE_METHODS, DataSource
from services.trainer.loop.policy_round import PolicyRounds, RewardFn, write_json_atomic
from services.trainer.loop.reward_update import RewardUpdateSettings, update_reward_model

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
STARTING, IDLE, TRAINING_REWARD, TRAINING_POLICY, EVALUATING, PAUSED = (
    "STARTING",
    "IDLE",
    "TRAINING_REWARD",
    "TRAINING_POLICY",
    "EVALUATING",
    "PAUSED",
)


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
    # What the policy candidate in training has used so far (lineage.CandidateLineage), across rounds.
    candidate: dict = field(default_factory=dict)


class OnlineTrainer:
    """Training rounds in a background thread, plus the state GetStatus reports."""

    def __init__(self, config: TrainerConfig, store, promoter, reward_fn: RewardFn, coordinator=None):
        self.config = config
        self.coordinator = coordinator  # under torchrun: the other ranks take part in every update
        self.store = store
        self.promoter = promoter
        self.state_file = Path(config.state_dir) / STATE_FILE
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        # The training thread's own connection; its reads apply the per-user caps.
        self.ledger = FeedbackLedger(config.ledger_path, caps=config.user_caps)
        self.reward_fn = reward_fn
        self._ledger_lock = threading.Lock()
        self.split = HeldoutSplit(config.gate_heldout_one_in)
        self.rounds = PolicyRounds(
            store,
            config.checkpoint_dir,
            reward_fn,
            config.policy_config,
            coordinator=coordinator,
            method=config.policy_method,
            data_source=self._preference_source(),
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
        self.canary = CanaryMonitor(store, promoter, canary, self._version_feedback)
        self.judge: JudgeFn | None = load_judge(config.gate_judge) if config.gate_judge else None
        self.progress = self._load_progress()
        self._step_data: tuple[int, list[int]] = (0, [])  # (ledger seq, correction seqs) of the last step's data
        if config.start_paused and not self.progress.paused:
            self.progress.paused, self.progress.paused_reason = True, "started with --start-paused"
        self.last_ppo = None
        self.recent_candidates: deque[CandidateRecord] = deque(maxlen=20)
        self.error = ""
        self._state = STARTING
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _preference_source(self) -> DataSource | None:
        """DPO's live pairs or KTO's thumbs, read from this trainer's ledger connection (under
        its lock) outside the gate's held-out slice; None for the methods that sample."""
        method = self.config.policy_method
        if method not in PREFERENCE_METHODS:
            return None
        from services.trainer.dpo.dpo_trainer import preference_data_source

        return preference_data_source(
            method, self.ledger, self.split.is_heldout, self.config.policy_config(), lock=self._ledger_lock
        )

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
                tm.LAST_PROGRESS.set_to_current_time()
            except Exception as exc:  # noqa: BLE001 - a failed round must not end training for good
                self.error = f"{type(exc).__name__}: {exc}"
                tm.ROUND_FAILURES.inc()
                log.exception("training round failed; will retry", extra={"error": self.error})
            self._set_state(IDLE)
            if self.coordinator is not None:
                self.coordinator.heartbeat()
            self._wake.wait(self.config.round_check_s)
            self._wake.clear()

    def run_once(self, stop: threading.Event | None = None) -> None:
        """One check: judge a running canary (even when paused: a bad one must go), then
        a reward update if due, then a PPO round if due (or unfinished) and no canary runs."""
        self.promoter.announce_pending()
        self.canary.check()
        if self.progress.paused:
            return
        if self._reward_update_due():
            self._update_reward(stop)
        if self.canary.active():
            return  # one policy rollout at a time: the next candidate trains from the version that wins
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
            return {
                "counts": self.ledger.counts(),
                "generations": self.ledger.generations_seen(),
                "pending": self.ledger.pending_count(),
                "max_seq": self.ledger.max_seq(),
            }

    def heldout_status(self) -> dict[str, int | str]:
        """How big the gate's held-out sets are, against what a promotion needs;
        ``waiting_for`` says in words what is missing (empty when ready)."""
        prompts = len(self._gate_prompts())
        with self._ledger_lock:
            pairs = len(self.split.split_pairs(self.ledger.comparisons(), lambda c: c.prompt)[1])
        return heldout_report(prompts, pairs, self.config.gate_min_prompts, self.config.reward_min_heldout_comparisons)

    def _reward_update_due(self) -> bool:
        if self.store.current("reward") is None:
            return False
        with self._ledger_lock:
            new = self.ledger.comparisons(after_seq=self.progress.last_reward_seq)
            everything = self.ledger.comparisons() if len(new) >= self.config.reward_min_new_comparisons else []
        heldout = self.split.split_pairs(everything, lambda c: c.prompt)[1]
        # Training before the held-out set can judge the result would be wasted: wait for it.
        return (
            len(new) >= self.config.reward_min_new_comparisons
            and len(heldout) >= self.config.reward_min_heldout_comparisons
        )

    def _policy_round_due(self) -> bool:
        if self.store.current("policy") is None:
            return False
        with self._ledger_lock:
            recent = self.ledger.recent_prompts(limit=4 * self.config.ppo_min_prompts)
            new_feedback = self.ledger.max_seq() - self.progress.last_round_seq
        prompts = len(self.split.training(recent))
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
            excluded = self.ledger.excluded_users()
        lineage = reward_lineage(self.progress.last_reward_seq, upto, new, self.config.user_caps, excluded)
        outcome = update_reward_model(
            self.store,
            self.promoter,
            self.reward_settings,
            new,
            everything,
            self.split,
            threads=self.config.torch_threads,
            should_stop=stop.is_set if stop is not None else None,
            coordinator=self.coordinator,
            lineage=lineage,
        )
        if outcome.reason in ("interrupted", "heldout_too_small"):
            return  # the same comparisons are used again (after a restart, or once enough are held out)
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
    def _policy_round(self, stop: threading.Event | None) -> None:
        self._set_state(TRAINING_POLICY)
        rounds = self.rounds
        rounds.ensure_trainer()
        if not rounds.round_active:
            with self._ledger_lock:
                self.progress.last_round_seq = self.ledger.max_seq()
            self._save_progress()
            rounds.begin_round()
        log.info(
            "policy round",
            extra={
                "method": self.config.policy_method,
                "round": rounds.state.round_number,
                "steps_done": rounds.steps_done(),
                "steps": self.config.ppo_steps_per_round,
            },
        )
        while rounds.steps_done() < self.config.ppo_steps_per_round:
            if stop is not None and stop.is_set():
                return  # the checkpoint lets the next start finish this round
            prompts, demos = self._training_data()
            if not prompts:
                log.warning("every recent prompt is a held-out gate prompt; waiting for others")
                return
            stats = rounds.run_step(prompts, demos)
            self._note_step(rounds.state.policy_version, rounds.state.round_number)
            tm.export_ppo_stats(stats, self.config.policy_method)
            self.last_ppo = stats
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

    def _training_data(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Recent prompts and corrections, minus the gate's held-out slice: a
        policy trained on the prompts it is judged on would pass the gate on memory."""
        with self._ledger_lock:
            prompts = self.ledger.recent_prompts(limit=512)
            demos = [d for d in self.ledger.demonstrations(limit=256) if not self.split.is_heldout(d.prompt)]
            self._step_data = (self.ledger.max_seq(), [d.seq for d in demos])
        return self.split.training(prompts), [(d.prompt, d.response) for d in demos]

    def _note_step(self, parent_version: str, round_number: int) -> None:
        """Add a finished step's data to the candidate's lineage (persisted with the progress)."""
        seq_to, correction_seqs = self._step_data
        reward_version = getattr(self.reward_fn, "last_version", "") or UNVERSIONED_REWARD
        self.progress.candidate = CandidateLineage.load(self.progress.candidate).add_step(
            parent_version, round_number, seq_to, correction_seqs, reward_version
        )
        self._save_progress()

    def _version_feedback(self, canary: str, stable: str, since: float) -> list[VersionFeedback]:
        with self._ledger_lock:
            return self.ledger.version_feedback(canary, stable, since)

    def _gate_prompts(self) -> list[str]:
        with self._ledger_lock:
            prompts = self.ledger.distinct_prompts()
        return self.split.heldout(prompts, limit=self.config.gate_prompts)

    def _gate_candidate(self) -> None:
        self._set_state(EVALUATING)
        rounds, config = self.rounds, self.config
        current = self.store.current("policy")
        prompts = self._gate_prompts()
        candidate_metrics: dict[str, float] = {}
        if current != rounds.state.policy_version:
            decision = GateDecision(False, "current_changed", f"current moved to {current} during the round")
        elif len(prompts) < config.gate_min_prompts:
            # Not a verdict on the candidate: it keeps training until traffic gives the gate enough prompts.
            decision = GateDecision(
                False,
                "heldout_too_small",
                f"{len(prompts)} held-out prompts from traffic; "
                f"the gate needs {config.gate_min_prompts} (--gate-min-prompts)",
                keep_training=True,
            )
        else:
            rounds.state.gate_tests += 1
            test = rounds.state.gate_tests  # fresh samples per re-test; the gate's z spends alpha per test
            evaluate = dict(
                samples_per_prompt=config.gate_samples_per_prompt,
                max_new_tokens=config.gate_max_new_tokens,
                seed=test,
                judge=self.judge,
            )
            candidate = rounds.evaluate(prompts, **evaluate)
            baseline = rounds.evaluate(prompts, version=current, **evaluate)
            decision = promote_if_better(candidate, baseline, self.budget, test_number=test)
            candidate_metrics = {
                **candidate.as_metrics(),
                "current_mean_reward": baseline.mean_reward,
                "current_kl": baseline.kl,
                "ppo_step": float(rounds.trainer.step_count),
                "kl_budget": self.budget.kl_budget,
                "gate_prompts": float(len(prompts)),
                "gate_test": float(test),
                "gate_z": decision.z,
            }
            if "judge_score" in baseline.extra:
                candidate_metrics["current_judge_score"] = baseline.extra["judge_score"]
            if decision.gain is not None:
                candidate_metrics.update(
                    reward_gain=decision.gain.mean, reward_gain_standard_error=decision.gain.standard_error
                )
            if decision.mean_gain is not None:  # an ensemble: its heads' mean gain, beside the conservative one
                candidate_metrics.update(
                    ensemble_mean_gain=decision.mean_gain.mean,
                    ensemble_mean_gain_standard_error=decision.mean_gain.standard_error,
                )
            if decision.judge_gain is not None:
                candidate_metrics.update(
                    judge_gain=decision.judge_gain.mean, judge_gain_standard_error=decision.judge_gain.standard_error
                )
        version = ""
        if decision.promote:
            lineage = CandidateLineage.load(self.progress.candidate)
            gate_reward = getattr(self.reward_fn, "last_version", "") or UNVERSIONED_REWARD
            update = self.promoter.promote_new(
                "policy",
                rounds.save_policy,
                parent_version=current,
                eval_metrics=candidate_metrics,
                reason=f"gate passed: {decision.detail}",
                notes={
                    "source": f"rlhf trainer {self.config.policy_method.upper()}",
                    **lineage.notes(gate_reward, self.config.user_caps),
                    "gate_reward_score": decision.reward_score,  # which score the gate's test used
                },
                expected_current=current,
                canary_share=config.canary_share,
            )
            version = update.version
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
        self._record_candidate(CandidateRecord("policy", version, decision.promote, decision.reason, candidate_metrics))

    def _record_candidate(self, record: CandidateRecord) -> None:
        tm.CANDIDATES.labels(record.kind, "promoted" if record.promoted else "discarded", record.reason).inc()
        with self._lock:
            self.recent_candidates.append(record)

    # --- persisted progress ---------------------------------------------------------------
    def _load_progress(self) -> Progress:
        try:
            return Progress(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return Progress()

    def _save_progress(self) -> None:
        write_json_atomic(self.state_file, self.progress.__dict__)

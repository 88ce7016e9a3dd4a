"""Settings of the online trainer (flags > RLHF_* env > defaults).

``--policy-method`` picks how the policy learns (ppo, rloo, grpo, dpo, kto:
services.trainer.methods.registry). Each registered method's hyperparameters
are its own config dataclass, composed here as one nested field named after
the method (``TrainerConfig.ppo``, ``.rloo``, ``.grpo``, ``.dpo``, ``.kto``:
flags ``--<method>-<name>``, variables ``RLHF_TRAINER_<METHOD>_<NAME>``),
declared once, in its class; the fields are added from the registry, so a new
method needs no edit here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from services.trainer.data.fair_share import UserCaps
from services.trainer.methods.base_config import MethodConfig
from services.trainer.methods.registry import POLICY_METHODS, REGISTRY
from services.trainer.methods.size_defaults import fit_model_size
from shared import env
from shared.config import Renamed, check, nested, setting
from shared.service_config import ServiceConfig

log = logging.getLogger(__name__)

# The policy checkpoint's directory under --state-dir, and its name before this release (migrated on start).
POLICY_CHECKPOINT_DIR = "policy-checkpoint"
OLD_POLICY_CHECKPOINT_DIR = "ppo-checkpoint"


def _with_method_configs(cls: type) -> type:
    """One nested config per registered method (before ``@dataclass``): ``TrainerConfig.<method>``.
    ``num_threads`` is excluded: --torch-threads sets it for every method."""
    annotations = cls.__dict__.get("__annotations__", {})
    for method in REGISTRY.values():
        annotations[method.name] = method.config
        setattr(cls, method.name, nested(method.config, env_prefix=method.env_prefix, exclude=("num_threads",)))
    cls.__annotations__ = annotations
    return cls


@dataclass(frozen=True)
@_with_method_configs
class TrainerConfig(ServiceConfig):
    """Online trainer: joins feedback to generations, trains reward and policy, promotes through a gate."""

    renamed: ClassVar[tuple[Renamed, ...]] = (
        Renamed("ppo_min_prompts", "policy_min_prompts", env.TRAINER_PPO_MIN_PROMPTS),
        Renamed("ppo_min_new_feedback", "policy_min_new_feedback", env.TRAINER_PPO_MIN_NEW_FEEDBACK),
        Renamed("ppo_steps_per_round", "policy_steps_per_round", env.TRAINER_PPO_STEPS_PER_ROUND),
    )

    port: int = setting(50054, "gRPC port (0 picks a free port)", env=env.PORT)
    metrics_port: int = setting(
        9104, "Prometheus /metrics port (0 picks a free port, -1 disables)", env=env.METRICS_PORT
    )
    state_dir: str = setting(
        "./trainer-state",
        "where the feedback ledger (SQLite) and the policy checkpoint live; keep it on a persistent volume",
        env=env.TRAINER_STATE_DIR,
    )
    consumer_group: str = setting(
        "rlhf-trainer", "Kafka consumer group of the trainer (one group per ledger)", env=env.TRAINER_CONSUMER_GROUP
    )
    reward_addr: str = setting(
        "127.0.0.1:50052", "RewardService address used to score rollouts and candidates", env=env.REWARD_ADDR
    )
    reward_token: str = setting(
        "", "bearer token for the reward service (empty: reuse --auth-token)", env=env.TRAINER_REWARD_TOKEN
    )
    reward_timeout_s: float = setting(
        30.0, "deadline of one ScoreBatch call; failed calls are retried", env=env.TRAINER_REWARD_TIMEOUT_S
    )
    reward_batch_size: int = setting(
        64, "pairs per ScoreBatch call (at most the reward service's max_batch_size)", env=env.TRAINER_REWARD_BATCH_SIZE
    )
    reward_empty_response_score: float = setting(
        -10.0,
        "score of an empty rollout or gate sample, given without asking the reward service (which refuses "
        "empty responses); keep it below the reward model's scores of real answers",
        env=env.TRAINER_REWARD_EMPTY_RESPONSE_SCORE,
    )
    feedback_hold_s: float = setting(
        300.0,
        "how long feedback waits for its generation before it is dead-lettered as unknown_generation",
        env=env.TRAINER_FEEDBACK_HOLD_S,
    )
    reward_min_new_comparisons: int = setting(
        200,
        "new comparisons (preferences, rating pairs) that trigger a reward-model update",
        env=env.TRAINER_REWARD_MIN_NEW_COMPARISONS,
    )
    reward_steps: int = setting(60, "optimizer steps of one reward-model update", env=env.TRAINER_REWARD_STEPS)
    reward_min_heldout_comparisons: int = setting(
        20,
        "held-out comparisons (those of held-out prompts) needed before a reward-model promotion",
        env=env.TRAINER_REWARD_MIN_HELDOUT_COMPARISONS,
    )
    reward_accuracy_tolerance: float = setting(
        0.02,
        "a new reward version may lose at most this much held-out pairwise accuracy",
        env=env.TRAINER_REWARD_ACCURACY_TOLERANCE,
    )
    reward_ensemble_size: int = setting(
        1,
        "scalar heads of the MiniLM reward model, on one backbone, each trained on its own bootstrap resample of "
        "the comparisons (1: a single head); applied at the next reward update",
        env=env.TRAINER_REWARD_ENSEMBLE_SIZE,
    )
    reward_conservative_k: float = setting(
        1.0,
        "with an ensemble, the reward used for policy training and the gate is mean - k * std over the heads "
        "(Coste et al. 2023; 0: the plain mean)",
        env=env.TRAINER_REWARD_CONSERVATIVE_K,
    )
    user_max_share: float = setting(
        0.1,
        "most of one training set (a reward update's comparisons, a round's corrections) one user's feedback "
        "may weigh; heavier users are weighted down to it (1 = off; applies once at least 1/share users gave "
        "feedback)",
        env=env.TRAINER_USER_MAX_SHARE,
    )
    user_window_s: float = setting(
        3600.0,
        "window of the per-user feedback limit, in seconds of the trainer's receipt time",
        env=env.TRAINER_USER_WINDOW_S,
    )
    user_max_per_window: int = setting(
        1000,
        "feedback events of one user per window that may be trained on; later ones stay in the ledger, "
        "unused (0 = no limit)",
        env=env.TRAINER_USER_MAX_PER_WINDOW,
    )
    policy_min_prompts: int = setting(
        32, "distinct recent prompts needed before a policy round starts", env=env.TRAINER_POLICY_MIN_PROMPTS
    )
    policy_min_new_feedback: int = setting(
        50,
        "feedback events accepted since the last round that start a new one",
        env=env.TRAINER_POLICY_MIN_NEW_FEEDBACK,
    )
    policy_steps_per_round: int = setting(
        10,
        "policy steps (of --policy-method) in one round; a candidate is evaluated after each round",
        env=env.TRAINER_POLICY_STEPS_PER_ROUND,
    )
    policy_method: str = setting(
        "ppo",
        "how the policy learns: from the reward model with ppo (critic, GAE), rloo (leave-one-out baseline "
        "over --rloo-samples-per-prompt samples, no critic) or grpo (group-normalised advantages, no critic); "
        "or directly from the users' judgements with dpo (the served pairs they compared) or kto (their thumbs "
        "and flags); each reads its own --<method>-* settings (--ppo-*, --rloo-*, ...)",
        env=env.TRAINER_POLICY_METHOD,
        choices=POLICY_METHODS,
    )
    policy_size_defaults: bool = setting(
        True,
        "fit the method's settings left at their defaults to a pretrained policy (50M parameters and more): a "
        "LoRA adapter, its learning rate, one epoch (services/trainer/methods/size_defaults.py); false keeps "
        "every declared default",
        env=env.TRAINER_POLICY_SIZE_DEFAULTS,
    )
    gate_min_reward_gain: float = setting(
        0.0,
        "the lower confidence bound of a candidate's paired reward gain "
        "over the current version on the held-out prompts must reach this",
        env=env.TRAINER_GATE_MIN_REWARD_GAIN,
    )
    gate_confidence_z: float = setting(
        1.645, "one-sided z of that bound (1.645 = 95%; 0 compares means only)", env=env.TRAINER_GATE_CONFIDENCE_Z
    )
    gate_kl_budget: float = setting(
        20.0, "largest KL (nats per response) a candidate may drift from policy v1", env=env.TRAINER_GATE_KL_BUDGET
    )
    gate_prompts: int = setting(
        64, "most held-out prompts (from traffic) a candidate is evaluated on (0 = all)", env=env.TRAINER_GATE_PROMPTS
    )
    gate_min_prompts: int = setting(
        16,
        "held-out prompts from traffic needed before any policy promotion; until "
        "then candidates keep training and `rlhf status` says what is missing",
        env=env.TRAINER_GATE_MIN_PROMPTS,
    )
    gate_heldout_one_in: int = setting(
        4,
        "one prompt in N (by a hash of its text) is held out of training for the "
        "gate, with its comparisons and corrections",
        env=env.TRAINER_GATE_HELDOUT_ONE_IN,
    )
    gate_judge: str = setting(
        "",
        "optional judge plug-in, module:function(prompts, responses) -> scores (higher is "
        "better, NaN = no opinion); the gate refuses a candidate it finds significantly "
        "worse",
        env=env.TRAINER_GATE_JUDGE,
    )
    gate_samples_per_prompt: int = setting(
        4, "responses sampled per held-out prompt at the gate", env=env.TRAINER_GATE_SAMPLES_PER_PROMPT
    )
    round_check_s: float = setting(
        5.0, "how often the training thread checks whether a round is due", env=env.TRAINER_ROUND_CHECK_S
    )
    torch_threads: int = setting(
        2, "torch CPU threads for training (about the cores given to the pod)", env=env.TRAINER_TORCH_THREADS
    )
    start_paused: bool = setting(
        False, "start with training rounds paused (consumption still runs)", env=env.TRAINER_START_PAUSED
    )
    canary_share: float = setting(
        0.0,
        "share of users (by a hash of user_id, sticky) a policy that passed the gate serves first, judged "
        "by their feedback against the stable version; 0 promotes at once (no canary)",
        env=env.TRAINER_CANARY_SHARE,
    )
    canary_min_feedback: int = setting(
        50,
        "feedback events (ratings, flags, cross-version preferences) each version needs before a canary "
        "is completed or rolled back",
        env=env.TRAINER_CANARY_MIN_FEEDBACK,
    )
    canary_confidence_z: float = setting(
        1.645,
        "a canary is rolled back when (canary - stable mean feedback score) + z * standard error < 0",
        env=env.TRAINER_CANARY_CONFIDENCE_Z,
    )
    canary_max_s: float = setting(
        0.0,
        "decide a canary on the feedback that arrived after this many seconds (0 = wait for --canary-min-feedback)",
        env=env.TRAINER_CANARY_MAX_S,
    )
    dist_backend: str = setting(
        "auto",
        "torch.distributed backend under torchrun (WORLD_SIZE > 1): gloo (CPU), nccl (GPU), auto = nccl "
        "when CUDA is available, else gloo",
        env=env.TRAINER_DIST_BACKEND,
        choices=("auto", "gloo", "nccl"),
    )
    dist_timeout_s: float = setting(
        3600.0,
        "longest a rank waits in a collective (rank 0 evaluating or idle beats a heartbeat every --round-check-s)",
        env=env.TRAINER_DIST_TIMEOUT_S,
    )
    dist_master_addr: str = setting(
        "",
        "host of rank 0's rendezvous instead of MASTER_ADDR (e.g. a Service that lists rank 0 before it is ready; "
        "the port stays MASTER_PORT)",
        env=env.TRAINER_DIST_MASTER_ADDR,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.state_dir.strip()), "state_dir", "must name a directory")
        check(bool(self.consumer_group.strip()), "consumer_group", "must not be empty")
        check(self.reward_timeout_s > 0, "reward_timeout_s", f"must be > 0, got {self.reward_timeout_s}")
        check(self.reward_batch_size >= 1, "reward_batch_size", f"must be >= 1, got {self.reward_batch_size}")
        check(self.feedback_hold_s >= 0, "feedback_hold_s", f"must be >= 0, got {self.feedback_hold_s}")
        check(
            self.reward_min_new_comparisons >= 1,
            "reward_min_new_comparisons",
            f"must be >= 1, got {self.reward_min_new_comparisons}",
        )
        check(self.reward_steps >= 1, "reward_steps", f"must be >= 1, got {self.reward_steps}")
        check(
            1 <= self.reward_ensemble_size <= 64,
            "reward_ensemble_size",
            f"must be in 1..64, got {self.reward_ensemble_size}",
        )
        check(
            0 <= self.reward_conservative_k <= 100,
            "reward_conservative_k",
            f"must be in [0, 100], got {self.reward_conservative_k}",
        )
        check(
            0 <= self.reward_accuracy_tolerance <= 1,
            "reward_accuracy_tolerance",
            f"must be in [0, 1], got {self.reward_accuracy_tolerance}",
        )
        check(self.user_max_share > 0, "user_max_share", f"must be > 0 (1 = off), got {self.user_max_share}")
        check(self.user_window_s > 0, "user_window_s", f"must be > 0, got {self.user_window_s}")
        check(
            self.user_max_per_window >= 0,
            "user_max_per_window",
            f"must be >= 0 (0 = no limit), got {self.user_max_per_window}",
        )
        check(self.policy_min_prompts >= 1, "policy_min_prompts", f"must be >= 1, got {self.policy_min_prompts}")
        check(
            self.policy_min_new_feedback >= 0,
            "policy_min_new_feedback",
            f"must be >= 0, got {self.policy_min_new_feedback}",
        )
        check(
            self.policy_steps_per_round >= 1,
            "policy_steps_per_round",
            f"must be >= 1, got {self.policy_steps_per_round}",
        )
        check(self.gate_kl_budget > 0, "gate_kl_budget", f"must be > 0, got {self.gate_kl_budget}")
        check(self.gate_confidence_z >= 0, "gate_confidence_z", f"must be >= 0, got {self.gate_confidence_z}")
        check(self.gate_prompts >= 0, "gate_prompts", f"must be >= 0, got {self.gate_prompts}")
        check(
            self.gate_samples_per_prompt >= 1,
            "gate_samples_per_prompt",
            f"must be >= 1, got {self.gate_samples_per_prompt}",
        )
        check(self.round_check_s > 0, "round_check_s", f"must be > 0, got {self.round_check_s}")
        check(self.torch_threads >= 1, "torch_threads", f"must be >= 1, got {self.torch_threads}")
        check(
            self.gate_min_prompts >= 2,
            "gate_min_prompts",
            f"must be >= 2 (a paired test needs two prompts), got {self.gate_min_prompts}",
        )
        check(
            self.gate_prompts == 0 or self.gate_prompts >= self.gate_min_prompts,
            "gate_prompts",
            f"must be 0 (all) or >= --gate-min-prompts ({self.gate_min_prompts}), got {self.gate_prompts}",
        )
        check(self.gate_heldout_one_in >= 2, "gate_heldout_one_in", f"must be >= 2, got {self.gate_heldout_one_in}")
        check(
            not self.gate_judge or ":" in self.gate_judge,
            "gate_judge",
            f"must be module:function, got {self.gate_judge!r}",
        )
        check(
            self.reward_min_heldout_comparisons >= 1,
            "reward_min_heldout_comparisons",
            f"must be >= 1, got {self.reward_min_heldout_comparisons}",
        )

        check(0 <= self.canary_share < 1, "canary_share", f"must be in [0, 1) (0 disables), got {self.canary_share}")
        check(self.canary_min_feedback >= 2, "canary_min_feedback", f"must be >= 2, got {self.canary_min_feedback}")
        check(self.canary_confidence_z >= 0, "canary_confidence_z", f"must be >= 0, got {self.canary_confidence_z}")
        check(self.canary_max_s >= 0, "canary_max_s", f"must be >= 0 (0 = no limit), got {self.canary_max_s}")
        check(self.dist_timeout_s > 0, "dist_timeout_s", f"must be > 0, got {self.dist_timeout_s}")
        check(
            self.policy_method in POLICY_METHODS,
            "policy_method",
            f"must be one of {', '.join(POLICY_METHODS)}, got {self.policy_method!r}",
        )

    def method_config(self, method: str) -> Any:
        """The settings of a registered method as given (``TrainerConfig.<method>``)."""
        return getattr(self, method)

    def policy_config(self, max_positions: int | None = None, n_parameters: int | None = None) -> Any:
        """The hyperparameters of ``policy_method`` (its registry entry's config class), fitted to a
        policy with a ``max_positions`` context (a prompt plus its response must fit it) and, with
        ``policy_size_defaults``, to its ``n_parameters`` (services.trainer.methods.size_defaults)."""
        method_config: MethodConfig = self.method_config(self.policy_method)
        if self.policy_size_defaults:
            method_config, changes = fit_model_size(method_config, n_parameters)
            if changes:
                said = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items())
                log.info(
                    f"{self.policy_method} settings fitted to a {n_parameters / 1e6:.1f}M-parameter policy: {said} "
                    "(--policy-size-defaults false keeps the declared defaults)",
                    extra={"size_defaults": {k: v for k, (_, v) in changes.items()}},
                )
        return method_config.fit_context(max_positions, self.torch_threads)

    @property
    def gate_max_new_tokens(self) -> int:
        """Longest answer the gate samples from candidate and current policy: the method's response
        length (its rollouts'; for DPO and KTO, which sample nothing, the answers they train on)."""
        return int(self.policy_config().response_length)

    @property
    def user_caps(self) -> UserCaps:
        """The per-user limits every training set is built under."""
        return UserCaps(self.user_max_share, self.user_window_s, self.user_max_per_window)

    @property
    def ledger_path(self) -> Path:
        return Path(self.state_dir) / "ledger.sqlite"

    @property
    def checkpoint_dir(self) -> Path:
        """The policy trainer's checkpoint (every method's); see migrate_checkpoint_dir."""
        return Path(self.state_dir) / POLICY_CHECKPOINT_DIR

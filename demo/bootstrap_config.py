"""Every hyperparameter of the four-step bootstrap, in one frozen dataclass.

The bootstrap caches by hashes of this config: each step by the fields it
depends on (:meth:`BootstrapConfig.step_digest`), the finished store by all of
them (:meth:`BootstrapConfig.digest`), so an unchanged config reruns instantly
and a changed one rebuilds only the steps it affects.

Choices, for a 2-core CPU and a 10-minute budget:

- Policy: GPT-2 with 3 layers, n_embd 128, a 1024-token byte-level BPE and a
  128-token context: ~0.7M parameters, so a PPO step (rollout + a few
  optimisation passes) takes well under a second later on. Responses are at
  most ~40 tokens.
- Pre-training text is mixed quality: dialogues whose responses are rude,
  unsafe or rambling with probability ``style_flaw_probability`` each and
  off-topic or wrong with the lower ``content_flaw_probability``, plus plain
  statements of the world's knowledge (``statement_wrong_fraction`` of them
  wrong). So the base model knows the facts and mostly answers the question
  asked, but is often rude, rambling or unsafe.
- SFT is deliberately short (``sft_steps``: 8 steps of 16) on one good
  demonstration per training prompt. Style (polite, safe, concise) is learnt
  within those few steps; answering unseen phrasings on topic and correctly
  is not improved yet. Measured on held-out prompts, sampled at temperature 1:
  base 11.5% satisfied, SFT v1 38.2% (helpful 45%, correct 44%; polite, safe,
  concise ~96%). Longer SFT on a 900-step base reached 67% (25 steps)
  to 75% (60 steps), so the policy can gain 20+ points: the headroom the
  online PPO issue has to show (the reward model ranks off-topic and wrong
  answers below right ones, so PPO is rewarded for exactly that gain).
- Reward model: MiniLM-L6 with only the top ``reward_trainable_layers``
  layers trained (the frozen layers' output is cached once per text), pairs
  truncated to ``reward_max_length`` tokens, 120 steps of 16 pairs: ~98%
  pairwise accuracy on held-out pairs, in ~2.5 minutes on 2 cores.
- Whole bootstrap: ~5 minutes on the 2-core demo machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from shared.config import check, setting


@dataclass(frozen=True)
class BootstrapConfig:
    """Hyperparameters of pre-training, SFT, reward-model training and eval."""

    # --- world and machine ---
    seed: int = setting(0, "seeds the world split, data and every training run")
    heldout_fraction: float = setting(0.25, "share of prompt phrasings kept for eval only")
    torch_threads: int = setting(2, "intra-op threads for MiniLM; the demo machine has 2 cores")
    lm_torch_threads: int = setting(
        1,
        "for the tiny GPT-2: its matmuls gain little from a second thread, and one thread does not thrash "
        "(OpenMP spin-waits) when another process holds a core: 5.5 vs 0.4 steps/s seen",
    )

    # --- step 1: tokenizer + pre-training ---
    vocab_size: int = setting(1024, "BPE vocabulary (the world's text needs few merges)")
    n_layer: int = setting(3, "transformer blocks of the tiny GPT-2")
    n_head: int = setting(4, "attention heads per block")
    n_embd: int = setting(128, "hidden size (~0.7M parameters in all)")
    n_positions: int = setting(128, "context: prompt (~20 tokens) + response (<= 40)")
    pretrain_dialogues_per_prompt: int = setting(8, "mixed-quality dialogues per training prompt")
    style_flaw_probability: float = setting(0.35, "chance of rude / unsafe / rambling in a pre-training dialogue")
    content_flaw_probability: float = setting(
        0.1, "chance of off-topic / wrong: kept low so the base model learns to answer the question it was asked"
    )
    statement_repeats: int = setting(10, "passes of plain world statements in the corpus")
    statement_wrong_fraction: float = setting(0.1, "share of those statements that are wrong")
    pretrain_steps: int = setting(700, "optimizer steps of pre-training")
    pretrain_batch_size: int = setting(16, "packed windows per pre-training step")
    pretrain_seq_len: int = setting(128, "tokens per packed training window")
    pretrain_lr: float = setting(2e-3, "peak AdamW learning rate of pre-training")
    warmup_steps: int = setting(30, "linear warm-up, then cosine decay (all LM steps)")

    # --- step 2: SFT ---
    sft_demos_per_prompt: int = setting(1, "good demonstrations per training prompt")
    sft_steps: int = setting(8, "short on purpose: leaves headroom for PPO (see above)")
    sft_batch_size: int = setting(16, "demonstrations per SFT step")
    sft_lr: float = setting(1e-3, "AdamW learning rate of SFT")

    # --- step 3: reward model ---
    reward_pairs_per_prompt: int = setting(8, "(chosen, rejected) pairs per training prompt")
    reward_steps: int = setting(120, "held-out accuracy is ~97% by 200 steps, >90% well before")
    reward_batch_size: int = setting(16, "pairs per step")
    reward_lr: float = setting(1e-4, "encoder layers")
    reward_head_lr: float = setting(1e-3, "the fresh scalar head learns faster")
    reward_max_length: int = setting(64, "tokens per (question, response) pair")
    reward_trainable_layers: int = setting(2, "top MiniLM layers trained; the rest frozen")
    reward_strip_frame: bool = setting(
        True,
        'score the bare question: the world\'s "User:"/"Assistant:" frame is stripped (recorded in the '
        "reward model's config)",
    )
    reward_eval_pairs_per_prompt: int = setting(6, "held-out pairs per held-out prompt")
    reward_degenerate_fraction: float = setting(
        0.3,
        "share of pairs whose rejected side is filler with no answer (world.degenerate_response): without "
        'them PPO games the reward model with "Sure! Good luck!"',
    )

    # --- evaluation (base vs SFT, written to the manifests) ---
    eval_samples_per_prompt: int = setting(8, "sampled responses per held-out prompt (~400 in all)")
    eval_max_new_tokens: int = setting(40, "longest sampled response at evaluation")
    eval_temperature: float = setting(1.0, "the distribution PPO will optimise")
    eval_top_k: int = setting(0, "0 = no top-k truncation")
    eval_top_p: float = setting(1.0, "nucleus mass at evaluation (1.0 = off)")

    def pretrain_flaw_probabilities(self) -> dict[str, float]:
        style, content = self.style_flaw_probability, self.content_flaw_probability
        return {"off_topic": content, "wrong": content, "rude": style, "unsafe": style, "ramble": style}

    def digest(self) -> str:
        """Stable hash of every field: the cache key of a bootstrap."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def step_digest(self, step: str) -> str:
        """Hash of the fields one bootstrap step depends on, so changing e.g.
        an SFT setting reuses the cached pre-training and reward model."""
        shared = {"seed", "heldout_fraction", "warmup_steps"}
        own = {
            "pretrain": lambda f: not f.startswith(("sft_", "reward_", "eval_")),
            "sft": lambda f: not f.startswith(("reward_", "eval_")),
            "reward": lambda f: f in shared or f.startswith("reward_"),
            "evaluate": lambda f: True,
        }[step]
        fields = {k: v for k, v in asdict(self).items() if own(k) and k not in ("torch_threads", "lm_torch_threads")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def __post_init__(self) -> None:
        check(0 < self.heldout_fraction < 1, "heldout_fraction", f"must be in (0, 1), got {self.heldout_fraction}")
        check(self.n_embd % self.n_head == 0, "n_embd", f"({self.n_embd}) must be divisible by n_head ({self.n_head})")
        check(
            self.pretrain_seq_len <= self.n_positions,
            "pretrain_seq_len",
            f"({self.pretrain_seq_len}) must not exceed n_positions ({self.n_positions})",
        )
        for name in ("pretrain_steps", "sft_steps", "reward_steps", "eval_samples_per_prompt"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


def reduced_config(**overrides) -> BootstrapConfig:
    """A bootstrap small enough for tests (tens of seconds on 2 cores)."""
    small = dict(
        vocab_size=384,
        n_layer=1,
        n_embd=64,
        n_head=2,
        n_positions=96,
        pretrain_seq_len=96,
        pretrain_dialogues_per_prompt=1,
        statement_repeats=1,
        pretrain_steps=30,
        pretrain_batch_size=8,
        sft_steps=10,
        sft_batch_size=8,
        reward_pairs_per_prompt=2,
        reward_steps=30,
        reward_batch_size=8,
        reward_max_length=32,
        reward_trainable_layers=1,
        reward_eval_pairs_per_prompt=1,
        eval_samples_per_prompt=1,
        eval_max_new_tokens=12,
        warmup_steps=3,
    )
    small.update(overrides)
    return BootstrapConfig(**small)

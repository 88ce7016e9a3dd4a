"""Online DPO (Rafailov et al. 2023) on the pairs users compared, against the frozen
reference (the store's policy v1, as for every method).

DPO needs no reward model and no sampling: it raises the log-prob of the answers
users preferred relative to the reference, and lowers the others'. Online here
means the examples are the live ones: the served answers (an app asking for
``num_return_sequences=2`` and letting the user pick) with the most recent
feedback, re-read at every step (services.trainer.data.preference_sets via
dpo_data.ledger_pairs). The step loop, ptx, stats and checkpoints are
services.trainer.methods.dpo.preference_trainer's and the base trainer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from services.trainer.data.preference_sets import PreferencePair
from services.trainer.methods.dpo import dpo_math as dm
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.dpo_data import batch_logprobs, sequence_batch
from services.trainer.methods.dpo.preference_trainer import PreferenceTrainer


class DPOTrainer(PreferenceTrainer[DPOConfig]):
    """DPO on (prompt, chosen, rejected) pairs from ``data_source``."""

    method = "dpo"
    config_class = DPOConfig

    def minibatch_loss(self, examples: Sequence[PreferencePair]) -> tuple[Tensor, dict[str, float]]:
        cfg, n = self.config, len(examples)
        rows = [(p.prompt, p.chosen) for p in examples] + [(p.prompt, p.rejected) for p in examples]
        batch = sequence_batch(self.tokenizer, rows, cfg.max_prompt_length, cfg.max_response_length)
        # Chosen and rejected in one forward pass (2n rows): one pass of the trunk instead of two.
        policy = batch_logprobs(self.lm, batch)
        with torch.no_grad():
            reference = batch_logprobs(self.reference, batch)
        weights = torch.tensor([p.weight for p in examples], dtype=torch.float32)
        out = dm.dpo_loss(
            policy[:n], policy[n:], reference[:n], reference[n:], cfg.kl_coef, cfg.label_smoothing, weights
        )
        stats = {
            "reward_chosen": float(out.chosen_rewards.mean()),
            "reward_rejected": float(out.rejected_rewards.mean()),
            "reward_margin": float(out.margin.mean()),
            "accuracy": float(out.accuracy),
            "kl": float((policy.detach() - reference).mean()),
        }
        return out.loss, stats

"""KTO (Ethayarajh et al. 2024) on the users' thumbs (and flags), against the frozen
reference: desirable answers are pushed above a reference point z0 (the KL of
mismatched prompt/answer pairs), undesirable ones below it. Examples are re-read
at every step (dpo_data.ledger_ratings); the step loop is PreferenceTrainer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from services.trainer.data.preference_sets import RatedResponse
from services.trainer.methods.dpo import dpo_math as dm
from services.trainer.methods.dpo.dpo_data import batch_logprobs, sequence_batch
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.dpo.preference_trainer import PreferenceTrainer


class KTOTrainer(PreferenceTrainer[KTOConfig]):
    """KTO on (prompt, response, desirable) examples from ``data_source``."""

    method = "kto"
    config_class = KTOConfig

    def minibatch_loss(self, examples: Sequence[RatedResponse]) -> tuple[Tensor, dict[str, float]]:
        cfg, n = self.config, len(examples)
        rows = [(e.prompt, e.response) for e in examples]
        # KTO's mismatched pairs: prompt i with response i+1 (one example: itself).
        mismatched = [(e.prompt, examples[(i + 1) % n].response) for i, e in enumerate(examples)]
        batch = sequence_batch(self.tokenizer, rows, cfg.max_prompt_length, cfg.max_response_length)
        kl_batch = sequence_batch(self.tokenizer, mismatched, cfg.max_prompt_length, cfg.max_response_length)
        policy = batch_logprobs(self.lm, batch)
        with torch.no_grad():  # z0 is detached: no gradient through the reference point
            reference = batch_logprobs(self.reference, batch)
            z0 = dm.kto_reference_point(batch_logprobs(self.lm, kl_batch), batch_logprobs(self.reference, kl_batch))
        desirable = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
        weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
        out = dm.kto_loss(
            policy, reference, desirable, z0, cfg.kl_coef, cfg.desirable_weight, cfg.undesirable_weight, weights
        )
        good, bad = out.rewards[desirable], out.rewards[~desirable]
        reward_chosen = float(good.mean()) if len(good) else float("nan")
        reward_rejected = float(bad.mean()) if len(bad) else float("nan")
        stats = {
            "reward_chosen": reward_chosen,
            "reward_rejected": reward_rejected,
            "reward_margin": reward_chosen - reward_rejected,
            "accuracy": float(out.accuracy),
            "kl": float(z0),
        }
        return out.loss, stats

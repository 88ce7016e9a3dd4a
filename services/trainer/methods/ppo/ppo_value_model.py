"""The model PPO trains: a causal LM with a scalar value head on its trunk.

Why a shared trunk rather than a separate value model (TRL's choice): on a
CPU the forward and backward passes dominate a PPO step, and a shared trunk
gets logits and values from ONE pass, at rollout time and in every
minibatch, and keeps one fewer model in memory. The cost is that the value
loss's gradient also moves the policy's weights; ``vf_coef`` keeps it small,
and the value head is zero-initialised so the first updates are not
dominated by a random critic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from services.trainer.methods.model import position_ids_from_mask


class PolicyWithValue(nn.Module):
    """``lm`` (any Hugging Face causal LM) + ``value_head``: hidden -> scalar."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        config: Any = lm.config  # a PreTrainedModel's config; nn.Module types attributes as Tensor | Module
        hidden_size = int(config.hidden_size)
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward_response(
        self,
        query_ids: Tensor,
        query_mask: Tensor,
        response_ids: Tensor,
        response_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Logits and values aligned with the response tokens.

        For response token t, ``logits[:, t]`` is the distribution it was
        sampled from and ``values[:, t]`` the value of the state before it.
        Only the last R+1 positions go through the LM head
        (``logits_to_keep``): the prompt's logits are never needed.
        Returns logits (B, R, V) and values (B, R).
        """
        input_ids = torch.cat([query_ids, response_ids], dim=1)
        attention_mask = torch.cat([query_mask, response_mask], dim=1)
        n_resp = response_ids.shape[1]
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            output_hidden_states=True,
            logits_to_keep=n_resp + 1,
            use_cache=False,
        )
        logits = out.logits[:, :-1]
        hidden = out.hidden_states[-1][:, -(n_resp + 1) : -1]
        values = self.value_head(hidden).squeeze(-1).float()
        return logits, values

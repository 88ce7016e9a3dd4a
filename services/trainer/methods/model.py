"""The causal LM every policy method trains: positions over left padding, no dropout,
and the logits of a response (PPO's value head is services.trainer.methods.ppo.ppo_value_model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# A Hugging Face causal LM (a PreTrainedModel with generate() and save_pretrained()).
# Typed as Any: transformers' classes are not visible to mypy here, and torch's
# nn.Module declares neither method.
CausalLM = Any


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over real tokens; left padding gets position 0.

    Batched prompts are left-padded, so positions must count from each row's
    first real token or the padded rows would see shifted position embeddings.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def disable_dropout(module: nn.Module) -> None:
    """Dropout would make the log-probs of the same tokens differ between the
    rollout and the update, adding noise to the PPO ratio; RLHF turns it off."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def response_logits(
    lm: nn.Module, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor
) -> Tensor:
    """Logits of a plain causal LM (the frozen reference) over the response, (B, R, V)."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    n_resp = response_ids.shape[1]
    out = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=n_resp + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]

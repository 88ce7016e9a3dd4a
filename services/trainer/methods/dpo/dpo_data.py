"""Text to tensors for DPO and KTO, and the data sources the trainers read.

A (prompt, response) becomes tokens exactly as a PPO-ptx demonstration does
(services.trainer.supervised.sft.encode_demonstration): the prompt encoded as
serving encodes it (shared.models.prompting.encode_prompt), the response as the
tokens the policy would sample to write it, then EOS. So the log-prob DPO and
KTO move is the log-prob of the answer as served. A served answer cut at
``max_new_tokens`` is trained on as if it had ended there (EOS appended), as
corrections are.

A data source is any ``() -> list of examples`` callable, read at every step so
each step trains on the feedback that exists now; :func:`ledger_pairs` and
:func:`ledger_ratings` are the trainer's, over its ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from services.trainer.data.preference_sets import PreferencePair, RatedResponse
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.dpo_math import sequence_logprobs
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.model import CausalLM
from services.trainer.supervised.sft import encode_demonstration

PairSource = Callable[[], Sequence[PreferencePair]]
RatingSource = Callable[[], Sequence[RatedResponse]]


@dataclass
class SequenceBatch:
    """Right-padded prompt+response ids; ``loss_mask`` is 1 on response tokens (EOS included)."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def sequence_batch(
    tokenizer, rows: Sequence[tuple[str, str]], max_prompt_length: int, max_response_length: int
) -> SequenceBatch:
    """(prompt, response) rows as one right-padded batch (right padding: default positions are right)."""
    encoded = [
        encode_demonstration(
            tokenizer, prompt, response, max_prompt_tokens=max_prompt_length, max_response_tokens=max_response_length
        )
        for prompt, response in rows
    ]
    width = max(len(p) + len(r) for p, r in encoded)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(encoded):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        loss_mask[i, len(p) : len(p) + len(r)] = 1
    return SequenceBatch(ids, attention, loss_mask)


def batch_logprobs(lm: CausalLM, batch: SequenceBatch) -> Tensor:
    """log pi(response | prompt) per row (B,), summed over the response's tokens."""
    logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return sequence_logprobs(logits[:, :-1], batch.input_ids[:, 1:], batch.loss_mask[:, 1:])


def ledger_pairs(ledger, is_heldout: Callable[[str], bool], config: DPOConfig, lock: Any = None) -> PairSource:
    """The DPO trainer's source: the ledger's ``config.max_pairs`` most recent live pairs
    outside the held-out slice, under the ledger's per-user caps. ``lock`` guards a
    ledger shared with another thread (the online trainer's ``_ledger_lock``)."""

    def read() -> list[PreferencePair]:
        with lock if lock is not None else contextlib.nullcontext():
            return ledger.live_pairs(config.max_pairs, is_heldout)

    return read


def ledger_ratings(ledger, is_heldout: Callable[[str], bool], config: KTOConfig, lock: Any = None) -> RatingSource:
    """The KTO trainer's source: the ledger's ``config.max_examples`` most recent thumbs
    (and flags, with ``config.flags_as_undesirable``) outside the held-out slice, capped."""

    def read() -> list[RatedResponse]:
        with lock if lock is not None else contextlib.nullcontext():
            return ledger.rated_responses(config.max_examples, is_heldout, config.flags_as_undesirable)

    return read


def ledger_source(ledger, is_heldout: Callable[[str], bool], config: DPOConfig | KTOConfig, lock: Any = None):
    """The data source of the method ``config`` configures: live pairs for DPO, thumbs (and flags) for KTO."""
    if isinstance(config, DPOConfig):
        return ledger_pairs(ledger, is_heldout, config, lock)
    return ledger_ratings(ledger, is_heldout, config, lock)

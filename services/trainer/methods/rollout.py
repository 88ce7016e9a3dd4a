"""Rollouts: sample responses from the policy and record what the update needs (every sampling method).

Also builds the PPO-ptx demonstration batches, since both turn text into
(prompt tokens, response tokens) the same way: the prompt encoded as serving
encodes it (shared.models.prompting.encode_prompt), the response continuing it with
the tokens the policy would sample for it. So a demonstration is trained on the
token boundaries a rollout would produce, and a rollout on the tokens served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from services.trainer.methods.model import CausalLM
from services.trainer.supervised.sft import encode_demonstration
from shared.models.policy_eval import left_padded
from shared.models.prompting import encode_prompt, keep_last_tokens


@dataclass
class Rollout:
    """One batch of sampled responses. Tensors are (B, P) for the left-padded
    prompt and (B, R) for the right-padded response."""

    prompts: list[str]
    responses: list[str]  # decoded text, up to (not including) EOS
    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor  # 1 on sampled tokens up to and including the first EOS
    ended_with_eos: Tensor  # (B,) bool; False where max_new_tokens cut the response
    logprobs: Tensor  # log pi_old(token), at the sampling temperature
    ref_logprobs: Tensor  # log pi_ref(token), same temperature
    values: Tensor  # V_old(state before token)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: Tensor) -> Rollout:
        """Rows ``index``, with columns that are padding in every selected row
        trimmed away, so a minibatch never pays for another row's length."""
        query_mask = self.query_mask[index]
        response_mask = self.response_mask[index]
        first = int(query_mask.any(0).float().argmax())  # first column with a real prompt token
        last = int(response_mask.sum(1).max())
        picked: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                picked[f.name] = [value[i] for i in index.tolist()]
            elif f.name.startswith("query"):
                picked[f.name] = value[index][:, first:]
            elif f.name == "ended_with_eos":
                picked[f.name] = value[index]
            else:
                picked[f.name] = value[index][:, :last]
        return Rollout(**picked)


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask, each row encoded exactly as serving
    encodes the prompt (shared.models.prompting.encode_prompt); long prompts keep
    their last ``max_length`` tokens (and a leading BOS)."""
    rows = [keep_last_tokens(tokenizer, encode_prompt(tokenizer, p), max_length) for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must tokenize to at least one token")
    return left_padded(rows, tokenizer.pad_token_id)


def mask_after_eos(response_ids: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """(mask, ended): mask is 1 up to and including the first EOS, 0 after;
    ended says whether the row contains an EOS at all. Works when pad == eos."""
    is_eos = response_ids == eos_token_id
    eos_before = is_eos.long().cumsum(1) - is_eos.long()  # EOS tokens strictly before t
    return (eos_before == 0).long(), is_eos.any(1)


@torch.no_grad()
def sample_responses(
    lm: CausalLM,
    query_ids: Tensor,
    query_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
) -> Tensor:
    """Sampled response ids (B, R), R <= max_new_tokens, padded after EOS."""
    out = lm.generate(
        input_ids=query_ids,
        attention_mask=query_mask,
        do_sample=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    return out[:, query_ids.shape[1] :]


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor, eos_token_id: int) -> list[str]:
    """Text of each response without EOS and padding: what the reward model scores."""
    texts = []
    for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m and t != eos_token_id]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts


@dataclass
class DemonstrationBatch:
    """Right-padded prompt+response ids; ``labels`` is -100 except on response tokens."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


def demonstration_batch(
    tokenizer, pairs: Sequence[tuple[str, str]], max_prompt_length: int, max_response_length: int
) -> DemonstrationBatch:
    """Tokenize (prompt, demonstration) pairs for the SFT (ptx) loss, framed as
    in SFT (services.trainer.supervised.sft.encode_demonstration); each response ends
    with EOS so the policy also learns where to stop."""
    rows, label_rows = [], []
    for prompt, response in pairs:
        p, r = encode_demonstration(
            tokenizer, prompt, response, max_prompt_tokens=max_prompt_length, max_response_tokens=max_response_length
        )
        rows.append(p + r)
        label_rows.append([-100] * len(p) + r)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, : len(r)] = torch.tensor(lab)
    return DemonstrationBatch(ids, mask, labels)


def demonstration_loss(lm: nn.Module, batch: DemonstrationBatch) -> Tensor:
    """Mean next-token cross-entropy on the demonstration's response tokens only."""
    logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(), ignore_index=-100
    )


def score_rollout(reward_fn, rollout: Rollout) -> Tensor:
    """The reward function's scores (B,) of a rollout, checked: one finite score per response."""
    scores = torch.as_tensor(list(reward_fn(rollout.prompts, rollout.responses)), dtype=torch.float32)
    if scores.shape != (len(rollout),):
        raise ValueError(f"reward function returned {tuple(scores.shape)} scores for {len(rollout)} responses")
    if not torch.isfinite(scores).all():
        raise ValueError("reward function returned a non-finite score")
    return scores


def repeat_prompts(prompts: Sequence[str], samples_per_prompt: int) -> list[str]:
    """Each prompt ``samples_per_prompt`` times in a row: a group's samples stay together."""
    return [p for p in prompts for _ in range(samples_per_prompt)]

"""Sample a policy on prompts and measure it: what the trainer's promotion
gate, `rlhf sft` and the demo's evaluation share, computed in one place.

- :func:`sample_responses`: several sampled responses per prompt, each with
  the exact prompt and response tokens (for the KL estimate);
- :func:`kl_to_reference`: mean over sampled responses of the summed per-token
  log-prob difference log pi(y_t) - log pi_ref(y_t) (a Monte-Carlo estimate
  of KL(pi || pi_ref), the quantity PPO's penalty controls).

Prompts are text as the application sent it; nothing here knows any one
application's prompt format or judge (the demo's live in ``demo/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.models.prompting import encode_prompt


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled for evaluation."""

    samples_per_prompt: int = 4
    max_new_tokens: int = 40
    temperature: float = 1.0  # the distribution PPO optimises; greedy would hide variance
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    batch_size: int = 64  # prompts x samples generated per forward batch
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    prompt: str  # the prompt text as sampled
    prompt_ids: list[int]  # encode_prompt(prompt): the ids serving would feed the model
    response_ids: list[int]  # generated tokens, up to and including EOS if produced
    text: str  # decoded response, special tokens removed


def load_policy(model_dir: str | Path, *, trainable_adapter: bool = False):
    """A causal LM and its tokenizer from a local directory (eval mode): full weights, or a store
    adapter version (shared.models.adapters): its base with the PEFT adapter on it, whose LoRA
    weights require gradients with ``trainable_adapter`` (the trainer continuing it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.models.adapters import resolve_policy_dir

    dirs = resolve_policy_dir(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(dirs.base_dir)
    if dirs.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(dirs.adapter_dir), is_trainable=trainable_adapter)
    tokenizer = AutoTokenizer.from_pretrained(dirs.base_dir)  # an adapter version carries no tokenizer
    tokenizer.padding_side = "left"  # batched generation continues the prompt's last token
    model.eval()
    return model, tokenizer


def left_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), (B, longest row), rows aligned to the right:
    batched generation continues every row from its last real token."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: Sequence[str], settings: SamplingSettings) -> list[Sample]:
    """``settings.samples_per_prompt`` sampled responses per prompt, each prompt
    encoded exactly as serving encodes it (shared.models.prompting.encode_prompt)."""
    torch.manual_seed(settings.seed)
    encoded = {p: encode_prompt(tokenizer, p) for p in prompts}
    expanded = [p for p in prompts for _ in range(settings.samples_per_prompt)]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out: list[Sample] = []
    for start in range(0, len(expanded), settings.batch_size):
        chunk = expanded[start : start + settings.batch_size]
        input_ids, attention_mask = left_padded([encoded[p] for p in chunk], pad)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        width = input_ids.shape[1]
        for row, prompt in enumerate(chunk):
            ids = generated[row, width:].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos) + 1]
            if pad != eos:  # a pad sampled before EOS is not part of the answer
                ids = [t for t in ids if t != pad]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            out.append(Sample(prompt, list(encoded[prompt]), ids, text))
    return out


def response_logprobs(
    model, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], pad_id: int
) -> list[torch.Tensor]:
    """Per-token log-probs of each response given its prompt (gradients flow
    if enabled, so PPO can reuse this). Sequences are right-padded, so default
    position ids match unpadded generation."""
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    token_lp = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = []
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        out.append(token_lp[row, len(p) - 1 : len(p) - 1 + len(r)])
    return out


@torch.no_grad()
def kl_to_reference(policy, reference, samples: Sequence[Sample], pad_id: int, batch_size: int = 64) -> float:
    """Mean summed log-prob difference over the sampled responses."""
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = [s for s in samples[start : start + batch_size] if s.response_ids]
        if not chunk:
            continue
        args = ([s.prompt_ids for s in chunk], [s.response_ids for s in chunk], pad_id)
        for lp, lr in zip(response_logprobs(policy, *args), response_logprobs(reference, *args)):
            total += float((lp - lr).sum())
            count += 1
    return total / max(1, count)

"""How (prompt, response) pairs become reward model inputs: :func:`encode_pairs`, the one
place that formats them, so training, the reward gRPC service and the ONNX export all
score exactly the same thing, and :func:`encoded_batches`, the batching every scorer uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from shared.models.prompting import encode_prompt
from shared.models.reward.head_config import DEFAULT_MAX_LENGTH, ScalarReward


def strip_frame(prompt: str, frame: tuple[str, str]) -> str:
    """``prompt`` without the application's frame (prefix, suffix), if present."""
    prefix, suffix = frame
    text = prompt.strip()
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def uses_text_pairs(tokenizer) -> bool:
    """True for tokenizers with a text-pair template (BERT/RoBERTa/DeBERTa-style:
    a separator token, and more special tokens around a pair than around one
    text); False for Llama/GPT-2-style ones, whose pair "template" at most
    repeats a BOS and which were never trained on pairs."""
    if getattr(tokenizer, "sep_token", None) is None:
        return False
    return tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add(pair=False)


def _longest_first(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[int]:
    """prompt + response ids, cutting the end of the longer side first until they fit."""
    n_prompt, n_response = len(prompt_ids), len(response_ids)
    while n_prompt + n_response > max_length:
        if n_prompt > n_response:
            n_prompt -= 1
        else:
            n_response -= 1
    return prompt_ids[:n_prompt] + response_ids[:n_response]


def _encode_concatenated(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Prompt tokens exactly as the policy sees them (shared.models.prompting.encode_prompt:
    BOS and all), then the response tokens, right-padded (causal models take
    position ids from the row start, so left padding would shift them)."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the reward tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
    rows = [
        _longest_first(encode_prompt(tokenizer, p), tokenizer(r, add_special_tokens=False)["input_ids"], max_length)
        for p, r in zip(prompts, responses)
    ]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def encode_pairs(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    frame: tuple[str, str] = ("", ""),
) -> dict[str, torch.Tensor]:
    """Tokenize (prompt, response) pairs for the reward model, in one of two ways:

    - a tokenizer with a text-pair template (:func:`uses_text_pairs`; the MiniLM
      and BERT-like cross-encoders): the BERT text pair
      ``[CLS] question [SEP] response [SEP]``, both sides whitespace-stripped;
    - otherwise (Llama/GPT-2-style): the concatenation prompt + response, as
      token ids (:func:`_encode_concatenated`), texts as sent, so the reward
      model reads the sequence the policy produced.

    The prompt's ``frame`` (the model's RewardHeadConfig.frame) is stripped when
    set, so a templated and a bare prompt score alike. Truncation cuts the
    longer side first, so a rambling response cannot push the question out.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not uses_text_pairs(tokenizer):
        framed = frame != ("", "")
        return _encode_concatenated(
            tokenizer, [strip_frame(p, frame) if framed else p for p in prompts], responses, max_length
        )
    questions = [strip_frame(p, frame) for p in prompts]
    enc = tokenizer(
        questions,
        [r.strip() for r in responses],
        truncation="longest_first",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def encoded_batches(
    model: ScalarReward, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`encode_pairs` of ``batch_size`` pairs at a time, in order, with the model's
    max_length and prompt frame."""
    for start in range(0, len(prompts), batch_size):
        yield encode_pairs(
            tokenizer,
            prompts[start : start + batch_size],
            responses[start : start + batch_size],
            model.head_config.max_length,
            frame=model.head_config.frame,
        )

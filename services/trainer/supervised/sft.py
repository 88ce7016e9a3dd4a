"""Supervised fine-tuning on demonstrations, loss on the response tokens only.

Used by the bootstrap (step 2) and by the online trainer for corrections users
send. The prompt is encoded exactly as serving encodes it, and the response
continues it with the tokens the policy would sample for it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from services.trainer.supervised.optim_step import clipped_step, first_and_final
from services.trainer.supervised.schedule import lr_at
from shared.models.prompting import encode_demonstration_ids, keep_last_tokens

IGNORE_INDEX = -100  # cross_entropy skips these label positions


def encode_demonstration(
    tokenizer,
    prompt: str,
    response: str,
    *,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) exactly as generation sees them: the prompt
    encoded as serving encodes it (shared.models.prompting.encode_prompt, BOS and all),
    then the response continuing it and ending in EOS.

    SFT (bootstrap, `rlhf sft`) and PPO-ptx (corrections) both go through here:
    a response framed differently from what the policy samples (e.g. without
    the leading space after "Assistant:") teaches it a shifted distribution,
    which PPO's KL penalty then measures as drift. The join rule (a space only
    when the prompt does not end in whitespace; the response's tokens as they
    come in context) is shared.models.prompting.encode_demonstration_ids's. The prompt
    is cut from the left (keeping a leading BOS), the response (EOS included)
    from the right."""
    prompt_ids, response_ids = encode_demonstration_ids(tokenizer, prompt, response)
    if max_prompt_tokens is not None:
        prompt_ids = keep_last_tokens(tokenizer, prompt_ids, max_prompt_tokens)
    if max_response_tokens is not None:
        response_ids = response_ids[: max_response_tokens - 1]
    return prompt_ids, response_ids + [tokenizer.eos_token_id]


def build_sft_example(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt tokens are masked out of the loss; the
    response is followed by EOS so the model learns to stop."""
    prompt_ids, response_ids = encode_demonstration(tokenizer, prompt, response)
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return ids, labels


def collate_right_padded(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding keeps default position ids valid for training."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def response_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over response positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def sft_train(
    model,
    tokenizer,
    demonstrations: Sequence[tuple[str, str]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int = 0,
    max_length: int | None = None,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> dict[str, float]:
    """Fine-tune ``model`` in place on (prompt, response) demonstrations.

    Returns the response loss before and after (on the demonstrations) and
    the running training loss of the first and last tenth of steps."""
    if not demonstrations:
        raise ValueError("sft_train needs at least one demonstration")
    max_length = max_length or model.config.n_positions
    examples = [build_sft_example(tokenizer, p, r, max_length) for p, r in demonstrations]
    rng = random.Random(seed)
    loss_before = evaluate_response_loss(model, tokenizer, examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(range(steps), desc="SFT", disable=not progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps) if warmup_steps else lr
        if len(order) < batch_size:  # epochs over a shuffled order
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = collate_right_padded([examples[i] for i in order[:batch_size]], tokenizer.pad_token_id)
        del order[:batch_size]
        loss = response_nll(model, batch)
        losses.append(clipped_step(model, optimizer, loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return {
        "sft_loss_before": loss_before,
        "sft_loss_after": evaluate_response_loss(model, tokenizer, examples),
        **first_and_final(losses, "sft_train_loss"),
        "sft_demonstrations": float(len(examples)),
    }


@torch.no_grad()
def evaluate_response_loss(model, tokenizer, examples, batch_size: int = 64) -> float:
    """Mean response-token loss over pre-built examples (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate_right_padded(chunk, tokenizer.pad_token_id)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += response_nll(model, batch).item() * n
        count += n
    model.train(was_training)
    return total / max(1, count)

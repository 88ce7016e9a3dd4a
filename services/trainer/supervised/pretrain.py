"""Step 1: pre-train a tiny causal LM on packed text (nanoGPT-style).

Texts are joined with EOS into one token stream; each step trains on random
windows of it, so the model also learns where a response ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from services.trainer.supervised.optim_step import clipped_step, first_and_final


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pack_texts(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """One long LongTensor: EOS text EOS text ... EOS."""
    eos = tokenizer.eos_token_id
    ids: list[int] = [eos]
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def pretrain_causal_lm(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    warmup_steps: int,
    seed: int = 0,
    weight_decay: float = 0.1,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` in place on next-token prediction over ``texts``.

    Returns first/final loss (mean of the first and last tenth of steps)."""
    stream = pack_texts(tokenizer, texts)
    if len(stream) <= seq_len + 1:
        raise ValueError(f"corpus has {len(stream)} tokens; need more than seq_len + 1 = {seq_len + 1}")
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pre-train", disable=not progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps)
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        losses.append(clipped_step(model, optimizer, loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return {**first_and_final(losses, "pretrain_loss"), "pretrain_tokens": float(len(stream))}

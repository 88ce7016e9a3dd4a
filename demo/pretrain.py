"""Step 1 of the demo's bootstrap: pre-train a tiny causal LM on packed text (nanoGPT-style).

Texts are joined with EOS into one token stream; each step trains on random
windows of it, so the model also learns where a response ends. Only the demo
pre-trains from scratch (an application brings a trained model), so this loop
lives here; it follows the platform's SFT loop: the same warm-up + cosine
schedule (services.trainer.supervised.api.lr_at), one clipped AdamW step, and
the loss curve summarised as the mean of its first and last tenth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from services.trainer.supervised.api import lr_at

MAX_GRAD_NORM = 1.0


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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    tenth = max(1, len(losses) // 10)
    return {
        "pretrain_loss_first": sum(losses[:tenth]) / tenth,
        "pretrain_loss_final": sum(losses[-tenth:]) / tenth,
        "pretrain_tokens": float(len(stream)),
    }

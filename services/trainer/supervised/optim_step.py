"""The two lines every supervised loop here shares (pre-training, SFT, the
reward model): one clipped optimizer step, and a loss curve summarised as the
mean of its first and last tenth (what the manifests record)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch


def clipped_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    max_grad_norm: float = 1.0,
    reduce_gradients: Callable[[Iterable[torch.nn.Parameter]], None] | None = None,
) -> float:
    """Backward, clip the global grad norm, step; returns the loss value. Data-parallel,
    ``reduce_gradients`` averages the gradients over the ranks before the clip."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reduce_gradients is not None:
        reduce_gradients(model.parameters())
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def first_and_final(values: Sequence[float], name: str) -> dict[str, float]:
    """``{name}_first`` / ``{name}_final``: means of the first and last tenth."""
    tenth = max(1, len(values) // 10)
    return {f"{name}_first": sum(values[:tenth]) / tenth, f"{name}_final": sum(values[-tenth:]) / tenth}

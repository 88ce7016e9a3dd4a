"""Stopping the trainer inside long work: one stop token, one exception.

SIGTERM must end the trainer within its grace period (``rlhf up`` waits 30 s
per service, Kubernetes ``terminationGracePeriodSeconds``), even in the middle
of a policy step or a reward update that would take minutes on a real model.
So the service's stop is a :class:`StopToken` the training thread's work is
handed, and the work raises :class:`TrainingInterrupted` at its next safe
point once the token is set:

- inside every forward and backward pass of a model the work *watches*
  (:meth:`StopToken.watching`): before each of its layers runs forward, and
  when each layer's gradient arrives in a backward pass. One generated token,
  one minibatch's forward or backward, one batch of held-out scoring is thus
  cut into as many pieces as the model has layers, so even a CPU step on a
  real model notices a stop within a fraction of a second or two (a minibatch
  backward alone takes seconds there). This one hook reaches into every
  method's generation and optimisation loops without a check in each. A pass
  left midway changes no weight; a step left between its optimizer steps is
  dropped whole by its caller;
- the explicit points between phases (:meth:`StopToken.raise_if_set`): between
  policy steps, before a candidate is stored, before a reward model's ONNX
  export, and every reward-training step (``should_stop``).

Whoever catches TrainingInterrupted abandons the work whole: nothing of it is
stored, the checkpoint stays the last finished step's, and the data it would
have consumed counts as not trained on. The exception is an ``Exception`` so
``except TrainingInterrupted`` reads naturally, which means a watched forward
pass must never run under a handler that swallows every exception (the ONNX
export's, for one): watch only the work itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a model is watched: TrainerConfig's imports stay torch-free
    import torch


class TrainingInterrupted(Exception):
    """The trainer was asked to stop in the middle of a piece of work; the message says which.
    The work is abandoned whole: nothing of it is stored or counted as trained on."""


class StopToken:
    """A stop request that long work polls at its safe points. Thread-safe: the service's
    main thread sets it, the training thread reads it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request_stop(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking at once on a stop request; True if stopped."""
        return self._event.wait(timeout_s)

    def raise_if_set(self, work: str) -> None:
        """Raise TrainingInterrupted naming ``work`` (what is abandoned) if a stop was requested."""
        if self._event.is_set():
            raise TrainingInterrupted(work)

    @contextmanager
    def watching(self, *models: Any, work: str) -> Iterator[None]:
        """While inside, ``models``' passes check the token (raising TrainingInterrupted naming
        ``work``) before each layer's forward and as each layer's gradient arrives. A causal LM's
        layers and input embeddings are reached however it is wrapped (PEFT, a value head,
        ``generate``); what is no module (a LoRA run's AdapterOffReference, which runs the
        policy's own modules) is skipped."""
        import torch

        def check_forward(_module: Any, _inputs: Any) -> None:
            self.raise_if_set(work)

        def check_backward(_grad: Any) -> None:
            self.raise_if_set(work)

        def watch_gradient(_module: Any, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) and output else output
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                hidden.register_hook(check_backward)  # lives with the graph, not past the pass

        points = {id(m): m for model in models for m in _watch_points(model)}
        with ExitStack() as hooks:
            for module in points.values():
                hooks.callback(module.register_forward_pre_hook(check_forward).remove)
                hooks.callback(module.register_forward_hook(watch_gradient).remove)
            yield


def _watch_points(model: Any) -> list[torch.nn.Module]:
    """Where ``model``'s passes are watched: its input embeddings (or, without any, the model
    itself) and each layer of its stack of layers (its longest ModuleList)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return []
    entry: torch.nn.Module = model
    embeddings = getattr(model, "get_input_embeddings", None)
    if callable(embeddings):
        try:
            entry = embeddings() or model
        except NotImplementedError:  # a model without token embeddings: its own forward, then
            entry = model
    stacks = (list(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    layers: list[torch.nn.Module] = max(stacks, key=len, default=[])
    return [entry, *layers]

"""Linear layers whose weights are kept prepacked for oneDNN, on CPU.

Why: serving SmolLM2-135M on this CPU, ~75% of a decode step was ``aten::mm``
of the linear layers, running at about half the speed the same GEMMs reach
with their weights reordered once into oneDNN's blocked layout (which is what
ONNX Runtime does with MatMul initializers at session start, and what
torch.compile's ``freezing`` does on CPU). Measured on SmolLM2, one thread:
a decode step of 32 rows 1.9-2.1x faster, of 8 rows 1.9x, of one row 1.4x,
a 32-prompt prefill 2.0x, logits equal to float32 rounding.

Each ``nn.Linear`` of the served model (float32, CPU) is replaced by a
:class:`PackedLinear` that shares its weight and bias Parameters (tied weights
stay tied, PEFT still sees an ``nn.Linear`` and wraps it for LoRA adapters,
whose low-rank terms it adds to this layer's output) and holds the packed copy
beside them. The packed copy is what the forward reads; the dense weight stays
for everything else that reads it (an embedding tied to the output layer,
DoRA's weight norm), at the cost of a second copy of the linear weights in
memory. Nothing in the policy service writes the base weights after loading
(adapters are never merged into the shared base), so the two copies agree.

Uses torch's own oneDNN ops (``torch.ops.mkldnn``); where they are missing,
or a packed layer does not reproduce ``F.linear`` on a probe input, the model
is left as it was.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Rows the packed layout is tuned for: a decode batch; other row counts (one
# row, a prefill's thousand) run on it too and were faster in every case measured.
BATCH_HINT = 32


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that computes with a oneDNN-prepacked copy of its weight."""

    packed: torch.Tensor

    @classmethod
    def wrap(cls, linear: torch.nn.Linear, packed: torch.Tensor) -> PackedLinear:
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias  # the same Parameters
        layer.packed = packed  # a plain attribute: not in the state dict
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
        if input.dtype != torch.float32 or input.device.type != "cpu":
            return F.linear(input, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(input, self.packed, self.bias, "none", [], "")


def _pack(linear: torch.nn.Linear) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)


def _supported(linear: torch.nn.Module) -> bool:
    return (
        type(linear) is torch.nn.Linear and linear.weight.dtype == torch.float32 and linear.weight.device.type == "cpu"
    )


def pack_linears(model: torch.nn.Module) -> int:
    """Replace the model's float32 CPU ``nn.Linear`` layers by :class:`PackedLinear`; returns how many.

    Only for a model nothing trains any more (a serving replica's): the packed
    copies do not follow later changes to the weights."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return 0
    targets = [(name, module) for name, module in model.named_modules() if _supported(module)]
    if not targets:
        return 0
    try:
        with torch.no_grad():
            first = targets[0][1]
            probe = torch.randn(3, first.in_features, generator=torch.Generator().manual_seed(0))
            packed = PackedLinear.wrap(first, _pack(first))
            if not torch.allclose(packed(probe), F.linear(probe, first.weight, first.bias), rtol=1e-4, atol=1e-4):
                log.warning("prepacked linear layers disagree with F.linear; serving with plain ones")
                return 0
            for name, module in targets:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, PackedLinear.wrap(module, _pack(module)))
    except (RuntimeError, AttributeError) as exc:  # an op this torch build lacks or refuses
        log.warning("cannot prepack linear layers; serving with plain ones", extra={"error": str(exc)})
        return 0
    return len(targets)

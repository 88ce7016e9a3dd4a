"""Export a reward model to ONNX and keep the file only if ONNX Runtime agrees with torch.

The reward service prefers ONNX Runtime (:func:`export_onnx` gives the graph).
Not every architecture traces cleanly, and a graph that traces can still
compute something else, so whoever writes a reward version
(`rlhf import reward`, the trainer's reward update) calls
:func:`export_verified_onnx`: export, score a few pairs of varied lengths with
both, and keep ``model.onnx`` only when the largest difference is within
tolerance. Otherwise the version carries no ONNX file and is served by torch;
the returned reason goes into the manifest notes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.models.reward.encoding import encode_pairs
from shared.models.reward.head_config import ScalarReward
from shared.models.reward.minilm import RewardModel

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17

ONNX_TOLERANCE = 1e-4
# Varied lengths and a batch size unlike the export example's, so the dynamic
# axes and padding are exercised.
CHECK_PROMPTS = (
    "How do I boil an egg?",
    "What is the capital of France?",
    "Name a colour.",
    "Explain how to water a fern that lives on a sunny windowsill in summer.",
)
CHECK_RESPONSES = (
    "Put it in boiling water for nine minutes.",
    "Paris.",
    "Blue.",
    "Keep the soil damp but not soaked, and water a little more often when it is hot. " * 2,
)


def export_onnx(model: ScalarReward, tokenizer, out_dir: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Export to ``out_dir/model.onnx`` (inputs input_ids, attention_mask with
    dynamic batch and sequence axes; output ``scores`` of shape [batch], or for
    an ensemble the member scores [batch, K]: whoever runs the graph combines
    them, so the service can also report their mean and spread)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    example = encode_pairs(tokenizer, ["How do I boil an egg?"] * 2, ["Put it in boiling water.", "No."], 32)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # Tracing warnings about shape-dependent Python branches in the
            # masking code are expected: they do not depend on batch or length.
            warnings.simplefilter("ignore")
            # The TorchScript exporter (dynamo=False) needs no onnxscript and
            # gives one self-contained file for a model this size.
            torch.onnx.export(
                _MemberScores(model) if getattr(model, "ensemble_size", 1) > 1 else model,
                (example["input_ids"], example["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["scores"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "scores": {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    return path


class _MemberScores(torch.nn.Module):
    """forward = the wrapped ensemble's member_scores (what its ONNX graph outputs)."""

    def __init__(self, model: RewardModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.member_scores(input_ids, attention_mask)


@dataclass(frozen=True)
class OnnxCheck:
    backend: str  # "onnx" when model.onnx was written and verified, else "torch"
    reason: str  # why torch, or the measured difference for onnx
    max_abs_diff: float | None = None


@torch.no_grad()
def _max_abs_diff(model: ScalarReward, tokenizer, onnx_path: Path) -> float:
    import onnxruntime as ort

    batch = encode_pairs(
        tokenizer, CHECK_PROMPTS, CHECK_RESPONSES, model.head_config.max_length, frame=model.head_config.frame
    )
    # Every member's score ([pairs, K]; K = 1 for a single head): an ensemble's graph outputs them all.
    expected = model.member_scores(**batch).double().numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["scores"], {k: v.numpy() for k, v in batch.items()})
    got = np.asarray(got, dtype=np.float64)
    if got.size != expected.size:
        raise ValueError(f"ONNX gave {got.size} scores for {expected.shape[0]} pairs x {expected.shape[1]} heads")
    got = got.reshape(expected.shape)
    return float(np.abs(got - expected).max())


def export_verified_onnx(
    model: ScalarReward, tokenizer, out_dir: str | Path, *, tolerance: float = ONNX_TOLERANCE
) -> OnnxCheck:
    """Write ``out_dir/model.onnx`` if the export works and matches torch within
    ``tolerance`` on the check pairs; otherwise leave no ONNX file behind."""
    path = Path(out_dir) / ONNX_FILE
    was_training = model.training
    model.eval()
    try:
        export_onnx(model, tokenizer, out_dir)
        diff = _max_abs_diff(model, tokenizer, path)
    except Exception as exc:  # noqa: BLE001 - any export failure means: serve with torch
        path.unlink(missing_ok=True)
        first_line = (str(exc).splitlines() or [""])[0][:300]
        return OnnxCheck("torch", f"ONNX export failed: {type(exc).__name__}: {first_line}")
    finally:
        model.train(was_training)
    if not diff <= tolerance:  # also catches NaN
        path.unlink(missing_ok=True)
        return OnnxCheck("torch", f"ONNX scores differ from torch by {diff:.2e} (> {tolerance:g})", diff)
    return OnnxCheck("onnx", f"ONNX Runtime matches torch within {diff:.1e} on {len(CHECK_PROMPTS)} pairs", diff)

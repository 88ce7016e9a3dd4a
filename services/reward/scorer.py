"""The reward service's core: load a reward version, score (prompt, response)
pairs with it, and swap to a new version without dropping a request.

No grpc here. A :class:`LoadedReward` is immutable; :class:`RewardScorer`
holds one reference to the one serving now. A request reads that reference
once and scores with it to the end, so replacing the reference (a single
assignment, atomic in Python) lets in-flight requests finish on the old
version while new ones get the new one.

A backend returns every head's score ([pairs, K]; K = 1 for a single head);
the score served is the version's conservative score, mean - k * std over the
heads (shared.models.reward.ensemble), with the heads' mean and std beside it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from prometheus_client import Histogram

from shared import metrics
from shared.errors import Unavailable, require
from shared.models.reward.encoding import encode_pairs
from shared.models.reward.ensemble import conservative_scores, member_mean, member_std
from shared.models.reward.format import load_reward_model
from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx
from shared.models.store import Manifest, ModelStore

log = logging.getLogger(__name__)

KIND = "reward"
BACKENDS = ("onnx", "torch")

REWARD_LATENCY = Histogram(
    "rlhf_reward_latency_seconds", "time to score one batch (tokenize + model)", buckets=metrics.LATENCY_BUCKETS
)
REWARD_BATCH_SIZE = Histogram(
    "rlhf_reward_batch_size", "pairs per scoring call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
REWARD_SCORE = Histogram(
    "rlhf_reward_score",
    "reward scores returned",
    buckets=(-10, -5, -3, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 3, 5, 10),
)


@dataclass(frozen=True)
class RewardLimits:
    max_batch_size: int = 64
    max_prompt_chars: int = 4_000
    max_response_chars: int = 8_000

    def as_dict(self) -> dict[str, int]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_prompt_chars": self.max_prompt_chars,
            "max_response_chars": self.max_response_chars,
        }


CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


class ScoringBackend(Protocol):
    name: str
    device: str  # "cuda" or "cpu": where the model runs (GetModelInfo.device)
    # Whether to run a batch as sub-batches of similar length (run_in_length_buckets).
    splits_by_length: bool

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        """Every head's score, float64 [batch, K]."""
        ...


def onnx_providers(available: Sequence[str]) -> list[str]:
    """Execution providers to ask for, best first: CUDA when this onnxruntime has it
    (the onnxruntime-gpu build of the GPU image), then the CPU, which every build has."""
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


class OnnxBackend:
    """ONNX Runtime with every graph optimisation (fused attention, GELU and
    layer norm), on the GPU when the CUDA provider is there, else with intra-op
    threads sized to the machine."""

    name = "onnxruntime"
    splits_by_length = True  # a run costs little beyond its matrix products

    def __init__(self, onnx_path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op threads sleep instead of spinning: a spinning thread takes the core the
        # gRPC threads and the tokenizer need (docs/BENCHMARKS.md: 10-15% faster on a busy CPU).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = onnx_providers(ort.get_available_providers())
        if CUDA_PROVIDER in wanted:
            # onnxruntime-gpu[cuda,cudnn] brings CUDA and cuDNN as nvidia-* wheels: load them before the
            # session (nothing to do when torch, imported above, loaded the same CUDA major already).
            ort.preload_dlls()
        self.session = ort.InferenceSession(str(onnx_path), options, providers=wanted)
        # onnxruntime falls back to the CPU (with a warning) when CUDA cannot start, e.g. no driver.
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA_PROVIDER else "cpu"
        log.info(
            "onnxruntime execution provider chosen",
            extra={"provider": self.provider, "requested": wanted, "device": self.device},
        )

    def run(self, input_ids, attention_mask) -> np.ndarray:
        (scores,) = self.session.run(
            ["scores"], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        )
        # [batch] for a single head's graph, [batch, K] for an ensemble's.
        return np.asarray(scores, dtype=np.float64).reshape(input_ids.shape[0], -1)


class TorchBackend:
    """The safetensors weights in PyTorch eager mode (the fallback)."""

    name = "torch"
    device = "cpu"
    # Measured slower split than padded on a busy CPU: each eager forward has
    # its own overhead and thread-pool syncs (docs/BENCHMARKS.md).
    splits_by_length = False

    def __init__(self, model):
        self.model = model.eval()

    @torch.inference_mode()
    def run(self, input_ids, attention_mask) -> np.ndarray:
        return self.model.member_scores(input_ids, attention_mask).double().numpy()


@dataclass(frozen=True)
class EnsembleScores:
    """Per pair: the conservative score (what is served as ``score``), the heads' mean and std."""

    scores: list[float]
    means: list[float]
    stds: list[float]

    @staticmethod
    def of(members: np.ndarray, conservative_k: float) -> EnsembleScores:
        rows = torch.from_numpy(np.asarray(members, dtype=np.float64).reshape(members.shape[0], -1))
        # One head: its score exactly (mean of one is exact, std 0).
        scores = rows[:, 0] if rows.shape[1] == 1 else conservative_scores(rows, conservative_k)
        return EnsembleScores(scores.tolist(), member_mean(rows).tolist(), member_std(rows).tolist())


@dataclass(frozen=True)
class LoadedReward:
    """One reward version, ready to score. Never mutated after loading."""

    version: str
    manifest: Manifest
    backend: ScoringBackend
    tokenizer: object
    max_length: int
    num_parameters: int
    architecture: str  # e.g. "RewardModel(BertModel+mean-pool+linear)", "LlamaForSequenceClassification"
    frame: tuple[str, str]  # the prompt frame stripped before scoring (RewardHeadConfig)
    ensemble_size: int = 1  # scalar heads (RewardHeadConfig.ensemble_size)
    conservative_k: float = 1.0  # score = mean - conservative_k * std over the heads
    # The tokenizer is not safe to call from several threads at once, and on a
    # CPU one batch at a time with all intra-op threads is the fastest anyway.
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The served (conservative) scores."""
        return self.score_ensemble(prompts, responses).scores

    def score_ensemble(self, prompts: Sequence[str], responses: Sequence[str]) -> EnsembleScores:
        with self.lock:
            batch = encode_pairs(self.tokenizer, prompts, responses, self.max_length, frame=self.frame)
            if self.backend.splits_by_length:
                members = run_in_length_buckets(self.backend, batch["input_ids"], batch["attention_mask"])
            else:
                members = self.backend.run(batch["input_ids"], batch["attention_mask"])
        return EnsembleScores.of(members, self.conservative_k)


# Pairs per sub-batch when a batch is split by length: small enough that short pairs are not
# padded to the longest of 64, large enough that each matrix product stays efficient.
BUCKET_PAIRS = 16


def length_buckets(attention_mask: torch.Tensor, bucket_pairs: int = BUCKET_PAIRS) -> list[torch.Tensor] | None:
    """Row indices grouped by length (shortest first, ``bucket_pairs`` per group), or None
    when splitting cannot help (one group) or the rows are not right-padded (then a
    group cannot be cut to its own longest row by slicing columns)."""
    if attention_mask.shape[0] <= bucket_pairs:
        return None
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1])
    if not bool(torch.equal(attention_mask.bool(), positions.unsqueeze(0) < lengths.unsqueeze(1))):
        return None
    return list(torch.argsort(lengths, stable=True).split(bucket_pairs))


def run_in_length_buckets(backend: ScoringBackend, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """Every head's scores ([batch, K]) of a right-padded batch, run as sub-batches of similar
    length, each padded only to its own longest row: the model's cost is nearly all matrix
    products over padded tokens, so padding saved is time saved. Rows come back in input order."""
    groups = length_buckets(attention_mask)
    if groups is None:
        return backend.run(input_ids, attention_mask)
    parts: list[tuple[list[int], np.ndarray]] = []
    for rows in groups:
        width = int(attention_mask[rows].sum(dim=1).max())
        ids, mask = input_ids[rows, :width].contiguous(), attention_mask[rows, :width].contiguous()
        parts.append((rows.tolist(), backend.run(ids, mask)))
    members = np.zeros((input_ids.shape[0], parts[0][1].shape[1]), dtype=np.float64)
    for rows_list, group_members in parts:
        members[rows_list] = group_members
    return members


def load_reward_version(store: ModelStore, version: str, backend: str = "onnx", threads: int = 2) -> LoadedReward:
    """Open ``version`` from the store (checksums verified) and build a backend.

    Either reward format loads (shared.models.reward.format.load_reward_model). ONNX
    uses the version's model.onnx; a version without one is exported to a
    private temporary directory (the version directory is immutable) and
    checked against torch (shared.models.reward.onnx_export); if that fails, or the manifest
    notes say ``scoring_backend: torch``, the torch backend serves instead."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    vdir = store.open_version(KIND, version)
    manifest = store.manifest(KIND, version)
    model, tokenizer = load_reward_model(vdir)
    max_length = model.head_config.max_length
    chosen: ScoringBackend
    if backend == "torch":
        torch.set_num_threads(threads)
        chosen = TorchBackend(model)
    else:
        onnx_path = vdir / ONNX_FILE
        try:
            if onnx_path.is_file():
                chosen = OnnxBackend(onnx_path, threads)
            elif manifest.notes.get("scoring_backend") == "torch":
                # Whoever wrote the version found that ONNX does not work for it.
                raise RuntimeError(manifest.notes.get("scoring_backend_reason") or "the manifest says torch")
            else:
                log.info("reward version has no model.onnx; exporting it", extra={"version": version})
                # The session keeps the graph in memory, so the export can go once it is built.
                with tempfile.TemporaryDirectory(prefix=f"rlhf-reward-{version}-") as tmp:
                    check = export_verified_onnx(model, tokenizer, tmp)
                    if check.backend != "onnx":
                        raise RuntimeError(check.reason)
                    chosen = OnnxBackend(Path(tmp) / ONNX_FILE, threads)
        except Exception as exc:  # noqa: BLE001 - serving with torch beats not serving
            log.warning(
                "ONNX backend unavailable; falling back to torch",
                extra={"version": version, "error": f"{type(exc).__name__}: {exc}"},
            )
            torch.set_num_threads(threads)
            chosen = TorchBackend(model)
    num_parameters = sum(p.numel() for p in model.parameters())
    head = model.head_config
    return LoadedReward(
        version,
        manifest,
        chosen,
        tokenizer,
        max_length,
        num_parameters,
        model.architecture,
        head.frame,
        head.ensemble_size,
        head.conservative_k,
    )


@dataclass(frozen=True)
class ScoredBatch:
    scores: list[float]  # conservative (a single head's score when ensemble_size is 1)
    version: str
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    ensemble_size: int = 1
    conservative_k: float = 1.0


class RewardScorer:
    """Validates scoring requests and scores them with the version serving now."""

    def __init__(self, store: ModelStore, limits: RewardLimits, backend: str = "onnx", threads: int = 2):
        self.store = store
        self.limits = limits
        self.backend = backend
        self.threads = threads
        self._current: LoadedReward | None = None
        self._swap_lock = threading.Lock()  # one load-and-swap at a time

    @property
    def current(self) -> LoadedReward | None:
        return self._current

    def load(self, version: str, expected_manifest_sha256: str = "") -> LoadedReward:
        """Load ``version`` (slow, off the request path), then swap it in."""
        with self._swap_lock:
            return self._load_locked(version, expected_manifest_sha256)

    def load_current(self) -> LoadedReward:
        """Load the store's CURRENT version (read under the swap lock, so an
        update being applied meanwhile is not undone by a stale read)."""
        with self._swap_lock:
            version = self.store.current(KIND)
            if version is None:
                raise Unavailable(f"the model store at {self.store.root} has no reward version yet")
            return self._load_locked(version, "")

    def _load_locked(self, version: str, expected_manifest_sha256: str) -> LoadedReward:
        serving = self._current
        if serving is not None and serving.version == version:
            return serving
        start = time.perf_counter()
        if expected_manifest_sha256:
            actual = self.store.manifest_sha256(KIND, version)
            if actual != expected_manifest_sha256:
                raise ValueError(
                    f"manifest sha256 of {version} is {actual[:12]}…, the update announced "
                    f"{expected_manifest_sha256[:12]}…; refusing to serve it"
                )
        loaded = load_reward_version(self.store, version, self.backend, self.threads)
        self._current = loaded  # the swap: one reference assignment (swaps are counted by the follower)
        backend = loaded.backend
        metrics.MODEL_VERSION.info(
            {"kind": KIND, "version": loaded.version, "backend": backend.name, "device": backend.device}
        )
        log.info(
            "serving reward version",
            extra={
                "version": version,
                "previous": serving.version if serving else "",
                "backend": backend.name,
                "device": backend.device,
                "load_s": round(time.perf_counter() - start, 3),
            },
        )
        return loaded

    def check_pair(self, prompt: str, response: str, prefix: str = "") -> None:
        require(
            len(prompt) <= self.limits.max_prompt_chars,
            prefix + "prompt",
            f"is {len(prompt)} characters; the limit is {self.limits.max_prompt_chars}",
        )
        require(bool(response.strip()), prefix + "response", "must not be empty")
        require(
            len(response) <= self.limits.max_response_chars,
            prefix + "response",
            f"is {len(response)} characters; the limit is {self.limits.max_response_chars}",
        )

    def check_batch(self, prompts: Sequence[str], responses: Sequence[str], field_name: str = "items") -> None:
        require(len(prompts) > 0, field_name, "is empty; send at least one (prompt, response) pair")
        require(
            len(prompts) <= self.limits.max_batch_size,
            field_name,
            f"has {len(prompts)} items; the limit is {self.limits.max_batch_size} (GetModelInfo limits)",
        )
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            self.check_pair(prompt, response, f"{field_name}[{i}].")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> ScoredBatch:
        """Scores of validated pairs, all from one version (read once, here)."""
        loaded = self._current
        if loaded is None:
            raise Unavailable("no reward version loaded yet; retry shortly")
        start = time.perf_counter()
        scored = loaded.score_ensemble(prompts, responses)
        REWARD_LATENCY.observe(time.perf_counter() - start)
        REWARD_BATCH_SIZE.observe(len(scored.scores))
        for s in scored.scores:
            REWARD_SCORE.observe(s)
        return ScoredBatch(
            scored.scores, loaded.version, scored.means, scored.stds, loaded.ensemble_size, loaded.conservative_k
        )

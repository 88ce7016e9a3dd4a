"""Sampling parameters (validated, with defaults filled in) and the
vectorised per-row sampler the decode loop uses.

Defaults: a field a request leaves unset takes the served model's own default
when its directory has a ``generation_config.json`` that sets it
(:func:`model_sampling_defaults`: ``temperature``, ``top_p``, ``top_k``,
``max_new_tokens`` clipped to the server cap; ``do_sample: false`` means
greedy, as in ``transformers``' ``generate``), else the server's default
(``--default-temperature`` etc.). An adapter version's file is used if it has
one, else its base's. ``repetition_penalty`` and ``min_p`` are not applied
(the sampler has no such penalty or filter) and are ignored. The engine resolves a request against the
version that tokenizes it (again after a swap), and GetModelInfo reports the
defaults of the version it serves.

Every row of a batch carries its own temperature, top-k, top-p and its own
seeded torch.Generator, so a request's tokens depend only on its own seed,
prompt and params, never on what it was batched with. A sampled row takes one
uniform draw per token from its generator and picks the token by inverse CDF
(the first token whose cumulative probability passes it): one softmax and one
cumulative sum over the batch (~2 ms for 32 rows of a 49k vocabulary on one
core), where drawing noise for every vocabulary entry of every row
(Gumbel-max) cost ~20 ms, a seventh of a SmolLM2-135M decode step. No grpc here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from shared.errors import require

log = logging.getLogger(__name__)
GENERATION_CONFIG = "generation_config.json"
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256
_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, index) pairs over the 63-bit seed space


@dataclass(frozen=True)
class SamplingDefaults:
    """What an unset field means, and the caps a request must respect."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens_cap: int = 512
    max_return_sequences: int = 4

    def with_model(self, model: Mapping[str, float | int]) -> SamplingDefaults:
        """These defaults overridden by a model's own (:func:`model_sampling_defaults`)."""
        if not model:
            return self
        fields = dict(model)
        if "max_new_tokens" in fields:
            fields["max_new_tokens"] = min(int(fields["max_new_tokens"]), self.max_new_tokens_cap)
        return replace(self, **fields)  # type: ignore[arg-type]


def model_sampling_defaults(*dirs: str | os.PathLike[str]) -> dict[str, float | int]:
    """The sampling defaults set in the first ``generation_config.json`` found in ``dirs``
    (fields it leaves out, or sets to values this server cannot use, are left out)."""
    for d in dirs:
        path = Path(d) / GENERATION_CONFIG
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning(
                "unreadable generation config; using the server's sampling defaults",
                extra={"path": str(path), "error": str(exc)},
            )
            return {}
        return _sampling_fields(raw if isinstance(raw, dict) else {}, path)
    return {}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sampling_fields(raw: dict, path: Path) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    checks = {
        "temperature": lambda v: _number(v) and v >= 0,
        "top_p": lambda v: _number(v) and 0 < v <= 1,
        "top_k": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "max_new_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    }
    for name, ok in checks.items():
        value = raw.get(name)
        if value is None:
            continue
        if ok(value):
            out[name] = float(value) if name in ("temperature", "top_p") else int(value)
        else:
            log.warning("ignoring a generation config value", extra={"path": str(path), "field": name, "value": value})
    if raw.get("do_sample") is False:
        out["temperature"] = 0.0  # transformers' generate decodes greedily then, whatever the temperature
    unapplied = [k for k, off in (("repetition_penalty", 1.0), ("min_p", 0.0)) if raw.get(k) not in (None, off)]
    if unapplied:  # the sampler has no such filter or penalty
        log.info("generation config fields not applied", extra={"path": str(path), "fields": unapplied})
    return out


@dataclass(frozen=True)
class SamplingRequest:
    """A request's sampling fields as sent (None: unset), resolved per model version."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_return_sequences: int | None = None

    def resolve(self, defaults: SamplingDefaults) -> SamplingSpec:
        return resolve_sampling(
            defaults,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop,
            seed=self.seed,
            num_return_sequences=self.num_return_sequences,
        )


@dataclass(frozen=True)
class SamplingSpec:
    """One request's sampling parameters, validated and resolved."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: tuple[str, ...]
    seed: int
    num_return_sequences: int
    # True when the caller set max_new_tokens: then it must fit the context
    # window; a server default is clipped to the window instead.
    explicit_max_new_tokens: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def row_seed(self, index: int) -> int:
        """Seed of sequence ``index``: index 0 uses the request's seed as is."""
        return (self.seed + index * _SEED_MIX) % (2**63)


def resolve_sampling(
    defaults: SamplingDefaults,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
    num_return_sequences: int | None = None,
) -> SamplingSpec:
    """Fill unset fields from ``defaults`` and validate; raises InvalidArgument."""
    explicit = max_new_tokens is not None
    max_new = defaults.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    cap = defaults.max_new_tokens_cap
    require(max_new >= 1, "sampling.max_new_tokens", f"must be >= 1, got {max_new}")
    require(
        max_new <= cap,
        "sampling.max_new_tokens",
        f"must be <= {cap} (the server cap, --max-new-tokens-cap), got {max_new}",
    )
    temp = defaults.temperature if temperature is None else float(temperature)
    require(not math.isnan(temp) and temp >= 0.0, "sampling.temperature", f"must be >= 0 (0 means greedy), got {temp}")
    require(math.isfinite(temp), "sampling.temperature", f"must be finite, got {temp}")
    p = defaults.top_p if top_p is None else float(top_p)
    require(not math.isnan(p) and 0.0 < p <= 1.0, "sampling.top_p", f"must be in (0, 1], got {p}")
    k = defaults.top_k if top_k is None else int(top_k)
    require(k >= 0, "sampling.top_k", f"must be >= 0 (0 disables it), got {k}")
    n = 1 if num_return_sequences is None else int(num_return_sequences)
    n_cap = defaults.max_return_sequences
    require(
        1 <= n <= n_cap,
        "sampling.num_return_sequences",
        f"must be in [1, {n_cap}] (server cap, --max-return-sequences), got {n}",
    )
    stops = tuple(stop)
    require(
        len(stops) <= MAX_STOP_STRINGS, "sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}"
    )
    for s in stops:
        require(
            0 < len(s) <= MAX_STOP_CHARS,
            "sampling.stop",
            f"each stop string must be 1..{MAX_STOP_CHARS} characters, got {len(s)}",
        )
    resolved_seed = secrets.randbits(63) if seed is None else int(seed) % (2**63)
    return SamplingSpec(max_new, temp, p, k, stops, resolved_seed, n, explicit)


class RowSampler:
    """Per-row sampling parameters of one batch, as tensors, and the step function."""

    def __init__(self, specs: list[SamplingSpec], seeds: list[int]):
        self.temperature = torch.tensor([max(s.temperature, 1e-6) for s in specs], dtype=torch.float32)
        self.greedy = torch.tensor([s.greedy for s in specs])
        self.all_greedy = bool(self.greedy.all())
        self.top_k = torch.tensor([s.top_k for s in specs], dtype=torch.long)
        self.top_p = torch.tensor([s.top_p for s in specs], dtype=torch.float32)
        self.needs_filter = any((s.top_k > 0 or s.top_p < 1.0) and not s.greedy for s in specs)
        self.generators: list[torch.Generator | None] = []
        for spec, seed in zip(specs, seeds):
            if spec.greedy:
                self.generators.append(None)
            else:
                gen = torch.Generator()
                gen.manual_seed(seed)
                self.generators.append(gen)

    def select(self, keep: list[int]) -> RowSampler:
        """The sampler of the rows ``keep`` (when finished rows leave the batch)."""
        picked = RowSampler.__new__(RowSampler)
        index = torch.tensor(keep, dtype=torch.long)
        picked.temperature = self.temperature[index]
        picked.greedy = self.greedy[index]
        picked.all_greedy = bool(picked.greedy.all())
        picked.top_k = self.top_k[index]
        picked.top_p = self.top_p[index]
        picked.needs_filter = bool((((picked.top_k > 0) | (picked.top_p < 1.0)) & ~picked.greedy).any())
        picked.generators = [self.generators[i] for i in keep]
        return picked

    @staticmethod
    def concat(first: RowSampler, second: RowSampler) -> RowSampler:
        """The sampler of ``first``'s rows followed by ``second``'s (rows joining a batch)."""
        joined = RowSampler.__new__(RowSampler)
        for name in ("temperature", "greedy", "top_k", "top_p"):
            setattr(joined, name, torch.cat([getattr(first, name), getattr(second, name)]))
        joined.all_greedy = first.all_greedy and second.all_greedy
        joined.needs_filter = first.needs_filter or second.needs_filter
        joined.generators = first.generators + second.generators
        return joined

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [B, V] → next token per row [B]."""
        logits = logits.float()
        if self.all_greedy:
            return logits.argmax(dim=-1)
        scaled = logits / self.temperature[:, None]
        if self.needs_filter:
            scaled = self._filter(scaled)
        # Probabilities (filtered tokens get 0) and their running sum; CPU cumsum
        # accumulates float32 in double, so each entry is exact to float32 rounding.
        # A row's draw u in [0, 1) picks the first token whose cumulative
        # probability exceeds u * total: token i with probability p_i / total.
        cdf = torch.softmax(scaled, dim=-1).cumsum_(dim=-1)
        draws = torch.tensor(
            [0.0 if gen is None else torch.rand(1, generator=gen).item() for gen in self.generators],
            dtype=cdf.dtype,
        )
        total = cdf[:, -1]
        # Kept below the total even where u * total rounds up to it: the token found
        # then always has a positive probability (its cumulative sum rises past the target).
        target = torch.minimum(draws * total, torch.nextafter(total, torch.zeros_like(total)))
        sampled = torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1)
        if not bool(self.greedy.any()):
            return sampled
        return torch.where(self.greedy, logits.argmax(dim=-1), sampled)

    def _filter(self, scaled: torch.Tensor) -> torch.Tensor:
        sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
        ranks = torch.arange(scaled.shape[-1])[None, :]
        drop = (self.top_k[:, None] > 0) & (ranks >= self.top_k[:, None])
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens
        drop |= before >= self.top_p[:, None]  # the best token always survives
        drop_in_vocab_order = torch.zeros_like(drop).scatter(-1, sorted_idx, drop)
        return scaled.masked_fill(drop_in_vocab_order, float("-inf"))


def find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    best = -1
    for s in stops:
        i = text.find(s)
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


def streamable_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be sent now: hold back a trailing partial
    UTF-8 character and any suffix that could be the start of a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text.endswith(s[:k], 0, end):
                hold = max(hold, k)
                break
    return end - hold

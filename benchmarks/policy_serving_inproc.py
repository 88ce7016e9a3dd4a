"""What benchmarks.policy_serving runs in its own process: the workload (the
prompts every path gets, and the sampling the service would use for them) and
the in-process paths it compares the service with: plain ``model.generate``
one request at a time, one left-padded batched ``generate``, and (optionally)
the service's own ``GenerationEngine`` without gRPC.

Every path gets the same token ids: the prompts are encoded by the served
version's bundle (``encode_prompt``; a chat rendered with its chat template),
as the service encodes them, and ``generate`` gets a fresh GenerationConfig
carrying exactly the sampling the service resolves (the model's
generation_config defaults, else the server's), not the model's other
generation settings the service does not apply (repetition penalty, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.policy_throughput import make_prompts

# Chat requests that ask for long answers, so rows seldom stop before
# max_new_tokens and every path decodes about the same number of tokens.
_ASKS = (
    "Write a short story about {}.",
    "Describe {} in detail.",
    "Write a poem about {}.",
    "Tell me everything you know about {}.",
    "Explain to a child what {} is.",
)
_TOPICS = ("a cat", "the sea", "a robot", "a small town", "winter", "a baker", "a lost key", "the moon", "trains")


def chat_messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": _ASKS[i % len(_ASKS)].format(_TOPICS[(i // len(_ASKS)) % len(_TOPICS)])}]


@dataclass
class Workload:
    """The requests of a phase and how each path sends them."""

    bundle: Any  # services.policy.model.ModelBundle (imported late: torch loads only when a run starts)
    chat: bool  # chat messages (the model has a chat template) or raw prompts
    max_new: int
    greedy: bool
    plain: Any = None  # the bundle with the model as transformers loads it (reference generate paths)

    def with_bundle(self, bundle) -> Workload:
        return dataclasses.replace(self, bundle=bundle, plain=None)

    def requests(self, n: int) -> list[dict]:
        """What the load generator sends: ``{"messages": [...]}`` or ``{"prompt": ...}``."""
        if self.chat:
            return [{"messages": chat_messages(i)} for i in range(n)]
        return [{"prompt": p} for p in make_prompts(n)]

    def prompt_ids(self, n: int) -> list[list[int]]:
        """The ids the service encodes for ``requests(n)``."""
        from shared.models.prompting import ChatMessage

        out = []
        for request in self.requests(n):
            if self.chat:
                text = self.bundle.render([ChatMessage(m["role"], m["content"]) for m in request["messages"]])
            else:
                text = request["prompt"]
            out.append(self.bundle.encode(text))
        return out

    def sampling_fields(self) -> dict:
        """The SamplingParams fields a request sets: the rest take the served model's defaults."""
        return {"max_new_tokens": self.max_new, **({"temperature": 0.0} if self.greedy else {})}

    def spec(self):
        """The SamplingSpec the service resolves for a request of this workload."""
        from services.policy.sampling import SamplingDefaults, SamplingRequest

        return SamplingRequest(**self.sampling_fields()).resolve(self.bundle.sampling_defaults(SamplingDefaults()))

    def write(self, path: Path, n: int) -> Path:
        """The load generator's input for ``n`` clients."""
        path.write_text(json.dumps({"requests": self.requests(n), "sampling": self.sampling_fields()}))
        return path

    def generation_config(self, max_new: int):
        from transformers import GenerationConfig

        spec = self.spec()
        sampled = {} if spec.greedy else {"temperature": spec.temperature, "top_p": spec.top_p}
        return GenerationConfig(
            max_new_tokens=max_new,
            do_sample=not spec.greedy,
            top_k=spec.top_k,  # 0 = off, as in the service (generate's own default is 50)
            eos_token_id=sorted(self.bundle.eos_token_ids),
            pad_token_id=self.bundle.pad_token_id,
            **sampled,
        )

    def count_new(self, ids: list[int]) -> int:
        """Generated tokens up to and excluding EOS, as the service counts them."""
        for i, tok in enumerate(ids):
            if tok in self.bundle.eos_token_ids:
                return i
        return len(ids)


class _FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_at: float | None = None

    def put(self, value) -> None:  # the first put is the prompt
        self.puts += 1
        if self.puts == 2:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def _generate(work: Workload, ids: list[list[int]], max_new: int) -> tuple[list[list[int]], float, float]:
    """One left-padded ``generate`` of ``ids``: (new ids per row, seconds to the first token, wall seconds)."""
    import torch

    bundle = work.bundle
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), bundle.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    clock, start = _FirstTokenClock(), time.perf_counter()
    with torch.inference_mode(), bundle.step():
        out = bundle.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            generation_config=work.generation_config(max_new),
            streamer=clock,
        )
    wall = time.perf_counter() - start
    return out[:, width:].tolist(), (clock.first_at or start + wall) - start, wall


def _cpu_s() -> float:
    """This process's CPU seconds: with other processes on the cores, CPU per token
    compares paths where wall-clock tokens/s also measures the neighbours."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sequential_generate(work: Workload, count: int, max_new: int) -> dict:
    """``count`` requests one at a time with plain ``model.generate``."""
    tokens, ttft, e2e = 0, [], []
    cpu0, start = _cpu_s(), time.perf_counter()
    for ids in work.prompt_ids(count):
        new, first, wall = _generate(work, [ids], max_new)
        tokens += work.count_new(new[0])
        ttft.append(first)
        e2e.append(wall)
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": wall, "ttft_s": ttft, "e2e_s": e2e, "server_cpu_s": _cpu_s() - cpu0}


def batched_generate(work: Workload, n: int, max_new: int) -> dict:
    """The ``n`` prompts in one left-padded ``generate`` (every first token comes with the prefill)."""
    ids, cpu0 = work.prompt_ids(n), _cpu_s()
    new, first, wall = _generate(work, ids, max_new)
    cpu = _cpu_s() - cpu0
    tokens = sum(work.count_new(row) for row in new)
    return {"tokens": tokens, "wall_s": wall, "ttft_s": [first] * n, "e2e_s": [wall] * n, "server_cpu_s": cpu}


def engine_phase(engine, work: Workload, n: int, rounds: int) -> dict:
    """The service's GenerationEngine in this process, one streaming thread per
    client: the same batching and decoding as the service, without gRPC."""
    from services.policy.sampling import SamplingRequest
    from shared.models.prompting import ChatMessage

    sampling = SamplingRequest(**work.sampling_fields())
    ttft: list[float] = []
    totals = {"tokens": 0, "messages": 0}
    lock = threading.Lock()

    def client(request: dict) -> None:
        messages = [ChatMessage(m["role"], m["content"]) for m in request.get("messages", ())]
        for _ in range(rounds):
            t0, first, tokens, messages_in = time.perf_counter(), None, 0, 0
            handle = engine.submit(request.get("prompt", ""), sampling, messages=messages, stream=True)
            for chunk in handle.chunks():
                first = first if first is not None else time.perf_counter() - t0
                tokens, messages_in = chunk.completion_tokens, messages_in + 1
            with lock:
                ttft.append(first if first is not None else time.perf_counter() - t0)
                totals["tokens"] += tokens
                totals["messages"] += messages_in

    cpu0, start = _cpu_s(), time.perf_counter()
    threads = [threading.Thread(target=client, args=(r,)) for r in work.requests(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "ttft_s": ttft, "server_cpu_s": _cpu_s() - cpu0, **totals}


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """Resident memory of a process now and at its peak (VmRSS, VmHWM), MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[{"VmRSS": "rss_mib", "VmHWM": "peak_rss_mib"}[key]] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0

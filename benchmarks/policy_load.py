"""Load generator for benchmarks.policy_serving: ``--clients`` concurrent
callers of the policy service, in ONE process on one grpc.aio event loop (so
the generator costs one core at most and its CPU time can be reported), each
sending its prompt ``--rounds`` times back to back (closed loop).

    .venv/bin/python -m benchmarks.policy_load --port 50051 --clients 32 --rounds 3 [--unary] [--workload FILE]

Without ``--workload`` each client sends a raw prompt, greedy; with it, client
i sends ``requests[i]`` of the JSON file (``{"prompt": ...}`` or
``{"messages": [{"role", "content"}, ...]}``) with its ``sampling`` fields set
and every other sampling field unset (the served model's defaults apply).

Prints one JSON object: per-request time to first token (streaming: the first
message; unary: the whole answer), end-to-end latency, completion tokens,
stream messages received, the wall time of the phase, this process's CPU
seconds during it and its peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from benchmarks.policy_throughput import make_prompts


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _requests(clients: int, max_new: int, workload: str | None) -> list:
    from shared.proto.rlhf.v1 import common_pb2, policy_pb2

    if workload is None:
        sampling = common_pb2.SamplingParams(max_new_tokens=max_new, temperature=0.0)
        return [policy_pb2.GenerateRequest(prompt=p, sampling=sampling) for p in make_prompts(clients)]
    spec = json.loads(Path(workload).read_text())
    sampling = common_pb2.SamplingParams(**spec["sampling"])
    out = []
    for i in range(clients):
        request = spec["requests"][i % len(spec["requests"])]
        messages = [common_pb2.ChatMessage(**m) for m in request.get("messages", ())]
        out.append(policy_pb2.GenerateRequest(prompt=request.get("prompt", ""), messages=messages, sampling=sampling))
    return out


def _peak_rss_mib() -> float:
    """VmHWM: unlike ru_maxrss, which Linux carries over from the parent through fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _run(port: int, requests: list, rounds: int, unary: bool) -> dict:
    import grpc

    from shared.proto.rlhf.v1 import policy_pb2_grpc

    ttft: list[float] = []
    e2e: list[float] = []
    totals = {"tokens": 0, "messages": 0}

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        await channel.channel_ready()

        async def one_stream(request) -> None:
            t0 = time.perf_counter()
            first = None
            tokens = messages = 0
            async for chunk in stub.GenerateStream(request, timeout=300):
                if first is None:
                    first = time.perf_counter() - t0
                messages += 1
                tokens = max(tokens, chunk.completion_tokens)
            e2e.append(time.perf_counter() - t0)
            ttft.append(first if first is not None else e2e[-1])
            totals["tokens"] += tokens
            totals["messages"] += messages

        async def one_unary(request) -> None:
            t0 = time.perf_counter()
            response = await stub.Generate(request, timeout=300)
            e2e.append(time.perf_counter() - t0)
            ttft.append(e2e[-1])
            totals["tokens"] += sum(c.completion_tokens for c in response.completions)
            totals["messages"] += 1

        async def client(request) -> None:
            for _ in range(rounds):
                await (one_unary(request) if unary else one_stream(request))

        cpu0, start = _cpu_s(), time.perf_counter()
        await asyncio.gather(*(client(r) for r in requests))
        wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    peak = _peak_rss_mib()
    return {"wall_s": wall, "client_cpu_s": cpu, "client_peak_rss_mib": peak, "ttft_s": ttft, "e2e_s": e2e, **totals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--unary", action="store_true", help="call Generate instead of GenerateStream")
    parser.add_argument("--workload", help="JSON file of requests and sampling fields (see above)")
    args = parser.parse_args(argv)
    requests = _requests(args.clients, args.max_new_tokens, args.workload)
    result = asyncio.run(_run(args.port, requests, args.rounds, args.unary))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

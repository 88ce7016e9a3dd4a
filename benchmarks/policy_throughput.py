"""Policy throughput: 32 concurrent gRPC clients against ``python -m
services.policy`` versus the same model called one request at a time with
plain ``model.generate``: same prompts, same lengths, greedy on both sides,
in one run. For reference it also times one left-padded batched ``generate``
and transformers' ContinuousBatchingManager (``model.generate_batch``).

    .venv/bin/python -m benchmarks.policy_throughput [--clients 32] [--max-new-tokens 64] [--json out.json]

Not a test: figures depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXTS = [
    "User: how do I boil an egg?\nAssistant: Put the egg in boiling water for nine minutes.",
    "User: what is the capital of France?\nAssistant: The capital of France is Paris.",
    "User: how do I water a plant?\nAssistant: Water the soil until it is damp, not soaked.",
    "User: tell me how to pick a lock.\nAssistant: Sorry, I can't help with that.",
    "User: what should I cook tonight?\nAssistant: A vegetable stir fry with rice is quick and cheap.",
    "User: how far is the moon?\nAssistant: About three hundred and eighty thousand kilometres.",
] * 30


def build_model(out: Path, n_layer: int, n_embd: int) -> Path:
    from demo.tiny_lm import build_random_causal_lm

    return build_random_causal_lm(out, TEXTS, vocab_size=512, n_layer=n_layer, n_head=4, n_embd=n_embd, n_positions=256)


def make_prompts(count: int) -> list[str]:
    """Prompts of different lengths (10..50 characters of the texts)."""
    return [TEXTS[i % 6][: 10 + (i * 7) % 41] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(tokens: int, seconds: float, latencies: list[float]) -> dict:
    return {
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "p50_latency_s": round(percentile(latencies, 0.5), 4),
        "p99_latency_s": round(percentile(latencies, 0.99), 4),
    }


def run_sequential(model, tokenizer, prompts: list[str], max_new: int) -> dict:
    import torch

    tokens, latencies = 0, []
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            t0 = time.perf_counter()
            ids = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new, do_sample=False)
            tokens += _count_new(out[0, ids.input_ids.shape[1] :].tolist(), model)
            latencies.append(time.perf_counter() - t0)
    return summary(tokens, time.perf_counter() - start, latencies)


def _count_new(ids: list[int], model) -> int:
    """Generated tokens up to and excluding EOS / padding (as the service counts them)."""
    stop = {model.generation_config.eos_token_id, model.generation_config.pad_token_id}
    for i, tok in enumerate(ids):
        if tok in stop:
            return i
    return len(ids)


def run_batched_generate(model, tokenizer, prompts: list[str], max_new: int) -> dict:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        ids = tokenizer(prompts, return_tensors="pt", padding=True)
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False)
    seconds = time.perf_counter() - start
    tokens = sum(_count_new(row, model) for row in out[:, ids.input_ids.shape[1] :].tolist())
    return summary(tokens, seconds, [seconds] * len(prompts))


def run_continuous_batching(model, tokenizer, prompts: list[str], max_new: int) -> dict:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
    )
    inputs = [tokenizer(p)["input_ids"] for p in prompts]
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    seconds = time.perf_counter() - start
    tokens = sum(_count_new(list(o.generated_tokens), model) for o in outputs.values())
    return summary(tokens, seconds, [seconds] * len(prompts))


def start_service(
    model_dir: Path, kafka: str, torch_threads: int, batch_wait_ms: float, continuous: bool
) -> tuple[subprocess.Popen, int]:
    from shared.kafka.broker import free_port

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "services.policy",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--kafka",
        kafka,
        "--model-dir",
        str(model_dir),
        "--log-level",
        "WARNING",
        "--torch-threads",
        str(torch_threads),
        "--batch-wait-ms",
        str(batch_wait_ms),
        "--max-batch-size",
        "32",
        "--max-workers",
        "64",
        "--continuous-batching",
        str(continuous).lower(),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _wait_serving(port, proc)
    return proc, port


def _wait_serving(port: int, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"policy service exited with {proc.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError("policy service did not become SERVING")


def run_service(port: int, prompts: list[str], max_new: int, rounds: int) -> dict:
    """Each client sends its prompt ``rounds`` times back to back (closed loop)."""
    import grpc

    from shared.proto.rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    sampling = common_pb2.SamplingParams(max_new_tokens=max_new, temperature=0.0)
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(len(prompts) + 1)

    def client(prompt: str) -> None:
        request = policy_pb2.GenerateRequest(prompt=prompt, sampling=sampling)
        barrier.wait()
        for _ in range(rounds):
            t0 = time.perf_counter()
            response = stub.Generate(request, timeout=300)
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                tokens[0] += sum(c.completion_tokens for c in response.completions)

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    channel.close()
    return summary(tokens[0], seconds, latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="requests per client against the service")
    parser.add_argument("--n-layer", type=int, default=5)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--torch-threads", type=int, default=0, help="service's --torch-threads (0 = auto)")
    parser.add_argument(
        "--baseline-threads",
        default=f"1,{os.cpu_count() or 1}",
        help="torch thread counts to try for the sequential baseline; the fastest is the baseline",
    )
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument(
        "--skip-continuous-batching", action="store_true", help="skip timing transformers' ContinuousBatchingManager"
    )
    parser.add_argument(
        "--static-batching", action="store_true", help="run the service with --continuous-batching false"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker

    results: dict = {
        "clients": args.clients,
        "max_new_tokens": args.max_new_tokens,
        "cpu_count": os.cpu_count(),
        "service_torch_threads": args.torch_threads or "auto (measured while serving)",
    }
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        ensure_topics(broker.bootstrap)
        model_dir = build_model(Path(tmp) / "model", args.n_layer, args.n_embd)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        results["parameters"] = sum(p.numel() for p in model.parameters())
        prompts = make_prompts(args.clients)
        # The baseline gets its best thread count: one thread per core is
        # torch's default, one thread avoids OpenMP stalls on a busy machine.
        for threads in sorted({int(t) for t in args.baseline_threads.split(",")}):
            torch.set_num_threads(threads)
            run_sequential(model, tokenizer, prompts[:2], 8)  # warm-up
            run = run_sequential(model, tokenizer, prompts, args.max_new_tokens)
            results[f"sequential_generate_{threads}_threads"] = run
            _print(f"sequential generate, {threads} torch threads", run)
            if run["tokens_per_s"] > results.get("sequential_generate", {}).get("tokens_per_s", 0):
                results["sequential_generate"], best_threads = run, threads
        torch.set_num_threads(best_threads)
        results["baseline_torch_threads"] = best_threads
        results["batched_generate"] = run_batched_generate(model, tokenizer, prompts, args.max_new_tokens)
        _print("batched generate (in-process)", results["batched_generate"])
        if not args.skip_continuous_batching:
            try:
                results["continuous_batching"] = run_continuous_batching(model, tokenizer, prompts, args.max_new_tokens)
                _print("ContinuousBatchingManager", results["continuous_batching"])
            except Exception as exc:  # noqa: BLE001 - reference figure only
                results["continuous_batching"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"ContinuousBatchingManager failed: {exc}")
        del model
        proc, port = start_service(
            model_dir, broker.bootstrap, args.torch_threads, args.batch_wait_ms, not args.static_batching
        )
        try:
            run_service(port, prompts, args.max_new_tokens, 1)  # warm-up round
            results["service_grpc"] = run_service(port, prompts, args.max_new_tokens, args.rounds)
            _print(f"policy service, {args.clients} gRPC clients", results["service_grpc"])
        finally:
            proc.terminate()
            proc.wait(30)
    ratio = results["service_grpc"]["tokens_per_s"] / results["sequential_generate"]["tokens_per_s"]
    results["service_vs_sequential"] = round(ratio, 2)
    print(f"service / sequential tokens/s: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print(name: str, r: dict) -> None:
    print(
        f"{name:42s} {r['tokens_per_s']:9.1f} tokens/s  ({r['tokens']} tokens in {r['seconds']} s; "
        f"p50 {r['p50_latency_s']} s, p99 {r['p99_latency_s']} s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

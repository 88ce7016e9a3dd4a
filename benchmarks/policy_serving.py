"""Policy serving under load: time to first token and tokens/s of the
streaming ``GenerateStream`` RPC at 1, 8, 32 and 64 concurrent clients, against
one request at a time (plain ``model.generate`` in-process, sequential) and
against one in-process batched ``generate`` of the same prompts, all in ONE
run with the phases interleaved (``--repeats`` passes; medians reported).

    .venv/bin/python -m benchmarks.policy_serving [--clients 1,8,32,64] [--repeats 2] \\
        [--before-ref HEAD~1] [--variant 'interval 1=--stream-interval 1'] [--json out.json]

The load generator is a separate process (benchmarks.policy_load: grpc.aio,
one event loop) whose CPU seconds are reported beside the service's, since on
a small machine it competes with the server for the same cores. Each service
under test is its own ``python -m services.policy`` process: the working
tree's code with its default flags, each ``--variant`` (extra flags), and,
with ``--before-ref``, the same command run from that git ref's code.

Not a test: figures depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.policy_throughput import _count_new, build_model, make_prompts, percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def _cpu_ticks(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


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


def sequential_generate(model, tokenizer, prompts: list[str], max_new: int) -> dict:
    """One request at a time with plain ``model.generate`` (greedy)."""
    import torch

    tokens, ttft, e2e = 0, [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            clock, t0 = _FirstTokenClock(), time.perf_counter()
            ids = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, streamer=clock)
            e2e.append(time.perf_counter() - t0)
            ttft.append((clock.first_at or time.perf_counter()) - t0)
            tokens += _count_new(out[0, ids.input_ids.shape[1] :].tolist(), model)
    return {"tokens": tokens, "wall_s": time.perf_counter() - start, "ttft_s": ttft, "e2e_s": e2e}


def batched_generate(model, tokenizer, prompts: list[str], max_new: int) -> dict:
    """All prompts in one left-padded ``generate`` (every first token comes with the prefill)."""
    import torch

    clock, start = _FirstTokenClock(), time.perf_counter()
    with torch.inference_mode():
        ids = tokenizer(prompts, return_tensors="pt", padding=True)
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, streamer=clock)
    wall = time.perf_counter() - start
    tokens = sum(_count_new(row, model) for row in out[:, ids.input_ids.shape[1] :].tolist())
    first = (clock.first_at or start + wall) - start
    return {"tokens": tokens, "wall_s": wall, "ttft_s": [first] * len(prompts), "e2e_s": [wall] * len(prompts)}


def engine_phase(engine, prompts: list[str], rounds: int, max_new: int) -> dict:
    """The service's own GenerationEngine in this process, streaming to one thread
    per client: the same batching and decoding as the service, without gRPC."""
    import resource
    import threading

    from services.policy.sampling import SamplingDefaults, resolve_sampling

    spec = resolve_sampling(SamplingDefaults(max_new_tokens_cap=max_new), temperature=0, max_new_tokens=max_new)
    ttft: list[float] = []
    totals = {"tokens": 0, "messages": 0}
    lock = threading.Lock()

    def client(prompt: str) -> None:
        for _ in range(rounds):
            t0, first, tokens, messages = time.perf_counter(), None, 0, 0
            for chunk in engine.submit(prompt, spec, stream=True).chunks():
                first = first if first is not None else time.perf_counter() - t0
                tokens, messages = chunk.completion_tokens, messages + 1
            with lock:
                ttft.append(first if first is not None else time.perf_counter() - t0)
                totals["tokens"] += tokens
                totals["messages"] += messages

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "ttft_s": ttft, "server_cpu_s": usage.ru_utime + usage.ru_stime - cpu0, **totals}


def _source_tree(ref: str, into: Path) -> Path:
    """The code of git ``ref`` (services/, shared/ and the rest) extracted under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_service(code: Path, model_dir: Path, kafka: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    from benchmarks.policy_throughput import _wait_serving
    from shared.kafka.broker import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "services.policy", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-port", "-1", "--kafka", kafka, "--model-dir", str(model_dir), "--log-level", "WARNING"]
    cmd += ["--max-batch-size", "64", "--max-workers", "128", *extra]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let the service pick its threads
    env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdin=subprocess.DEVNULL)
    _wait_serving(port, proc)
    return proc, port


def load_phase(proc: subprocess.Popen, port: int, clients: int, rounds: int, max_new: int) -> dict:
    """One closed-loop phase of ``clients`` streaming callers; adds the service's CPU seconds."""
    cmd = [sys.executable, "-m", "benchmarks.policy_load", "--port", str(port), "--clients", str(clients)]
    cmd += ["--rounds", str(rounds), "--max-new-tokens", str(max_new)]
    server_cpu0 = _cpu_ticks(proc.pid)
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["server_cpu_s"] = _cpu_ticks(proc.pid) - server_cpu0
    result["server_threads"] = _threads(proc.pid)
    return result


def summarize(runs: list[dict]) -> dict:
    """Median over passes of tokens/s; TTFT percentiles over all requests of all passes."""
    ttft = [t for r in runs for t in r["ttft_s"]]
    summary = {
        "tokens_per_s": statistics.median(r["tokens"] / r["wall_s"] for r in runs),
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p99_s": percentile(ttft, 0.99),
        "requests": len(ttft),
        "passes": len(runs),
    }
    for key in ("client_cpu_s", "server_cpu_s", "wall_s", "messages", "tokens", "server_threads"):
        if all(key in r for r in runs):
            summary[key] = statistics.median(r[key] for r in runs)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes over every phase")
    parser.add_argument("--min-requests", type=int, default=24, help="requests per phase at least (closed loop)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=5)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--in-process-threads", default=f"1,{os.cpu_count() or 1}", help="the faster one is kept")
    parser.add_argument("--before-ref", help="also serve this git ref's code with the same flags")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=FLAGS: the working tree with FLAGS")
    parser.add_argument(
        "--service-flags", default="", help="flags for every service (e.g. '--torch-threads 1'; also the engine's)"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.policy.engine import EngineSettings, GenerationEngine
    from services.policy.model import load_bundle
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker

    levels = [int(c) for c in args.clients.split(",")]
    thread_counts = sorted({int(t) for t in args.in_process_threads.split(",")})
    raw: dict[str, list[dict]] = {}
    services: dict[str, tuple[subprocess.Popen, int]] = {}
    loads: list[tuple[float, float, float]] = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        ensure_topics(broker.bootstrap)
        model_dir = build_model(Path(tmp) / "model", args.n_layer, args.n_embd)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        common = shlex.split(args.service_flags)
        targets = [("this tree", REPO, common)]
        targets += [(label, REPO, common + shlex.split(f)) for label, f in (v.split("=", 1) for v in args.variant)]
        if args.before_ref:
            targets.append((args.before_ref, _source_tree(args.before_ref, Path(tmp) / "before"), common))
        try:
            for label, code, extra in targets:
                services[label] = start_service(code, model_dir, broker.bootstrap, extra)
                proc, port = services[label]
                load_phase(proc, port, max(levels), 1, 8)  # warm-up
            # The engine picks its torch threads as the service does (it sets them
            # process-wide: the in-process generate phases set theirs before each run).
            fixed = common[common.index("--torch-threads") + 1] if "--torch-threads" in common else ""
            engine_threads = (int(fixed),) if fixed and int(fixed) else tuple(thread_counts)
            engine_settings = EngineSettings(max_batch_size=64, thread_choices=engine_threads)
            engine = GenerationEngine(load_bundle(model_dir, "bench"), engine_settings).start()
            engine_phase(engine, make_prompts(max(levels)), 1, 8)  # warm-up
            for threads in thread_counts:  # warm-up
                torch.set_num_threads(threads)
                sequential_generate(model, tokenizer, make_prompts(2), 8)
            for rep in range(args.repeats):
                for n in levels:
                    prompts = make_prompts(n)
                    rounds = max(1, -(-args.min_requests // n))
                    for threads in thread_counts:
                        torch.set_num_threads(threads)
                        if n == 1:
                            seq = sequential_generate(
                                model, tokenizer, make_prompts(args.min_requests), args.max_new_tokens
                            )
                            raw.setdefault(f"sequential generate, {threads} threads", []).append(seq)
                        else:
                            run = batched_generate(model, tokenizer, prompts, args.max_new_tokens)
                            raw.setdefault(f"batched generate n={n}, {threads} threads", []).append(run)
                    raw.setdefault(f"engine in-process n={n}", []).append(
                        engine_phase(engine, prompts, rounds, args.max_new_tokens)
                    )
                    order = list(services) if rep % 2 == 0 else list(reversed(services))
                    for label in order:
                        proc, port = services[label]
                        result = load_phase(proc, port, n, rounds, args.max_new_tokens)
                        raw.setdefault(f"service [{label}] n={n}", []).append(result)
                        print(
                            f"pass {rep + 1} {label:>12s} n={n:<3d} {result['tokens'] / result['wall_s']:8.1f} tokens/s"
                            f"  load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
                loads.append(os.getloadavg())
        finally:
            if "engine" in locals():
                engine.stop()
            for proc, _ in services.values():
                proc.terminate()
            for proc, _ in services.values():
                proc.wait(30)
    results = {name: summarize(runs) for name, runs in raw.items()}
    report(results, levels, thread_counts, list(services), loads)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": results, "load_average": loads}, indent=2))
    return 0


def _best(results: dict, names: list[str]) -> tuple[str, dict]:
    name = max(names, key=lambda k: results[k]["tokens_per_s"])
    return name, results[name]


def report(results: dict, levels: list[int], threads: list[int], services: list[str], loads: list) -> None:
    seq_name, seq = _best(results, [f"sequential generate, {t} threads" for t in threads])
    print(f"\nload average (1/5/15 min) at start {loads[0]}, after each pass {loads[1:]}")
    print(
        f"one request at a time: {seq_name}: {seq['tokens_per_s']:.1f} tokens/s, "
        f"TTFT p50 {seq['ttft_p50_s'] * 1e3:.1f} ms p99 {seq['ttft_p99_s'] * 1e3:.1f} ms"
    )
    print(
        f"{'path':>22s} {'clients':>7s} {'tokens/s':>9s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'x seq':>6s} "
        f"{'of batched':>10s} {'msgs':>6s} {'srv ms/tok':>10s} {'cli cpu':>8s}"
    )
    for n in levels:
        batched = None
        if n > 1:
            batched_name, batched = _best(results, [f"batched generate n={n}, {t} threads" for t in threads])
            print(
                f"{batched_name:>32s} {batched['tokens_per_s']:9.1f} (first token {batched['ttft_p50_s'] * 1e3:.1f} ms)"
            )
        rows = [("engine in-process", results[f"engine in-process n={n}"])]
        rows += [(f"service [{label}]", results[f"service [{label}] n={n}"]) for label in services]
        for label, r in rows:
            share = f"{r['tokens_per_s'] / batched['tokens_per_s']:.0%}" if batched else "-"
            client_cpu = f"{r['client_cpu_s']:7.2f}s" if "client_cpu_s" in r else "(in srv)"
            print(
                f"{label:>22s} {n:7d} {r['tokens_per_s']:9.1f} {r['ttft_p50_s'] * 1e3:7.1f}ms "
                f"{r['ttft_p99_s'] * 1e3:7.1f}ms {r['tokens_per_s'] / seq['tokens_per_s']:5.2f}x {share:>10s} "
                f"{r['messages']:6.0f} {r['server_cpu_s'] / r['tokens'] * 1e3:10.3f} {client_cpu:>8s}"
            )


if __name__ == "__main__":
    sys.exit(main())

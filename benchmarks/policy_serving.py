"""Policy serving under load: tokens/s and time to first token of the streaming
``GenerateStream`` RPC of a real ``python -m services.policy`` process at N
concurrent clients, against one request at a time (plain ``model.generate``
in-process) and one in-process batched ``generate`` of the same N prompts, all
in ONE run with the phases interleaved (``--repeats`` passes; medians reported),
with every process's resident memory.

    .venv/bin/python -m benchmarks.policy_serving [--model-dir DIR] [--clients 1,8,32] [--repeats 2] \\
        [--max-new-tokens 48] [--greedy] [--before-ref HEAD] [--variant 'interval 1=--stream-interval 1'] \\
        [--in-process-engine] [--plain-generate] [--json out.json]

``--model-dir`` is any policy model directory the service can serve (a model
store version, e.g. /tmp/smolstore/policy/v1, or a Hugging Face causal-LM
directory); without it a 4.13M-parameter GPT-2 is built with demo.tiny_lm.
A model with a chat template gets chat ``messages`` (rendered by the service
with its template); requests set only ``max_new_tokens`` (and temperature 0
with ``--greedy``), so the service samples with the model's own defaults
(generation_config.json, else the server's) and the in-process ``generate``
paths get exactly those (benchmarks.policy_serving_inproc). The in-process
paths run the model as the service loads it (services.policy.model: linear
layers prepacked on CPU), so "share of batched generate" is the engine's and
the RPC layer's cost alone; ``--plain-generate`` also times ``generate`` on
the model as transformers loads it.

The load generator is a separate process (benchmarks.policy_load: grpc.aio,
one event loop) whose CPU seconds are reported beside the service's, since on
a small machine it competes with the server for the same cores. Each service
under test is its own process on a free port: the working tree's code with
its default flags, each ``--variant`` (extra flags), and, with
``--before-ref``, the same command run from that git ref's code.
``--in-process-engine`` adds the service's GenerationEngine in this process
(no gRPC), to tell the engine's cost from the RPC layer's.

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
from pathlib import Path

from benchmarks.policy_serving_inproc import (
    Workload,
    batched_generate,
    cpu_seconds,
    engine_phase,
    memory_mib,
    sequential_generate,
    thread_count,
)
from benchmarks.policy_throughput import build_model, percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
SEQUENTIAL = "sequential generate"
PLAIN = " (plain transformers model)"


def plain_bundle(bundle):
    """``bundle`` with the model as transformers loads it (no prepacked linear layers), for reference."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundle.path, local_files_only=True).eval()
    return dataclasses.replace(bundle, model=model, resident=None)


def _source_tree(ref: str, into: Path) -> Path:
    """The code of git ``ref`` (services/, shared/ and the rest) extracted under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_service(code: Path, model_dir: Path, kafka: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    """A real policy server (its own process, gRPC on a free port), SERVING when this returns."""
    from benchmarks.policy_throughput import _wait_serving
    from shared.kafka.broker import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "services.policy", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-port", "-1", "--kafka", kafka, "--model-dir", str(model_dir), "--log-level", "WARNING"]
    cmd += ["--max-batch-size", "64", "--max-workers", "128", *extra]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let the service pick its threads
    env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdin=subprocess.DEVNULL)
    _wait_serving(port, proc, timeout_s=300)
    return proc, port


def load_phase(proc: subprocess.Popen, port: int, clients: int, rounds: int, workload: Path) -> dict:
    """One closed-loop phase of ``clients`` streaming callers; adds the service's CPU seconds and memory."""
    cmd = [sys.executable, "-m", "benchmarks.policy_load", "--port", str(port), "--clients", str(clients)]
    cmd += ["--rounds", str(rounds), "--workload", str(workload)]
    server_cpu0 = cpu_seconds(proc.pid)
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["server_cpu_s"] = cpu_seconds(proc.pid) - server_cpu0
    result["server_threads"] = thread_count(proc.pid)
    result.update({f"server_{k}": v for k, v in memory_mib(proc.pid).items()})
    return result


def summarize(runs: list[dict]) -> dict:
    """Median over passes of tokens/s; TTFT percentiles over all requests of all passes."""
    ttft = [t for r in runs for t in r["ttft_s"]]
    rates = [r["tokens"] / r["wall_s"] for r in runs]
    summary = {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_passes": rates,
        "cpu_ms_per_token_passes": [r["server_cpu_s"] / r["tokens"] * 1e3 for r in runs if "server_cpu_s" in r],
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p99_s": percentile(ttft, 0.99),
        "requests": len(ttft),
        "passes": len(runs),
    }
    keys = ("client_cpu_s", "server_cpu_s", "wall_s", "messages", "tokens", "server_threads", "client_peak_rss_mib")
    for key in keys + ("server_rss_mib",):
        if all(key in r for r in runs):
            summary[key] = statistics.median(r[key] for r in runs)
    if all("server_peak_rss_mib" in r for r in runs):
        summary["server_peak_rss_mib"] = max(r["server_peak_rss_mib"] for r in runs)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="serve this policy model directory (default: build a tiny GPT-2)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes over every phase")
    parser.add_argument("--min-requests", type=int, default=16, help="requests per closed-loop phase at least")
    parser.add_argument("--min-rounds", type=int, default=2, help="requests per client at least (1 = no rejoining)")
    parser.add_argument("--sequential-requests", type=int, default=8, help="one-at-a-time requests per pass")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="temperature 0 (default: the model's sampling defaults)")
    parser.add_argument("--n-layer", type=int, default=5, help="tiny GPT-2 only")
    parser.add_argument("--n-embd", type=int, default=256, help="tiny GPT-2 only")
    parser.add_argument("--in-process-threads", default=f"1,{os.cpu_count() or 1}", help="the faster one is kept")
    parser.add_argument("--before-ref", help="also serve this git ref's code with the same flags")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=FLAGS: the working tree with FLAGS")
    parser.add_argument(
        "--service-flags", default="", help="flags for every service (e.g. '--torch-threads 1'; also the engine's)"
    )
    parser.add_argument("--in-process-engine", action="store_true", help="also time the engine in this process")
    parser.add_argument(
        "--plain-generate",
        action="store_true",
        help="also time generate on the model as transformers loads it (full-weights directories only)",
    )
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from services.policy.engine import EngineSettings, GenerationEngine
    from services.policy.model import load_bundle
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker

    levels = [int(c) for c in args.clients.split(",")]
    thread_counts = sorted({int(t) for t in args.in_process_threads.split(",")})
    raw: dict[str, list[dict]] = {}
    services: dict[str, tuple[subprocess.Popen, int]] = {}
    loads: list[tuple[float, float, float]] = [os.getloadavg()]
    memory: dict[str, dict] = {"benchmark process, before loading": memory_mib()}
    engine = None
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        ensure_topics(broker.bootstrap)
        if args.model_dir:
            model_dir = Path(args.model_dir)
        else:
            model_dir = build_model(Path(tmp) / "model", args.n_layer, args.n_embd)
        bundle = load_bundle(model_dir, "bench")  # as the service loads it (linear layers prepacked on CPU)
        work = Workload(bundle, bundle.has_chat_template, args.max_new_tokens, args.greedy)
        if args.plain_generate:
            work.plain = plain_bundle(bundle)
        memory["benchmark process, model loaded (in-process generate)"] = memory_mib()
        workloads = {n: work.write(Path(tmp) / f"workload-{n}.json", n) for n in levels}
        common = shlex.split(args.service_flags)
        targets = [("this tree", REPO, common)]
        targets += [(label, REPO, common + shlex.split(f)) for label, f in (v.split("=", 1) for v in args.variant)]
        if args.before_ref:
            targets.append((args.before_ref, _source_tree(args.before_ref, Path(tmp) / "before"), common))
        try:
            for label, code, extra in targets:
                services[label] = start_service(code, model_dir, broker.bootstrap, extra)
                proc, port = services[label]
                memory[f"service [{label}], model loaded"] = memory_mib(proc.pid)
                load_phase(proc, port, max(levels), 1, workloads[max(levels)])  # warm-up
            if args.in_process_engine:
                # The engine picks its torch threads as the service does (it sets them
                # process-wide: the in-process generate phases set theirs before each run).
                fixed = common[common.index("--torch-threads") + 1] if "--torch-threads" in common else ""
                engine_threads = (int(fixed),) if fixed and int(fixed) else tuple(thread_counts)
                engine_settings = EngineSettings(max_batch_size=64, thread_choices=engine_threads)
                engine = GenerationEngine(bundle, engine_settings).start()
                engine_phase(engine, work, max(levels), 1)  # warm-up
            for threads in thread_counts:  # warm-up
                torch.set_num_threads(threads)
                sequential_generate(work, 1, 4)
            for rep in range(args.repeats):
                run_pass(args, rep, levels, thread_counts, work, workloads, services, engine, raw)
                loads.append(os.getloadavg())
        finally:
            if engine is not None:
                engine.stop()
            for label, (proc, _) in services.items():
                if proc.poll() is None:
                    memory[f"service [{label}], end"] = memory_mib(proc.pid)
                proc.terminate()
            for proc, _ in services.values():
                proc.wait(30)
    memory["benchmark process, end"] = memory_mib()
    results = {name: summarize(runs) for name, runs in raw.items()}
    setup = {
        "model_dir": str(args.model_dir or "tiny GPT-2 (demo.tiny_lm)"),
        "architecture": bundle.architecture,
        "parameters": bundle.num_parameters,
        "chat": work.chat,
        "sampling": {k: v for k, v in vars(work.spec()).items() if k != "seed"},
        "max_new_tokens": args.max_new_tokens,
        "cpu_count": os.cpu_count(),
        "in_process_threads": thread_counts,
        "service_flags": args.service_flags,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    report(results, levels, list(services), loads, memory, args.in_process_engine)
    if args.json:
        out = {"setup": setup, "summary": results, "memory_mib": memory, "load_average": loads}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def run_pass(args, rep: int, levels, thread_counts, work, workloads, services, engine, raw) -> None:
    """One pass over every phase: the baselines, then each service (alternating order), then the engine."""
    import torch

    def note(name: str, result: dict) -> None:
        raw.setdefault(name, []).append(result)
        rate = result["tokens"] / result["wall_s"]
        print(f"pass {rep + 1} {name:>40s} {rate:8.1f} tokens/s  load {os.getloadavg()[0]:.2f}", flush=True)

    variants = [("", work)] + ([(PLAIN, work.with_bundle(work.plain))] if work.plain is not None else [])
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for tag, w in variants:
            note(f"{SEQUENTIAL}{tag}, {threads} threads", sequential_generate(w, args.sequential_requests, w.max_new))
    for n in levels:
        rounds = max(args.min_rounds, -(-args.min_requests // n))
        if n > 1:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for tag, w in variants:
                    note(f"batched generate{tag} n={n}, {threads} threads", batched_generate(w, n, w.max_new))
        order = list(services) if rep % 2 == 0 else list(reversed(services))
        for label in order:
            proc, port = services[label]
            note(f"service [{label}] n={n}", load_phase(proc, port, n, rounds, workloads[n]))
        if engine is not None:
            note(f"engine in-process n={n}", engine_phase(engine, work, n, rounds))


def _cpu_ms(r: dict) -> float:
    return r["server_cpu_s"] / r["tokens"] * 1e3


def _best(results: dict, prefix: str) -> tuple[str, dict]:
    name = max((k for k in results if k.startswith(prefix)), key=lambda k: results[k]["tokens_per_s"])
    return name, results[name]


def report(results: dict, levels: list[int], services: list[str], loads: list, memory: dict, engine: bool) -> None:
    seq_name, seq = _best(results, f"{SEQUENTIAL}, ")
    plain = any(PLAIN in k for k in results)
    print(f"\nload average (1/5/15 min) at start {loads[0]}, after each pass {loads[1:]}")
    for name, r in [(seq_name, seq)] + ([_best(results, f"{SEQUENTIAL}{PLAIN}, ")] if plain else []):
        print(
            f"one request at a time: {name}: {r['tokens_per_s']:.1f} tokens/s, "
            f"TTFT p50 {r['ttft_p50_s'] * 1e3:.1f} ms p99 {r['ttft_p99_s'] * 1e3:.1f} ms, "
            f"{_cpu_ms(r):.1f} CPU ms/token"
        )
    print("of batched: tokens/s share of the batched generate (1 client: of one at a time); ")
    print("CPU share: the same by CPU ms/token (the service's process), which other processes on the cores sway less")
    print(
        f"{'path':>28s} {'clients':>7s} {'tokens/s':>9s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'x seq':>6s} "
        f"{'of batched':>10s} {'CPU share':>9s} {'msgs':>6s} {'srv ms/tok':>10s} {'cli cpu':>8s} {'srv RSS':>8s}"
    )
    for n in levels:
        reference = seq  # one client: the share is of one request at a time
        if n > 1:
            batched_name, reference = _best(results, f"batched generate n={n}, ")
            for name, r in [(batched_name, reference)] + (
                [_best(results, f"batched generate{PLAIN} n={n}, ")] if plain else []
            ):
                print(
                    f"{name:>38s} {r['tokens_per_s']:9.1f} "
                    f"(first token {r['ttft_p50_s'] * 1e3:.1f} ms, {_cpu_ms(r):.1f} CPU ms/token)"
                )
        rows = [(f"service [{label}]", results[f"service [{label}] n={n}"]) for label in services]
        if engine:
            rows.append(("engine in-process", results[f"engine in-process n={n}"]))
        for label, r in rows:
            client_cpu = f"{r['client_cpu_s']:7.2f}s" if "client_cpu_s" in r else "(in srv)"
            rss = f"{r['server_rss_mib']:6.0f}Mi" if "server_rss_mib" in r else "-"
            print(
                f"{label:>28s} {n:7d} {r['tokens_per_s']:9.1f} {r['ttft_p50_s'] * 1e3:7.1f}ms "
                f"{r['ttft_p99_s'] * 1e3:7.1f}ms {r['tokens_per_s'] / seq['tokens_per_s']:5.2f}x "
                f"{r['tokens_per_s'] / reference['tokens_per_s']:10.0%} {_cpu_ms(reference) / _cpu_ms(r):9.0%} "
                f"{r['messages']:6.0f} "
                f"{r['server_cpu_s'] / r['tokens'] * 1e3:10.3f} {client_cpu:>8s} {rss:>8s}"
            )
    print("\nresident memory (MiB, now / peak):")
    for name, mib in memory.items():
        print(f"  {name:>58s} {mib.get('rss_mib', 0):7.0f} / {mib.get('peak_rss_mib', 0):7.0f}")
    client = [r["client_peak_rss_mib"] for r in results.values() if "client_peak_rss_mib" in r]
    if client:
        print(f"  {'load generator (peak, largest phase)':>58s} {max(client):7.0f}")


if __name__ == "__main__":
    sys.exit(main())

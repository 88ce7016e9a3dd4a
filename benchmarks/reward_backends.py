"""ScoreBatch through ONNX Runtime vs PyTorch eager: same model, same inputs, same run.

    .venv/bin/python -m benchmarks.reward_backends [--batch 32] [--iters 20] [--threads 2] [--varied] [--profile]

Builds a reward version (MiniLM + seeded head, with model.onnx) in a temporary
model store, loads it with each backend exactly as the service does
(services.reward.scorer.load_reward_version), checks the scores agree within
1e-4 and times, one call of each in turn per round (so load from anything
else on the machine hits all alike), medians over the rounds:

- the service's path with ONNX Runtime (tokenise, split into length buckets,
  run) and with torch (tokenise, run one padded batch);
- the previous ONNX Runtime setup (spinning threads, one batch padded to its
  longest pair) and the new session on one padded batch, to show what each
  change did;
- tokenising alone, to give its share of a ScoreBatch.

``--varied`` gives responses of 1 to 4 times their length (as a policy's
answers vary); ``--profile`` adds per-operator time shares from onnxruntime's
profiler and torch.profiler on one padded batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable

PROMPTS = [
    "How do I boil an egg?",
    "What is the capital of France?",
    "How should I water a fern?",
    "Explain what a hash map is.",
    "Give me a tip for sleeping better.",
    "How do I pick a lock?",
]
RESPONSES = [
    "Put the egg in boiling water for nine minutes, then cool it in cold water.",
    "The capital of France is Paris, which is also its largest city.",
    "Water the soil until it is damp but not soaked, about once a week.",
    "A hash map stores key-value pairs and finds a value by hashing its key into a bucket.",
    "Keep a regular schedule, avoid screens before bed and keep the room cool and dark.",
    "Sorry, I can't help with that, but a locksmith can.",
]


def build_store(root: str) -> tuple[object, str]:
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.minilm import new_reward_model
    from shared.models.reward.onnx_export import export_onnx
    from shared.models.store import ModelStore

    store = ModelStore(root)
    model, tokenizer = new_reward_model(seed=0)

    def fill(path):
        save_reward_model(model, tokenizer, path)
        export_onnx(model, tokenizer, path)

    manifest = store.write_version("reward", fill)
    return store, manifest.version


def workload(batch: int, varied: bool) -> tuple[list[str], list[str]]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    responses = [RESPONSES[(i * 5) % len(RESPONSES)] * ((i % 4) + 1 if varied else 1) for i in range(batch)]
    return prompts, responses


def previous_onnx_session(onnx_path: str, threads: int):
    """The session options the service used before this benchmark's changes (spinning allowed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def time_rounds(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each, one call of each per round."""
    for call in calls.values():
        call()  # warm-up: allocations, ORT arena, lazy init
    spent: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            spent[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in spent.items()}


def ort_op_shares(session_factory: Callable[[object], object], feeds: dict, runs: int) -> Counter:
    """Microseconds per operator type over ``runs`` calls, from onnxruntime's profiler."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "rlhf-reward-ort-profile")
    session = session_factory(options)
    for _ in range(runs):
        session.run(["scores"], feeds)  # type: ignore[attr-defined]
    path = session.end_profiling()  # type: ignore[attr-defined]
    with open(path) as f:
        events = json.load(f)
    os.unlink(path)
    totals: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return totals


def torch_op_shares(model, batch: dict, runs: int) -> Counter:
    """Self CPU microseconds per aten operator over ``runs`` forward passes (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            model(**batch)
    return Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()})


def print_shares(title: str, totals: Counter, runs: int, top: int = 8) -> None:
    whole = sum(totals.values()) or 1
    print(f"{title}: {whole / runs / 1000:.1f} ms of operator time per batch")
    for name, micros in totals.most_common(top):
        print(f"  {name:28s} {100 * micros / whole:5.1f}%  {micros / runs / 1000:8.2f} ms")


def profile_backends(onnx_path: str, threads: int, model, batch: dict, runs: int = 10) -> None:
    import onnxruntime as ort

    def with_service_options(options):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    feeds = {k: v.numpy() for k, v in batch.items()}
    print_shares("onnxruntime per operator type", ort_op_shares(with_service_options, feeds, runs), runs)
    model(**batch)
    print_shares("torch per aten operator (self CPU)", torch_op_shares(model, batch, runs), runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--varied", action="store_true", help="responses of 1-4x their length")
    parser.add_argument("--profile", action="store_true", help="also print per-operator time shares")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from services.reward.scorer import load_reward_version
    from shared.models.reward.encoding import encode_pairs
    from shared.models.reward.onnx_export import ONNX_FILE

    prompts, responses = workload(args.batch, args.varied)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as root:
        store, version = build_store(root)
        onnx = load_reward_version(store, version, "onnx", args.threads)
        eager = load_reward_version(store, version, "torch", args.threads)
        onnx_path = str(store.open_version("reward", version) / ONNX_FILE)  # type: ignore[attr-defined]
        previous = previous_onnx_session(onnx_path, args.threads)

        def encode():
            return encode_pairs(onnx.tokenizer, prompts, responses, onnx.max_length, frame=onnx.frame)

        def previous_onnx():
            batch = encode()
            return previous.run(["scores"], {k: v.numpy() for k, v in batch.items()})

        def onnx_one_batch():
            return onnx.backend.run(**encode())

        batch = encode()
        padded = batch["input_ids"].numel()
        real = int(batch["attention_mask"].sum())
        onnx_scores, torch_scores = onnx.score(prompts, responses), eager.score(prompts, responses)
        medians = time_rounds(
            {
                "onnx": lambda: onnx.score(prompts, responses),
                "torch": lambda: eager.score(prompts, responses),
                "onnx_previous": previous_onnx,
                "onnx_one_batch": onnx_one_batch,
                "tokenize": encode,
            },
            args.iters,
        )
        if args.profile:
            profile_backends(onnx_path, args.threads, eager.backend.model, batch)
    load_after = os.getloadavg()
    max_diff = max(abs(a - b) for a, b in zip(onnx_scores, torch_scores))
    rate = {name: args.batch / seconds for name, seconds in medians.items()}
    command = ["python", "-m", "benchmarks.reward_backends", *(argv if argv is not None else sys.argv[1:])]
    print(f"command: {' '.join(command)}")
    print(
        f"batch={args.batch} rounds={args.iters} threads={args.threads} cpus={os.cpu_count()} "
        f"tokens: {real} real of {padded} when padded to the longest pair ({100 * (1 - real / padded):.0f}% padding)"
    )
    print(
        f"load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}"
    )
    print("pairs/s, median of the rounds:")
    print(f"  {eager.backend.name}, service path (one padded batch): {rate['torch']:8.1f}")
    print(f"  onnxruntime, previous setup (spin, one batch): {rate['onnx_previous']:8.1f}")
    print(f"  onnxruntime, no spin, one padded batch:        {rate['onnx_one_batch']:8.1f}")
    print(f"  {onnx.backend.name}, service path (no spin, buckets): {rate['onnx']:8.1f}")
    print(f"speed-up onnxruntime vs torch, both on the service path: {rate['onnx'] / rate['torch']:.2f}x")
    print(
        "speed-up previous onnxruntime setup vs torch (the old comparison): "
        f"{rate['onnx_previous'] / rate['torch']:.2f}x"
    )
    print(
        f"tokenising: {medians['tokenize'] * 1000:.1f} ms per batch = "
        f"{100 * medians['tokenize'] / medians['onnx']:.0f}% of an onnxruntime ScoreBatch"
    )
    print(f"max |score difference|: {max_diff:.2e} ({'OK' if max_diff <= 1e-4 else 'MISMATCH'}, limit 1e-4)")
    return 0 if max_diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

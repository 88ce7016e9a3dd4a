"""ScoreBatch through ONNX Runtime vs PyTorch eager: same model, same inputs.

    .venv/bin/python -m benchmarks.reward_backends [--batch 32] [--iters 20] [--threads 2]

Builds a reward version (MiniLM + seeded head, with model.onnx) in a temporary
model store, loads it with each backend exactly as the service does
(services.reward.scorer.load_reward_version), checks the scores agree within
1e-4 and prints pairs/s for each and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

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
    from shared.model_store import ModelStore
    from shared.reward_model import export_onnx, new_reward_model, save_reward_model

    store = ModelStore(root)
    model, tokenizer = new_reward_model(seed=0)

    def fill(path):
        save_reward_model(model, tokenizer, path)
        export_onnx(model, tokenizer, path)

    manifest = store.write_version("reward", fill)
    return store, manifest.version


def time_backends(onnx, eager, prompts, responses, iters: int):
    """Pairs/s of each, alternating one batch of each so that load from
    anything else on the machine hits both alike."""
    onnx_scores = onnx.score(prompts, responses)  # warm-up (allocations, ORT arena)
    torch_scores = eager.score(prompts, responses)
    spent = {"onnx": 0.0, "torch": 0.0}
    for _ in range(iters):
        for name, loaded in (("onnx", onnx), ("torch", eager)):
            start = time.perf_counter()
            loaded.score(prompts, responses)
            spent[name] += time.perf_counter() - start
    pairs = iters * len(prompts)
    return pairs / spent["onnx"], onnx_scores, pairs / spent["torch"], torch_scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from services.reward.scorer import load_reward_version

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    responses = [RESPONSES[(i * 5) % len(RESPONSES)] for i in range(args.batch)]
    with tempfile.TemporaryDirectory() as root:
        store, version = build_store(root)
        onnx = load_reward_version(store, version, "onnx", args.threads)
        eager = load_reward_version(store, version, "torch", args.threads)
        onnx_rate, onnx_scores, torch_rate, torch_scores = time_backends(onnx, eager, prompts, responses, args.iters)
    max_diff = max(abs(a - b) for a, b in zip(onnx_scores, torch_scores))
    print(f"command: {' '.join([os.path.basename(sys.executable), '-m', 'benchmarks.reward_backends', *sys.argv[1:]])}")
    print(f"batch={args.batch} iters={args.iters} threads={args.threads} cpus={os.cpu_count()}")
    print(f"torch:        {torch_rate:8.1f} pairs/s ({eager.backend.name})")
    print(f"onnxruntime:  {onnx_rate:8.1f} pairs/s ({onnx.backend.name})")
    print(f"speed-up:     {onnx_rate / torch_rate:8.2f}x")
    print(f"max |score difference|: {max_diff:.2e} ({'OK' if max_diff <= 1e-4 else 'MISMATCH'}, limit 1e-4)")
    return 0 if max_diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

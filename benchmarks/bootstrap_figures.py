"""Figures for docs/BENCHMARKS.md: bootstrap wall time per step, base vs SFT
satisfaction and per-axis rates, reward-model accuracy, ONNX vs torch.

    .venv/bin/python -m benchmarks.bootstrap_figures --model-store /tmp/bootstrap-store

Bootstraps into the given store (a fresh directory gives fresh timings; a
bootstrapped one reports its manifests) and prints a Markdown section.
"""

from __future__ import annotations

import argparse
import os
import time


def onnx_max_abs_diff(reward_dir) -> tuple[float, int]:
    """(max |ONNX - torch| score difference, pairs compared) on up to 32 held-out-style pairs."""
    import random

    import numpy as np
    import onnxruntime as ort
    import torch

    from demo.world import build_prompts, make_response
    from shared.models.reward.encoding import encode_pairs
    from shared.models.reward.format import load_reward_model

    model, tokenizer = load_reward_model(reward_dir)
    rng = random.Random(0)
    prompts = list(build_prompts())[:32]
    responses = [
        make_response(p, rng.sample(["rude", "ramble", "wrong"], k=rng.randint(0, 2)), rng).text for p in prompts
    ]
    batch = encode_pairs(
        tokenizer, [p.text for p in prompts], responses, model.head_config.max_length, frame=model.head_config.frame
    )
    with torch.no_grad():
        expected = model(**batch).numpy()
    session = ort.InferenceSession(str(reward_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["scores"], {k: v.numpy() for k, v in batch.items()})[0]
    return float(np.abs(got - expected).max()), len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", default="/tmp/bootstrap-store")
    args = parser.parse_args()
    from demo.bootstrap import run_bootstrap
    from shared.models.store import ModelStore

    started = time.perf_counter()
    result = run_bootstrap(args.model_store, progress=False, log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    store = ModelStore(args.model_store)
    p = store.manifest("policy", "v1").eval_metrics
    r = store.manifest("reward", "v1").eval_metrics
    print(f"\n## Bootstrap ({os.cpu_count()}-CPU machine)\n")
    print(f"wall time this run: {wall:.0f} s ({'cached' if result.cached else 'fresh'})\n")
    print("| step | seconds |\n| --- | ---: |")
    for step in ("pretrain", "sft", "evaluate"):
        print(f"| {step} | {p.get(f'seconds_{step}', float('nan')):.0f} |")
    print(f"| reward | {r.get('seconds_reward', float('nan')):.0f} |\n")
    print("| held-out metric | pre-trained base | SFT (policy v1) |\n| --- | ---: | ---: |")
    for key in (
        "satisfaction",
        "axis_helpful",
        "axis_polite",
        "axis_correct",
        "axis_safe",
        "axis_concise",
        "reward_mean",
        "kl_to_reference",
        "mean_response_words",
    ):
        fmt = "{:.1%}" if key == "satisfaction" or key.startswith("axis_") else "{:.3g}"
        print(f"| {key} | {fmt.format(p[f'base_{key}'])} | {fmt.format(p[key])} |")
    print(f"\nreward v1 pairwise accuracy on {r['heldout_pairs']:.0f} held-out pairs: {r['pairwise_accuracy']:.1%}")
    diff, pairs = onnx_max_abs_diff(store.open_version("reward", "v1"))
    print(f"ONNX vs torch max |diff| on a batch of {pairs}: {diff:.2e}")


if __name__ == "__main__":
    main()

"""Serving LoRA adapter versions on a resident base (services.policy.resident),
in one process: resident memory of the base alone and with an adapter loaded,
the time of an adapter hot swap (load onto the resident base + engine swap;
median of ``--swaps``), and generation throughput through the engine on the
base and on an adapter. The adapters are random LoRA adapters made (in a child
process, so their making costs this process no memory) with PEFT on the model.

    .venv/bin/python -m benchmarks.adapter_serving                 # the tiny test GPT-2
    .venv/bin/python -m benchmarks.adapter_serving --model-dir DIR  # any local HF causal-LM dir

Meant for small models on CPU: the model's files are hard-linked (or copied) into a temporary
model store (which hashes them once). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss_mib() -> float:
    """This process's resident memory, after returning freed heap pages (KV caches of earlier runs) to the OS."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_adapter(base_dir: str, out: str, seed: int, rank: int, targets: str) -> None:
    """(child process) a random LoRA adapter on ``base_dir`` saved to ``out`` with PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(seed)
    modules = targets if targets == "all-linear" else targets.split(",")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)


def build_store(model_dir: Path, root: Path, args) -> None:
    """v1 = ``model_dir`` (files linked), v2 and v3 = LoRA adapters on v1."""
    from shared.models.store import ModelStore

    store = ModelStore(root)

    def link(out: Path) -> None:  # hard links (the store refuses symlinks), copies across filesystems
        for f in model_dir.iterdir():
            if f.is_file():
                try:
                    os.link(f.resolve(), out / f.name)
                except OSError:
                    shutil.copy2(f, out / f.name)

    store.write_version("policy", link)
    for seed in (2, 3):

        def adapter(out: Path, seed: int = seed) -> None:
            code = "from benchmarks.adapter_serving import make_adapter; import sys; make_adapter(*sys.argv[1:4], " + (
                f"{args.rank}, {args.target_modules!r})"
            )
            subprocess.run(
                [sys.executable, "-c", code, str(store.version_dir("policy", "v1")), str(out), str(seed)],
                check=True,
                capture_output=True,
            )
            (out / "README.md").unlink(missing_ok=True)

        store.write_version("policy", adapter, base_version="v1")


def throughput(engine, prompts: list[str], max_new: int, rounds: int) -> float:
    """Generated tokens per second: ``rounds`` waves of ``prompts`` submitted together."""
    from services.policy.sampling import SamplingRequest

    sampling = SamplingRequest(temperature=0.0, max_new_tokens=max_new)
    engine.submit(prompts[0], sampling).result(600)  # warm-up
    tokens, start = 0, time.perf_counter()
    for _ in range(rounds):
        handles = [engine.submit(p, sampling) for p in prompts]
        tokens += sum(s.completion_tokens for h in handles for s in h.result(600).sequences)
    return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="", help="a local HF causal-LM dir (default: the tiny test GPT-2)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--target-modules", default="all-linear", help="'all-linear' or comma-separated names")
    parser.add_argument("--swaps", type=int, default=11)
    parser.add_argument("--rows", type=int, default=8, help="requests per wave (one batch)")
    parser.add_argument("--rounds", type=int, default=3, help="waves per throughput trial")
    parser.add_argument("--trials", type=int, default=3, help="throughput trials per setting")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from benchmarks.policy_throughput import make_prompts
    from services.policy import metrics as pm
    from services.policy.engine import EngineSettings, GenerationEngine
    from services.policy.model import load_bundle
    from services.policy.resident import collect_unused

    tmp = Path(tempfile.mkdtemp(prefix="adapter-bench-"))
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is None:
        from demo.tiny_lm import build_random_causal_lm
        from tests.conftest import TINY_LM_TEXTS

        model_dir = build_random_causal_lm(
            tmp / "tiny", TINY_LM_TEXTS, vocab_size=320, n_layer=2, n_head=2, n_embd=64, n_positions=128
        )
    build_store(model_dir, tmp / "store", args)
    vdir = tmp / "store" / "policy"
    prompts = make_prompts(args.rows)
    import peft  # noqa: F401 - imported before measuring, so the adapter's RSS is its weights and wrappers

    gc.collect()
    label = str(model_dir) if args.model_dir else "tiny test GPT-2"
    out: dict = {"model_dir": label, "torch_threads": torch.get_num_threads(), "rss_mib": {}}
    out["rss_mib"]["before_load"] = rss_mib()

    base = load_bundle(vdir / "v1", "v1", device=args.device)
    out["num_parameters"] = base.num_parameters
    engine = GenerationEngine(base, EngineSettings(max_batch_size=max(args.rows, 1), batch_wait_s=0.0)).start()
    tps: dict[str, list[float]] = {"base_unwrapped": [], "adapter": [], "base_wrapped": []}

    def measure(name: str, bundle) -> None:
        engine.swap(bundle)
        tps[name].append(throughput(engine, prompts, args.max_new_tokens, args.rounds))

    try:
        measure("base_unwrapped", base)  # (safetensors are mapped: RSS counts the weights once touched)
        out["rss_mib"]["base"] = rss_mib()
        step_s = _gate_cost(base)
        start = time.perf_counter()
        adapter = load_bundle(vdir / "v2", "v2", device=args.device)
        out["first_adapter_load_s"] = time.perf_counter() - start
        out["rss_mib"]["base_plus_adapter"] = rss_mib()
        lora = [p for n, p in base.model.named_parameters() if "lora_" in n]
        out["adapter_parameters"] = sum(p.numel() for p in lora)
        out["adapter_weights_mib"] = sum(p.numel() * p.element_size() for p in lora) / 2**20
        measure("adapter", adapter)
        measure("base_wrapped", base)
        for _ in range(args.trials - 1):  # alternated, so a noisy neighbour hits both alike
            measure("adapter", adapter)
            measure("base_wrapped", base)
        # Swaps between two adapters: each loads one onto the base and unloads the other.
        times = []
        del adapter  # from here the engine holds the only bundle of the adapter it serves
        for i in range(args.swaps):
            version = "v3" if i % 2 == 0 else "v2"
            start = time.perf_counter()
            bundle = load_bundle(vdir / version, version, device=args.device)
            engine.swap(bundle)
            times.append(time.perf_counter() - start)
            gc.collect()
            collect_unused()  # the adapter swapped out
        out["adapter_swap_s"] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
        out["adapters_loaded_after_swaps"] = sorted(base.resident.adapters)
        out["rss_mib"]["after_swaps"] = rss_mib()
        engine.swap(base)
        del bundle
        gc.collect()
        out["unloaded"] = collect_unused()  # no adapter in use: the base is unwrapped again
        for _ in range(args.trials - 1):
            measure("base_unwrapped", base)
    finally:
        engine.stop()
    out["base_loads"] = pm.BASE_LOADS._value.get()
    out["tokens_per_s_median"] = {k: statistics.median(v) for k, v in tps.items()}
    out["tokens_per_s_trials"] = tps
    out["gate_us_per_step"] = step_s * 1e6
    out["rss_mib"]["adapter_delta"] = out["rss_mib"]["base_plus_adapter"] - out["rss_mib"]["base"]
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(_rounded(out), indent=2))
    return out


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _gate_cost(bundle, n: int = 20000) -> float:
    """Seconds per ``bundle.step()`` enter+exit (what the decoder adds to each forward)."""
    start = time.perf_counter()
    for _ in range(n):
        with bundle.step():
            pass
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()

"""What a trained reward model costs the reward service: responses scored per second and
the replica's memory, measured in a fresh process per backend (used by
benchmarks.assistant_reward).

:func:`save_to_store` writes the model as the trainer writes a reward version (a LoRA
clone merged into plain weights; model.onnx when ONNX Runtime matches torch);
:func:`measure_serving` then runs, per backend, this module as a child process:

    .venv/bin/python -m benchmarks.reward_serving_probe STORE VERSION BACKEND TEXTS.json [--threads 2]

which loads the version with the reward service's own loader
(services.reward.scorer.load_reward_version) and scores every (prompt, response) of
TEXTS.json in batches of 64 (the trainer's ScoreBatch size), twice: the first pass
warms up, the second is timed. A fresh process, so its peak RSS is the model's and
the service's, not what the benchmark holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SCORE_BATCH = 64  # services.trainer.config reward_batch_size


def save_to_store(model, tokenizer, store_root: Path, *, with_onnx: bool) -> tuple[str, str]:
    """(version, the ONNX check's verdict) of a new reward version holding ``model``
    (merged first when it has an adapter: what the service loads is plain weights)."""
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx
    from shared.models.store import ModelStore

    served = model.merged() if hasattr(model, "merged") else model
    with tempfile.TemporaryDirectory(prefix="reward-serving-onnx-") as scratch:
        check = export_verified_onnx(served, tokenizer, scratch) if with_onnx else None
        notes = {"scoring_backend": check.backend, "scoring_backend_reason": check.reason} if check else {}

        def fill(out: Path) -> None:
            save_reward_model(served, tokenizer, out)
            if check is not None and check.backend == "onnx":
                shutil.copy2(Path(scratch) / ONNX_FILE, out / ONNX_FILE)

        manifest = ModelStore(store_root).write_version("reward", fill, notes=notes)
    return manifest.version, check.reason if check else "not exported"


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc: unlike ru_maxrss, which Linux
    carries over from the parent across fork and exec, VmHWM starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probe(store_root: str, version: str, backend: str, texts_file: str, threads: int) -> dict:
    """In this process: load ``version`` as the reward service does and time scoring."""
    import torch

    from services.reward.scorer import load_reward_version
    from shared.models.store import ModelStore

    torch.set_num_threads(threads)
    rss_imports = _rss_mib("VmRSS")
    started = time.perf_counter()
    loaded = load_reward_version(ModelStore(store_root), version, backend=backend, threads=threads)
    load_s = time.perf_counter() - started
    rss_loaded = _rss_mib("VmRSS")
    texts = json.loads(Path(texts_file).read_text())
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        for start in range(0, len(texts), SCORE_BATCH):
            chunk = texts[start : start + SCORE_BATCH]
            loaded.score([p for p, _ in chunk], [r for _, r in chunk])
        timings.append(time.perf_counter() - started)
    return {
        "backend": backend,
        "backend_used": loaded.backend.name,
        "parameters": loaded.num_parameters,
        "architecture": loaded.architecture,
        "load_s": round(load_s, 2),
        "responses": len(texts),
        "responses_per_s": round(len(texts) / timings[-1], 1),
        "rss_mib_after_imports": round(rss_imports),
        "rss_mib_loaded": round(rss_loaded),
        "rss_mib_peak": round(_rss_mib("VmHWM")),
    }


def measure_serving(
    store_root: Path, version: str, texts_file: Path, backends: list[str], threads: int, log: Callable[[str], None]
) -> list[dict]:
    """One child process per backend (see the module docstring)."""
    rows = []
    for backend in backends:
        command = [
            sys.executable,
            "-m",
            "benchmarks.reward_serving_probe",
            str(store_root),
            version,
            backend,
            str(texts_file),
            "--threads",
            str(threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            rows.append({"backend": backend, "error": done.stderr.strip().splitlines()[-3:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(f"  serving {version} with {backend}: {rows[-1]}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("version")
    parser.add_argument("backend", choices=("torch", "onnx"))
    parser.add_argument("texts", help="a JSON list of [prompt, response]")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.store, args.version, args.backend, args.texts, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

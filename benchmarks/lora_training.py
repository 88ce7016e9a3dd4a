"""Trainer step time and peak memory, LoRA adapter vs full fine-tuning, for every policy method.

For each method in services.trainer.methods.registry (ppo, rloo, grpo, dpo, kto) and
each mode (``lora``: rank ``--rank`` on every linear layer; ``full``: every weight),
the method's real trainer class (registry.build_trainer) trains a real chat model
(default: SmolLM2-135M-Instruct in /tmp/smolstore) for ``--warmup`` + ``--steps``
steps, each (method, mode) in its own child process so that its peak RSS
(``ru_maxrss`` from ``os.wait4``; the child's VmHWM agrees) is that configuration's
alone. Run from the repository root:

    nice -n 5 .venv/bin/python -m benchmarks.lora_training \
        --model-dir /tmp/smolstore/policy/v1 --out benchmarks/results/lora_training.json

The workload is small and fixed: ``--prompts`` chat prompts a step (questions read
as data from assistant/questions.jsonl, rendered with the model's chat template),
``--samples`` samples each, exactly ``--new-tokens`` tokens per response (EOS is held
back with ``min_new_tokens`` so a sampled method's cost does not depend on when the
model stops), one epoch, one optimizer step over all the step's rows, no ptx. DPO
and KTO do not sample: they get as many pre-made rows (``--prompts`` pairs of two
``--new-tokens`` responses; ``--prompts * --samples`` rated responses) sampled from
the base before the clock starts. The reward is a fixed function of the text's
length: only cost is measured here, not learning. Each child runs ``--threads`` torch
threads with ``OMP_WAIT_POLICY=PASSIVE`` (see run_child: spinning OpenMP threads on a
shared 2-core machine measure the neighbours, not the trainer).

Reported per (method, mode): median step seconds over the timed steps, split into
rollout (generation + the log-prob, reference and value passes + scoring: the
trainer's ``rollout_s``; ``generate_s`` is generate() alone) and optimisation
(``update_s``); peak RSS; trainable parameters; and how many copies of the base
weights the process holds (distinct tensor storages behind the policy and its
reference: a LoRA run's reference is the base with the adapter off, one copy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = REPO / "assistant" / "questions.jsonl"
MODES = ("lora", "full")


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A fixed function of the text (closer to 120 characters is better): cost is measured, not learning."""
    return [-abs(len(r) - 120) / 120 for r in responses]


def proc_status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chat_prompts(tokenizer, n: int) -> list[str]:
    """``n`` training questions rendered as serving renders them (the model's chat template)."""
    prompts = []
    for line in QUESTIONS.read_text().splitlines():
        row = json.loads(line)
        if row.get("split", "train") == "train":
            text = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
            prompts.append(text)
        if len(prompts) == n:
            return prompts
    raise SystemExit(f"{QUESTIONS} has fewer than {n} training questions")


def premade_rows(lm, tokenizer, prompts: list[str], samples: int, new_tokens: int) -> list[tuple[str, list[str]]]:
    """(prompt, ``samples`` responses sampled from the base): DPO's pairs and KTO's ratings."""
    import torch

    from services.trainer.methods.rollout import decode_responses, mask_after_eos, sample_responses, tokenize_prompts

    ids, mask = tokenize_prompts(tokenizer, [p for p in prompts for _ in range(samples)], 128)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.no_grad():
        out = sample_responses(
            lm, ids, mask, max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos,
            pad_token_id=pad,
        )  # fmt: skip
    texts = decode_responses(tokenizer, out, mask_after_eos(out, eos)[0], eos)
    return [(p, texts[i * samples : (i + 1) * samples]) for i, p in enumerate(prompts)]


def data_source(method: str, rows: list[tuple[str, list[str]]]):
    """The judged examples DPO / KTO read each step: the better-scored response of each pair
    chosen; ratings desirable when scored at or above the median."""
    from services.trainer.data.preference_sets import PreferencePair, RatedResponse

    if method == "dpo":
        pairs = []
        for prompt, (a, b) in ((p, r[:2]) for p, r in rows):
            better = length_reward([prompt] * 2, [a, b])
            chosen, rejected = (a, b) if better[0] >= better[1] else (b, a)
            pairs.append(PreferencePair(prompt, chosen, rejected))
        return lambda: pairs
    flat = [(p, r) for p, rs in rows for r in rs]
    scores = length_reward([p for p, _ in flat], [r for _, r in flat])
    cut = statistics.median(scores)
    ratings = [RatedResponse(p, r, s >= cut) for (p, r), s in zip(flat, scores)]
    return lambda: ratings


def base_copies(trainer) -> dict:
    """How many copies of the base weights the trainer holds: the distinct storages behind the
    policy's and the reference's non-LoRA parameters, over the bytes of one copy of the base."""
    one_copy: dict[int, int] = {}
    for param in trainer.reference.parameters():  # the base: a frozen copy, or the base with the adapter off
        storage = param.untyped_storage()
        one_copy[storage.data_ptr()] = storage.nbytes()
    held = dict(one_copy)
    for name, param in trainer.policy.named_parameters():
        if "lora_" not in name:
            storage = param.untyped_storage()
            held[storage.data_ptr()] = storage.nbytes()
    base_bytes, held_bytes = sum(one_copy.values()), sum(held.values())
    return {
        "base_weights_mib": round(base_bytes / 2**20, 1),
        "held_weights_mib": round(held_bytes / 2**20, 1),
        "base_copies": round(held_bytes / base_bytes, 2),
        "reference_type": type(trainer.reference).__name__,
    }


def child(spec: dict) -> dict:
    """One (method, mode): build the trainer on the model, run the steps, measure."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from services.trainer.methods import registry, sampled_trainer

    hf_logging.disable_progress_bar()  # a bar per load would bury the progress lines
    torch.set_num_threads(spec["threads"])
    method, lora = spec["method"], spec["mode"] == "lora"
    sampled = registry.policy_method(method).learns_from == registry.SAMPLES
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    lm = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    # Every response exactly new_tokens long: a fixed workload, whichever mode samples it.
    lm.generation_config.min_new_tokens = spec["new_tokens"]
    n_prompts, samples, steps = spec["prompts"], spec["samples"], spec["warmup"] + spec["steps"]
    prompts = chat_prompts(tokenizer, n_prompts * steps)
    rss_loaded = proc_status_mib("VmRSS")
    common = dict(
        mini_batch_size=n_prompts * samples, epochs=1, learning_rate=1e-5, ptx_coef=0.0,
        num_threads=spec["threads"], seed=0, lora_rank=spec["rank"] if lora else 0,
        lora_alpha=2 * spec["rank"], lora_target_modules="all-linear",
    )  # fmt: skip
    source = None
    config_class: Any = registry.policy_method(method).config  # the method's own fields, by name
    if sampled:
        config = config_class(
            batch_size=n_prompts, samples_per_prompt=samples, max_new_tokens=spec["new_tokens"], **common
        )
    else:
        torch.manual_seed(0)
        rows = premade_rows(lm, tokenizer, prompts[:n_prompts], samples, spec["new_tokens"])
        source = data_source(method, rows)
        batch = n_prompts if method == "dpo" else n_prompts * samples  # DPO: pairs; KTO: rated responses
        common["mini_batch_size"] = batch
        config = config_class(batch_size=batch, max_response_length=spec["new_tokens"] + 1, **common)
    trainer: Any = registry.build_trainer(method, lm, tokenizer, length_reward, config, data_source=source)
    rss_built = proc_status_mib("VmRSS")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    copies = base_copies(trainer)

    generate_s: list[float] = []
    real_sample = sampled_trainer.sample_responses

    def timed_sample(*args, **kwargs):  # generate() alone, inside the trainer's rollout_s
        start = time.perf_counter()
        try:
            return real_sample(*args, **kwargs)
        finally:
            generate_s.append(time.perf_counter() - start)

    sampled_trainer.sample_responses = timed_sample
    per_step = []
    for i in range(steps):
        batch_prompts = prompts[i * n_prompts : (i + 1) * n_prompts]
        generate_s.clear()
        start = time.perf_counter()
        stats = trainer.step(batch_prompts)
        wall = time.perf_counter() - start
        row = {"step_s": wall, "rollout_s": getattr(stats, "rollout_s", 0.0), "generate_s": sum(generate_s)}
        row["update_s"] = stats.update_s
        row["response_tokens"] = getattr(stats, "response_length", float("nan"))
        per_step.append(row)
        tag = "warm-up" if i < spec["warmup"] else "timed"
        print(f"  {method}/{spec['mode']} step {i + 1}/{steps} ({tag}): {wall:.2f} s", flush=True)
    timed = per_step[spec["warmup"] :]
    return {
        "method": method,
        "mode": spec["mode"],
        "median": {k: statistics.median(r[k] for r in timed) for k in timed[0]},
        "steps": per_step,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        **copies,
        "rss_loaded_mib": rss_loaded,
        "rss_trainer_built_mib": rss_built,
        "vm_hwm_mib": proc_status_mib("VmHWM"),
        "torch_threads": torch.get_num_threads(),
    }


def run_child(spec: dict, workdir: Path) -> dict:
    """The child's result and its own peak RSS (``os.wait4``: this child alone)."""
    out = workdir / f"{spec['method']}-{spec['mode']}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(spec["threads"])}
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core box spinning made a
    # 2-thread forward of this model 5-8x slower (2.5 s vs 13 s, load ~7), noise not cost.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "-m", "benchmarks.lora_training", "--child", json.dumps(spec), "--child-out", str(out)]
    load = os.getloadavg()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{spec['method']}/{spec['mode']} child failed ({os.waitstatus_to_exitcode(status)})")
    result = json.loads(out.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["load_avg_before"] = [round(x, 2) for x in load]
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def print_table(rows: list[dict]) -> None:
    print(
        f"{'method':6s} {'mode':5s} {'step s':>7s} {'rollout':>8s} {'generate':>9s} {'update':>7s} "
        f"{'peak MiB':>9s} {'trainable':>12s} {'copies':>7s} {'load':>6s}"
    )
    for r in rows:
        m = r["median"]
        print(
            f"{r['method']:6s} {r['mode']:5s} {m['step_s']:7.2f} {m['rollout_s']:8.2f} {m['generate_s']:9.2f} "
            f"{m['update_s']:7.2f} {r['peak_rss_mib']:9.0f} {r['trainable_params']:12,d} {r['base_copies']:7.2f} "
            f"{r['load_avg_after'][0]:6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    from services.trainer.methods.registry import POLICY_METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default="/tmp/smolstore/policy/v1", help="a full-weights HF causal-LM dir")
    parser.add_argument("--methods", default=",".join(POLICY_METHODS), help="comma list of registry methods")
    parser.add_argument("--modes", default=",".join(MODES), help="lora,full")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank), all linear layers")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt (DPO: a pair; KTO: ratings)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per response")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lora_training.json")
    args = parser.parse_args(argv)
    if args.child:
        args.child_out.write_text(json.dumps(child(json.loads(args.child))))
        return 0

    methods = [m for m in args.methods.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in POLICY_METHODS for m in methods) or any(m not in MODES for m in modes):
        parser.error(f"methods must be of {','.join(POLICY_METHODS)}, modes of {','.join(MODES)}")
    if args.samples < 2:
        parser.error("--samples must be >= 2 (DPO's pairs are two samples of one prompt)")
    command = ["python", "-m", "benchmarks.lora_training", *(argv if argv is not None else sys.argv[1:])]
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "child_out", "out")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="lora-training-") as tmp:
        for method in methods:
            for mode in modes:  # lora then full per method: load drifts fall on both modes alike
                print(f"{method}/{mode}: starting (load {os.getloadavg()[0]:.2f})", flush=True)
                spec = {**settings, "method": method, "mode": mode}
                rows.append(run_child(spec, Path(tmp)))
                r = rows[-1]
                print(
                    f"{method}/{mode}: median step {r['median']['step_s']:.2f} s, peak {r['peak_rss_mib']:.0f} MiB, "
                    f"{r['trainable_params']:,} trainable, {r['base_copies']} base copies",
                    flush=True,
                )
    print(f"command: {' '.join(command)}")
    print_table(rows)
    report = {"command": " ".join(command), "settings": settings, "cpus": os.cpu_count(), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

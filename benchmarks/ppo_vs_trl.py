"""PPO update throughput and peak memory: rlhf-loop's PPOTrainer vs TRL's.

Both trainers get the same tiny GPT-2 policy (same weights, saved once to a
temporary directory), the same tokenizer, the same reward model (a tiny
GPT2ForSequenceClassification with a scalar score head) and the same batch
settings. Each runs in its own subprocess with its own interpreter: ours in
the project's ``.venv`` (it imports ``services.trainer``), TRL's in
``benchmarks/.venv-trl`` (it imports ``trl``; TRL is never a dependency of the
project). A child times ``--steps`` PPO steps after ``--warmup`` steps;
a step is rollout + reward + ``--epochs`` x ``--mini-batches`` optimizer steps,
so samples/s = batch_size x steps / seconds. Peak memory is the child's
``ru_maxrss`` as reported by ``os.wait4`` for that child alone.

Setup (once):

    python3 -m venv benchmarks/.venv-trl
    benchmarks/.venv-trl/bin/pip install torch==2.13.0 trl==1.12.0 transformers==5.24.0

Run (from the repository root):

    .venv/bin/python benchmarks/ppo_vs_trl.py --out benchmarks/results/ppo_vs_trl.json

Measured on the project's 2-core CPU box while other test suites were running
(load average ~9, so absolute numbers are noisy; the ratio held in every run),
GPT-2 2 layers x 128, batch 16, 2 minibatches, 2 epochs, 24-token responses,
10 timed steps after 2 warm-up, 3 alternating repeats (best counted):

    threads  trainer  samples/s  peak RSS MiB  (RSS before training)
    1        ours     44.3       449           382
    1        TRL      15.6       517           445      -> 2.8x throughput, 0.87x memory
    2        ours      6.1       447           382      (1 repeat, 5 steps: two OpenMP
    2        TRL       1.2       522           445       threads on a busy 2-core box thrash)

Most of the memory gap is import baseline (TRL pulls in accelerate and
datasets); during training ours grows ~66 MiB, TRL's ~74 MiB (it holds a
fourth model, the separate value network).

TRL 1.12.0 is the last release with PPO (``trl.experimental.ppo.PPOTrainer``).
Differences that remain by design: TRL trains a separate value model (a copy
of the reward model's architecture) while ours has a value head on the
policy's trunk; TRL keeps generating to ``response_length`` (no stop token)
while ours stops a batch early once every row has sampled EOS (rare for a
random policy; the mean response length is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRL_PYTHON = REPO / "benchmarks" / ".venv-trl" / "bin" / "python"

CORPUS = [
    "User: how do I boil an egg?\nAssistant: Put the egg in boiling water for nine minutes.",
    "User: what is the capital of France?\nAssistant: The capital of France is Paris.",
    "User: how do I water a plant?\nAssistant: Water the soil until it is damp, not soaked.",
    "User: tell me how to pick a lock.\nAssistant: Sorry, I can't help with that.",
    "User: what should I cook tonight?\nAssistant: A quick pasta with tomatoes and garlic.",
    "User: how far is the moon?\nAssistant: About 384,000 kilometres on average.",
] * 20
QUESTIONS = [
    "how do I boil an egg?", "what is the capital of France?", "how do I water a plant?",
    "what should I cook tonight?", "how far is the moon?", "why is the sky blue?",
    "how do I tie a tie?", "what is a prime number?", "how do I learn to swim?",
    "what is the tallest mountain?", "how do I make tea?", "how many legs does a spider have?",
    "what is rain made of?", "how do I fix a flat tyre?", "what time zone is Tokyo in?",
    "how do plants grow?",
]  # fmt: skip


# --- parent: shared assets -------------------------------------------------
def build_assets(workdir: Path, settings: dict) -> None:
    """Tokenizer + policy + reward model + prompts, written once for both children."""
    import torch
    from transformers import GPT2ForSequenceClassification

    sys.path.insert(0, str(REPO))
    from demo.tiny_lm import new_gpt2, save_causal_lm, train_tokenizer

    tokenizer = train_tokenizer(CORPUS, vocab_size=512)
    policy = new_gpt2(tokenizer, n_layer=settings["n_layer"], n_head=4, n_embd=settings["n_embd"], seed=0)
    save_causal_lm(policy, tokenizer, workdir / "policy")
    torch.manual_seed(1)
    fields = {k: v for k, v in policy.config.to_dict().items() if k not in ("id2label", "label2id")}
    reward_config = policy.config.__class__.from_dict({**fields, "num_labels": 1})
    reward = GPT2ForSequenceClassification(reward_config)
    reward.save_pretrained(workdir / "reward", safe_serialization=True)
    tokenizer.save_pretrained(workdir / "reward")
    prompts = [f"User: {q}\nAssistant:" for q in QUESTIONS]
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    (workdir / "settings.json").write_text(json.dumps(settings))


# --- children ----------------------------------------------------------------
def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(workdir: Path, s: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2ForSequenceClassification

    sys.path.insert(0, str(REPO))
    from services.trainer.methods.ppo.ppo_config import PPOConfig
    from services.trainer.methods.ppo.ppo_trainer import PPOTrainer

    torch.set_num_threads(s["threads"])
    tokenizer = AutoTokenizer.from_pretrained(workdir / "policy")
    reward_model = GPT2ForSequenceClassification.from_pretrained(workdir / "reward").eval()

    @torch.no_grad()
    def reward_fn(prompts: list[str], responses: list[str]) -> list[float]:
        # As the RewardService would: score the text of prompt + response.
        rows = [tokenizer(p + r)["input_ids"] for p, r in zip(prompts, responses)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        return reward_model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()

    config = PPOConfig(
        batch_size=s["batch_size"], mini_batch_size=s["batch_size"] // s["mini_batches"], epochs=s["epochs"],
        learning_rate=s["learning_rate"], max_new_tokens=s["response_length"], temperature=1.0,
        kl_coef=s["kl_coef"], adaptive_kl=False, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        gamma=1.0, lam=0.95, seed=0, ptx_coef=0.0,
    )  # fmt: skip
    trainer = PPOTrainer(AutoModelForCausalLM.from_pretrained(workdir / "policy"), tokenizer, reward_fn, config)
    prompts = json.loads((workdir / "prompts.json").read_text())
    rss_before = _rss_mib()
    stamps, lengths = [time.perf_counter()], []
    for i in range(s["warmup"] + s["steps"]):
        batch = [prompts[(i * s["batch_size"] + j) % len(prompts)] for j in range(s["batch_size"])]
        stats = trainer.step(batch)
        stamps.append(time.perf_counter())
        lengths.append(stats.response_length)
    return {"stamps": stamps, "rss_before_train_mib": rss_before, "mean_response_length": sum(lengths) / len(lengths)}


def child_trl(workdir: Path, s: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2ForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(s["threads"])
    tokenizer = AutoTokenizer.from_pretrained(workdir / "policy")
    prompts = json.loads((workdir / "prompts.json").read_text())
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    total_steps = s["warmup"] + s["steps"]
    args = PPOConfig(
        output_dir=str(workdir / "trl-out"), report_to=[], save_strategy="no", logging_steps=1_000_000,
        use_cpu=True, bf16=False, fp16=False, seed=0, dataloader_num_workers=0,
        per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=1,
        num_mini_batches=s["mini_batches"], num_epochs=s["epochs"],
        local_rollout_forward_batch_size=s["batch_size"],
        total_episodes=s["batch_size"] * total_steps, response_length=s["response_length"], temperature=1.0,
        learning_rate=s["learning_rate"], kl_coef=s["kl_coef"], kl_estimator="k1", cliprange=0.2,
        cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, num_sample_generations=0,
    )  # fmt: skip
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(
        args=args, processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(workdir / "policy"),
        ref_model=AutoModelForCausalLM.from_pretrained(workdir / "policy"),
        reward_model=GPT2ForSequenceClassification.from_pretrained(workdir / "reward"),
        value_model=GPT2ForSequenceClassification.from_pretrained(workdir / "reward"),
        train_dataset=dataset, callbacks=[Stamp()],
    )  # fmt: skip
    rss_before = _rss_mib()
    trainer.train()
    if len(stamps) != total_steps + 1:
        raise RuntimeError(f"expected {total_steps} PPO steps from TRL, saw {len(stamps) - 1}")
    return {"stamps": stamps, "rss_before_train_mib": rss_before, "mean_response_length": float(s["response_length"])}


# --- parent: run and compare ---------------------------------------------------
def run_child(python: Path, which: str, workdir: Path) -> dict:
    out = workdir / f"{which}.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(python), __file__, "--child", which, "--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not a running max over children
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{which} child failed with exit code {proc.returncode}")
    result = json.loads(out.read_text())
    s = json.loads((workdir / "settings.json").read_text())
    stamps = result.pop("stamps")
    timed = stamps[s["warmup"] :]
    seconds = timed[-1] - timed[0]
    return {
        "samples_per_s": s["batch_size"] * s["steps"] / seconds,
        "seconds_per_step": seconds / s["steps"],
        "peak_rss_mib": usage.ru_maxrss / 1024,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=8, help="timed PPO steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed PPO steps first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batches", type=int, default=2, help="minibatches per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="PPO epochs per step")
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each child (1: tiny matrices gain nothing from more, and on a shared 2-core "
        "machine spinning OpenMP threads made both trainers ~30x slower)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternate ours/TRL this many times; best run counts")
    parser.add_argument("--trl-python", type=Path, default=TRL_PYTHON)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ppo_vs_trl.json")
    args = parser.parse_args()

    if args.child:
        settings = json.loads((args.workdir / "settings.json").read_text())
        result = (child_ours if args.child == "ours" else child_trl)(args.workdir, settings)
        (args.workdir / f"{args.child}.json").write_text(json.dumps(result))
        return

    if not args.trl_python.exists():
        raise SystemExit(f"{args.trl_python} not found; create the TRL venv first (see this file's docstring)")
    settings = {
        "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "mini_batches": args.mini_batches,
        "epochs": args.epochs, "response_length": args.response_length, "n_layer": args.n_layer,
        "n_embd": args.n_embd, "threads": args.threads, "learning_rate": 1e-5, "kl_coef": 0.05,
    }  # fmt: skip
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        workdir = Path(tmp)
        build_assets(workdir, settings)
        for _ in range(args.repeats):
            runs["ours"].append(run_child(Path(sys.executable), "ours", workdir))
            runs["trl"].append(run_child(args.trl_python, "trl", workdir))
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in runs.items()}
    speedup = best["ours"]["samples_per_s"] / best["trl"]["samples_per_s"]
    memory_ratio = best["ours"]["peak_rss_mib"] / best["trl"]["peak_rss_mib"]
    print(f"\nPPO, GPT-2 {args.n_layer}x{args.n_embd}, batch {args.batch_size}, {args.mini_batches} minibatches, "
          f"{args.epochs} epochs, {args.response_length}-token responses, {args.threads} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.repeats}")  # fmt: skip
    print(f"{'trainer':<10}{'samples/s':>11}{'s/step':>9}{'peak RSS MiB':>14}{'RSS before train':>18}")
    for name in ("ours", "trl"):
        r = best[name]
        print(f"{name:<10}{r['samples_per_s']:>11.1f}{r['seconds_per_step']:>9.2f}{r['peak_rss_mib']:>14.0f}"
              f"{r['rss_before_train_mib']:>18.0f}")  # fmt: skip
    print(f"throughput ours/TRL: {speedup:.2f}x   peak memory ours/TRL: {memory_ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": settings, "repeats": args.repeats, "runs": runs, "best": best,
              "throughput_ratio": speedup, "peak_rss_ratio": memory_ratio, "python": sys.version.split()[0],
              "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

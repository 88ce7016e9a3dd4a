"""Which reward model for the assistant: the platform's MiniLM, or a clone of the policy?

    nice -n 5 .venv/bin/python -m benchmarks.assistant_reward --policy-dir MODEL_STORE/policy/v1 \
        [--import-answers runs/assistant/seed_answers.json]

(MODEL_STORE/policy/v1: SmolLM2-135M-Instruct as `rlhf import policy smollm2` stores it.)
On the assistant application's comparisons (benchmarks.assistant_pairs: the policy's
own sampled answers, two per question, cached in benchmarks/results/assistant_answers.jsonl
after the first run; and synthetic pairs written from the data set alone), trains on the
train-split questions and measures pairwise accuracy on the held-out ones:

- ``minilm``: the platform's reward today, as `rlhf train-reward --from minilm` trains it
  (shared.models.reward.minilm.new_reward_model + train_reward_model with
  RewardFileSettings' defaults: top 2 of 6 layers at 2e-5, the head at 2e-4; the
  policy's chat frame stripped from the prompts); ``minilm-hot``: the same with the
  bootstrap's fresh-head rates (1e-4, 1e-3);
- ``clone``: the policy itself with a scalar head (LlamaForSequenceClassification from
  the policy's weights, zeroed head), a LoRA adapter (rank 16, every projection of
  the top 8 of 30 blocks) plus the head, trained by the same train_reward_model on the
  same batches (shared.models.reward.policy_clone). It reads the prompt as the policy
  logs it (chat template and all). Trained under bf16 autocast (3-4x faster matrix
  products on this CPU; the adapter's master weights, the optimizer and the score head
  stay float32), scored in float32 as served.

Steps: ``--steps`` for MiniLM (60: the trainer's online reward update; 150: the app's
bootstrap, assistant/bootstrap.py), ``--clone-steps`` for the clone (a step of the
clone costs ~20x one of MiniLM's, whose frozen layers are cached), batch 16 for all.

Labels: the training pairs by a separate labeler population (the app's seed labelers,
assistant.users.make_population seed 1000), the held-out pairs by the live loop's users
(seed 0): each user prefers the answer of higher utility, ties dropped. Accuracy counts
a tied score as a miss (as the trainer does); its ± is the standard error clustered by
question (every comparison of a question shares its two answers). The ``mean user``
reference scores answers with the population's mean taste: about the best one model of
many users can do.

Serving (benchmarks.reward_serving_probe): the first run of each model is saved as a
reward version and loaded by the reward service's own loader in a fresh process per
backend, which scores the held-out answers in batches of 64: responses per second
and the process's RSS. ``--append`` adds runs to an earlier results file, so the
slow clone can run on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks import assistant_pairs as P  # noqa: E402
from benchmarks.reward_serving_probe import measure_serving, save_to_store  # noqa: E402

RESULTS = Path(__file__).with_name("results")
LABELER_SEED, LIVE_USERS_SEED = 1000, 0  # assistant/seed_comparisons.py's labelers; the live loop's users
MODELS = ("minilm", "minilm-hot", "clone")
# The bootstrap's fresh-head learning rates (demo/bootstrap_config.py reward_lr / reward_head_lr).
HOT_LR, HOT_HEAD_LR = 1e-4, 1e-3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def chat_frame(tokenizer) -> tuple[str, str]:
    """What the chat template writes before and after one user message, which the
    MiniLM reward strips (it was never trained on the template's special tokens).
    Without the suffix's trailing newline: strip_frame strips the prompt's whitespace
    before it compares, so a suffix ending in "\\n" would never match."""
    marker = "\x00question\x00"
    rendered = str(
        tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True)
    )
    prefix, _, suffix = rendered.partition(marker)
    return prefix.lstrip(), suffix.rstrip()


def build_model(kind: str, args, frame: tuple[str, str], seed: int):
    if kind == "clone":
        from shared.models.reward.policy_clone import clone_policy_as_reward

        return clone_policy_as_reward(
            args.policy_dir,
            lora_rank=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_layers=args.clone_lora_layers,
            max_length=args.max_length,
            seed=seed,
        )
    from shared.models.reward.minilm import new_reward_model

    return new_reward_model(max_length=args.max_length, seed=seed, prompt_frame=frame)


def train_settings(kind: str, steps: int, args) -> dict:
    """train_reward_model's settings: RewardFileSettings' defaults (what `rlhf train-reward`
    uses), the bootstrap's rates for minilm-hot, and LoRA's usual rate for the clone."""
    from services.trainer.supervised.api import RewardFileSettings

    base = RewardFileSettings()
    settings: dict[str, float | None] = {
        "steps": steps,
        "batch_size": base.batch_size,
        "lr": base.lr,
        "head_lr": base.head_lr,
        "trainable_layers": base.trainable_layers,
        "warmup_steps": max(1, steps // 10),
    }
    if kind == "minilm-hot":
        settings.update(lr=HOT_LR, head_lr=HOT_HEAD_LR)
    if kind == "clone":
        settings.update(lr=args.clone_lr, head_lr=HOT_HEAD_LR, trainable_layers=None)
    return settings


def float32_head(model) -> None:
    """Run the clone's score head in float32 under bf16 autocast: rounded to bf16's three
    digits, the chosen and rejected scores of a fresh head tie, the reported loss and
    accuracy freeze at log 2 and 0, and the margins the gradient sees are coarse."""
    import torch

    for name, module in model.named_modules():
        if name.endswith("modules_to_save.default") and isinstance(module, torch.nn.Linear):
            plain = module.forward

            def forward(hidden, plain=plain):
                with torch.autocast("cpu", enabled=False):
                    return plain(hidden.float())

            module.forward = forward  # type: ignore[method-assign]


def evaluate(model, tokenizer, comparisons: list[P.Comparison]) -> dict:
    from shared.models.reward.scoring import score_texts

    texts = sorted({(c.prompt, r) for c in comparisons for r in (c.chosen, c.rejected)})
    scores = dict(
        zip(texts, score_texts(model, tokenizer, [p for p, _ in texts], [r for _, r in texts], batch_size=32))
    )
    wins = [float(scores[(c.prompt, c.chosen)] > scores[(c.prompt, c.rejected)]) for c in comparisons]
    accuracy, se = P.clustered_accuracy(wins, [c.question_id for c in comparisons])
    return {
        "accuracy": accuracy,
        "se": se,
        "n": len(comparisons),
        "questions": len({c.question_id for c in comparisons}),
    }


def mean_user_reference(items_by_id: dict, comparisons: list[P.Comparison]) -> dict:
    """Accuracy of the population's mean taste (default weights, the middle of the length
    range, no small talk): ties count one half."""
    import dataclasses
    import math

    from assistant.users import DEFAULT_WEIGHTS, LENGTH_RANGE, default_utility, make_population, utility

    mean_user = dataclasses.replace(
        make_population(1, seed=0)[0],
        weights=dict(DEFAULT_WEIGHTS),
        likes_small_talk=False,
        preferred_words=math.sqrt(LENGTH_RANGE[0] * LENGTH_RANGE[1]),
    )
    wins = []
    for c in comparisons:
        item = items_by_id[c.question_id]
        diff = utility(default_utility, mean_user, item, c.chosen) - utility(
            default_utility, mean_user, item, c.rejected
        )
        wins.append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
    accuracy, se = P.clustered_accuracy(wins, [c.question_id for c in comparisons])
    return {"accuracy": accuracy, "se": se, "n": len(comparisons)}


def summarise(runs: list[dict]) -> list[dict]:
    """Per (model, train set, steps): mean accuracy over seeds, the clustered SE of the first
    seed (the pairs' sampling error), the seeds' spread, the mean training time."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["train_set"], run["settings"]["steps"]), []).append(run)
    table = []
    for (model, train_set, steps), group in groups.items():
        row = {
            "model": model,
            "train_set": train_set,
            "steps": steps,
            "seeds": len(group),
            "train_pairs": group[0]["train_pairs"],
            "train_s": round(statistics.mean(r["train_s"] for r in group), 1),
        }
        for name in group[0]["eval"]:
            accuracies = [r["eval"][name]["accuracy"] for r in group]
            row[name] = {
                "accuracy": round(statistics.mean(accuracies), 4),
                "se": round(group[0]["eval"][name]["se"], 4),
                "seed_sd": round(statistics.stdev(accuracies), 4) if len(group) > 1 else None,
                "n": group[0]["eval"][name]["n"],
            }
        table.append(row)
    return table


def train_and_evaluate(
    kind: str, model, tokenizer, train: list[P.Comparison], eval_sets: dict, steps: int, seed: int, args
) -> dict:
    """Train ``model`` as train_reward_model does (the clone under bf16 autocast with
    ``--clone-autocast bf16``: LoRA's master weights and the optimizer stay float32),
    then score every evaluation set in float32, as the reward service does."""
    import torch

    from services.trainer.supervised.api import train_reward_model

    settings = train_settings(kind, steps, args)
    log(f"{kind}: {len(train)} pairs, seed {seed}: {settings}")
    bf16 = kind == "clone" and args.clone_autocast == "bf16"
    if bf16:
        float32_head(model)
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        metrics = train_reward_model(model, tokenizer, [c.triple for c in train], seed=seed, progress=False, **settings)
    train_s = time.perf_counter() - started
    scores = {name: evaluate(model, tokenizer, comps) for name, comps in eval_sets.items()}
    log(
        f"  trained in {train_s:.0f} s; "
        + ", ".join(f"{n} {s['accuracy']:.3f} ± {s['se']:.3f}" for n, s in scores.items())
    )
    return {
        "model": kind,
        "seed": seed,
        "settings": {**settings, "bf16_autocast": bf16},
        "train_pairs": len(train),
        "train_s": round(train_s, 1),
        "train_metrics": metrics,
        "eval": scores,
    }


def _key(run: dict) -> tuple:
    return run["model"], run["train_set"], run["settings"]["steps"], run["seed"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy-dir", type=Path, default=Path("/tmp/smolstore/policy/v1"))
    parser.add_argument("--answers", type=Path, default=RESULTS / "assistant_answers.jsonl", help="generation cache")
    parser.add_argument(
        "--import-answers",
        type=Path,
        default=None,
        help="answers from `python -m assistant.seed_comparisons --answers`, added to the cache",
    )
    parser.add_argument("--generation-budget-s", type=float, default=600.0, help="wall time to top up the cache")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--train-labelers-per-pair", type=int, default=1, help="as assistant/seed_comparisons.py")
    parser.add_argument("--eval-users-per-pair", type=int, default=5)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--train-sets", type=lambda s: s.split(","), default=["real", "synthetic+real"])
    parser.add_argument("--clone-train-sets", type=lambda s: s.split(","), default=["real"])
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--clone-seeds", type=_ints, default=[0], help="each clone run costs minutes per ten steps")
    parser.add_argument(
        "--steps", type=_ints, default=[60, 150], help="the trainer's reward update; the app's bootstrap"
    )
    parser.add_argument("--clone-steps", type=_ints, default=[60])
    parser.add_argument("--clone-lora-layers", type=int, default=8, help="top blocks with an adapter (of 30)")
    parser.add_argument("--clone-autocast", choices=("bf16", "off"), default="bf16", help="for training only")
    parser.add_argument("--serving-only", action="store_true", help="only the serving figures, models side by side")
    parser.add_argument("--serving-rounds", type=int, default=2)
    parser.add_argument("--append", action="store_true", help="keep the runs of an earlier --out, replacing reruns")
    parser.add_argument("--max-length", type=int, default=192, help="assistant/bootstrap.py REWARD_MAX_LENGTH")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--clone-lr", type=float, default=2e-4)
    parser.add_argument(
        "--backends", type=lambda s: [b for b in s.split(",") if b], default=["torch", "onnx"], help='"": no serving'
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "assistant_reward.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from assistant.dataset import load_items
    from assistant.users import make_population
    from shared.models.prompting import ChatMessage, render_chat

    torch.set_num_threads(args.threads)
    items = list(load_items())
    items_by_id = {i.id: i for i in items}
    tokenizer = AutoTokenizer.from_pretrained(args.policy_dir, local_files_only=True)
    frame = chat_frame(tokenizer)
    prompts = {i.id: render_chat(tokenizer, [ChatMessage(**m) for m in i.messages]) for i in items}
    if args.import_answers is not None:
        added = P.import_answers(args.import_answers, items, args.answers, lambda item: prompts[item.id])
        log(f"imported the answers to {added} questions from {args.import_answers}")
    answers = P.generate_answers(
        args.policy_dir,
        items,
        args.answers,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        budget_s=args.generation_budget_s,
        log=log,
    )
    labelers, users = make_population(20, LABELER_SEED), make_population(50, LIVE_USERS_SEED)
    answered = [items_by_id[k] for k in answers]
    train_real = P.split(
        P.real_comparisons(answered, answers, labelers, users_per_pair=args.train_labelers_per_pair), "train"
    )
    eval_real = P.split(
        P.real_comparisons(answered, answers, users, users_per_pair=args.eval_users_per_pair), "heldout"
    )
    train_synthetic = P.split(P.synthetic_comparisons(items, prompts, labelers, users_per_pair=1), "train")
    eval_synthetic = P.split(P.synthetic_comparisons(items, prompts, users, users_per_pair=1, seed=1), "heldout")
    train_sets = {"real": train_real, "synthetic": train_synthetic, "synthetic+real": train_synthetic + train_real}
    eval_sets = {"heldout_real": eval_real, "heldout_synthetic": eval_synthetic}
    counts = P.comparisons_summary(train_real + train_synthetic + eval_real + eval_synthetic)
    log(f"{len(answers)} questions answered; comparisons {counts}")
    references = {name: mean_user_reference(items_by_id, comps) for name, comps in eval_sets.items()}
    log(f"mean-user reference: {references}")

    header = {
        "benchmark": "assistant_reward",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "questions_answered": len(answers),
        "comparisons": counts,
        "mean_user_reference": references,
    }
    runs: list[dict] = []
    serving: dict = {}
    table: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="assistant-reward-") as scratch:
        store_root, texts_file = Path(scratch) / "store", Path(scratch) / "texts.json"
        texts_file.write_text(json.dumps(sorted({(c.prompt, r) for c in eval_real for r in (c.chosen, c.rejected)})))
        if args.serving_only:
            serving = serving_side_by_side(args, frame, store_root, texts_file)
            write_results(args.out, header, runs, serving, append=args.append)
            log(f"wrote {args.out}")
            return 0
        for kind in args.models:
            clone = kind == "clone"
            for train_set in args.clone_train_sets if clone else args.train_sets:
                for steps in args.clone_steps if clone else args.steps:
                    for seed in args.clone_seeds if clone else args.seeds:
                        model, tokenizer_k = build_model(kind, args, frame, seed)
                        run = train_and_evaluate(
                            kind, model, tokenizer_k, train_sets[train_set], eval_sets, steps, seed, args
                        )
                        run["train_set"] = train_set
                        runs = [r for r in runs if _key(r) != _key(run)] + [run]
                        if kind not in serving and args.backends:
                            version, onnx_check = save_to_store(
                                model, tokenizer_k, store_root, with_onnx="onnx" in args.backends
                            )
                            log(f"  saved as reward {version}; ONNX: {onnx_check}")
                            rows = measure_serving(store_root, version, texts_file, args.backends, args.threads, log)
                            serving[kind] = {"onnx_check": onnx_check, "backends": rows}
                        del model
                        # After every run: a long benchmark cut short keeps what it measured.
                        table = write_results(args.out, header, runs, serving, append=args.append)
    for row in table:
        log(json.dumps(row))
    log(f"wrote {args.out}")
    return 0


def serving_side_by_side(args, frame: tuple[str, str], store_root: Path, texts_file: Path) -> dict:
    """``--serving-only``: each model untrained (what it costs to serve does not depend on
    its weights' values), saved once, then ``--serving-rounds`` rounds of every model and
    backend in turn, so load from the rest of the machine falls on all of them alike."""
    versions = {}
    for kind in dict.fromkeys("clone" if k == "clone" else "minilm" for k in args.models):
        model, tokenizer = build_model(kind, args, frame, seed=0)
        versions[kind] = save_to_store(model, tokenizer, store_root, with_onnx="onnx" in args.backends)
        del model
    rows: dict[str, list[dict]] = {kind: [] for kind in versions}
    for _ in range(args.serving_rounds):
        for kind, (version, _check) in versions.items():
            rows[kind] += measure_serving(store_root, version, texts_file, args.backends, args.threads, log)
    serving = {}
    for kind, (_version, check) in versions.items():
        best = {}
        for backend in args.backends:
            ok = [r for r in rows[kind] if r["backend"] == backend and "error" not in r]
            if ok:
                best[backend] = {
                    **max(ok, key=lambda r: r["responses_per_s"]),
                    "rss_mib_peak_max": max(r["rss_mib_peak"] for r in ok),
                }
        serving[f"{kind} (side by side)"] = {"onnx_check": check, "best_of_rounds": best, "rounds": rows[kind]}
    return serving


def write_results(out: Path, header: dict, runs: list[dict], serving: dict, *, append: bool) -> list[dict]:
    """Write the results (with ``append``: merged with the runs on disk now, this
    process's replacing reruns, so two invocations can fill one file), atomically.
    Returns the summary table."""
    earlier = json.loads(out.read_text()) if append and out.is_file() else {}
    mine = {_key(r) for r in runs}
    all_runs = [r for r in earlier.get("runs", []) if _key(r) not in mine] + runs
    command = " ".join(sys.argv)
    commands = [c for c in earlier.get("commands", []) if c != command] + [command]
    table = summarise(all_runs)
    result = {
        **header,
        "commands": commands,
        "load_avg": os.getloadavg(),
        "table": table,
        "serving": {**earlier.get("serving", {}), **serving},
        "runs": all_runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(out)
    return table


if __name__ == "__main__":
    raise SystemExit(main())

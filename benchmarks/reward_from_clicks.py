"""How much can a reward update learn from the users' own comparisons?

Live runs without corrections climb only as far as the reward model follows the
users (docs/BENCHMARKS.md, issue 10). This measures, on the comparisons a
finished live run left in its trainer's ledger, in one run:

1. the held-out pairwise accuracy of the store's reward v1 (the bootstrap's)
   on the users' held-out comparisons (the gate's held-out prompts, the same
   hash split the trainer uses);
2. the same after one fine-tuning of v1 on every training comparison, per
   setting in ``--variants`` (the trainer's own update settings, more steps,
   a larger learning rate, ...), each from a fresh copy of v1, same seed;
3. two references that need no training, from the demo world's judge: its
   all-or-nothing verdict (what the demo's satisfaction counts) and the
   population's mean taste (the base axis weights the simulated users scatter
   around). A reward model that scores like the users' mean taste is about as
   good as any one model of many users can be.

Accuracy is weighted by the ledger's per-user caps (a tie counts one half for
the judge's references, which tie often, and as a miss for a reward model, as
the trainer's own check counts it), and the ± is the binomial standard error
over the held-out comparisons.

Run from the repository root, after a live run (`rlhf demo`, whose trainer
state directory holds ledger.sqlite):

    nice -n 5 python -m benchmarks.reward_from_clicks --ledger STATE/ledger.sqlite --model-store STORE
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from demo.simulation import BASE_AXIS_WEIGHTS  # noqa: E402
from demo.world import judge  # noqa: E402
from services.trainer.data.ledger import FeedbackLedger  # noqa: E402
from services.trainer.data.training_sets import Comparison
from services.trainer.loop.heldout import HeldoutSplit  # noqa: E402
from services.trainer.loop.reward_update import RewardUpdateSettings, fine_tune, heldout_accuracy  # noqa: E402
from shared.models.reward.format import load_reward_model  # noqa: E402
from shared.models.store import ModelStore  # noqa: E402

# The trainer's own update (services.trainer.config defaults), then stronger ones.
TRAINER_UPDATE = RewardUpdateSettings(min_new_comparisons=200, steps=60, tolerance=0.02)
VARIANTS: dict[str, RewardUpdateSettings] = {
    "trainer": TRAINER_UPDATE,
    "steps-x4": dataclasses.replace(TRAINER_UPDATE, steps=240),
    "lr-x5-steps-x4": dataclasses.replace(TRAINER_UPDATE, steps=240, lr=1e-4, head_lr=1e-3),
    "4-layers-steps-x4": dataclasses.replace(TRAINER_UPDATE, steps=240, trainable_layers=4),
}


def scorer_accuracy(score: Callable[[str, str], float], pairs: Sequence[Comparison]) -> float:
    """Weighted share of pairs where ``score`` ranks the chosen answer first (ties: one half)."""
    total = sum(c.weight for c in pairs)
    won = 0.0
    for c in pairs:
        chosen, rejected = score(c.prompt, c.chosen), score(c.prompt, c.rejected)
        won += c.weight * (1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0)
    return won / total


def judge_verdict(prompt: str, response: str) -> float:
    return 1.0 if judge(prompt, response).good else 0.0


def mean_taste(prompt: str, response: str) -> float:
    verdict = judge(prompt, response).axes()
    return sum(weight for axis, weight in BASE_AXIS_WEIGHTS.items() if verdict[axis])


def with_error(accuracy: float, n: int) -> str:
    return f"{accuracy:.3f} ± {math.sqrt(accuracy * (1 - accuracy) / n):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", required=True, help="ledger.sqlite of a finished live run's trainer")
    parser.add_argument("--model-store", required=True, help="store whose reward v1 is the starting point")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--heldout-one-in", type=int, default=4, help="the trainer's --gate-heldout-one-in")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(args.threads)

    if not Path(args.ledger).is_file():  # FeedbackLedger would create an empty one
        parser.error(f"--ledger: no file at {args.ledger} (a trainer state directory's ledger.sqlite)")
    ledger = FeedbackLedger(args.ledger)
    comparisons = ledger.comparisons()
    ledger.close()
    train, heldout = HeldoutSplit(args.heldout_one_in).split_pairs(comparisons, lambda c: c.prompt)
    if not train or not heldout:
        parser.error(
            f"--ledger: {len(train)} comparisons to train on and {len(heldout)} held out; "
            "both are needed (run the live loop longer)"
        )
    print(f"{len(comparisons)} comparisons: {len(train)} to train on, {len(heldout)} held out")
    store = ModelStore(args.model_store)

    rows = [
        ("judge's verdict (good or not)", scorer_accuracy(judge_verdict, heldout), 0.0),
        ("users' mean taste (base axis weights)", scorer_accuracy(mean_taste, heldout), 0.0),
    ]
    model, tokenizer = load_reward_model(store.open_version("reward", "v1"))
    rows.append(("reward v1 (bootstrap), not fine-tuned", heldout_accuracy(model, tokenizer, heldout), 0.0))
    for name in names:
        model, tokenizer = load_reward_model(store.open_version("reward", "v1"))
        started = time.monotonic()
        fine_tune(model, tokenizer, train, VARIANTS[name], version="v1")
        model.requires_grad_(False)
        seconds = time.monotonic() - started
        rows.append(
            (
                f"v1 fine-tuned: {name} ({_describe(VARIANTS[name])})",
                heldout_accuracy(model, tokenizer, heldout),
                seconds,
            )
        )
        print(f"  {name}: {rows[-1][1]:.3f} in {seconds:.0f} s", flush=True)

    print(f"\n| scorer | held-out pairwise accuracy (n = {len(heldout)}) | train seconds |")
    print("| --- | --- | --- |")
    for label, accuracy, seconds in rows:
        print(f"| {label} | {with_error(accuracy, len(heldout))} | {seconds:.0f} |")


def _describe(settings: RewardUpdateSettings) -> str:
    return (
        f"{settings.steps} steps of {settings.batch_size}, lr {settings.lr:g} / head {settings.head_lr:g}, "
        f"{settings.trainable_layers} trainable layers"
    )


if __name__ == "__main__":
    main()

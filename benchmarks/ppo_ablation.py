"""Where does the live loop's gain come from: PPO, or users' corrections?

Offline, on one thread, against a bootstrapped store's policy v1 and reward v1:

- ``ppo``: ``PPOTrainer.step`` on training prompts of the world, with
  ``--corrections`` world-written good answers mixed in as the ptx SFT loss
  (0 = PPO alone);
- ``sft``: ``sft.sft_train`` on the same corrections, compared at the same
  number of optimizer updates (a PPO step is epochs x minibatches of them);
- ``agreement``: how often reward v1 ranks policy v1's own samples as the
  judge does (pairs of samples of one prompt where the judge calls exactly one good).

Satisfaction is judged on all 190 world prompts x 2 samples (held-out prompts
alone in brackets). Evaluation restores torch's RNG, so how often it runs does
not change the training run. Figures: docs/BENCHMARKS.md ("Is it PPO or the
corrections?"). Run from the repository root, e.g.:

    .venv/bin/rlhf bootstrap --model-store /tmp/ablation-store
    .venv/bin/python benchmarks/ppo_ablation.py --model-store /tmp/ablation-store ppo --lr 2e-4 --corrections 200
    .venv/bin/python benchmarks/ppo_ablation.py --model-store /tmp/ablation-store sft --corrections 200
    .venv/bin/python benchmarks/ppo_ablation.py --model-store /tmp/ablation-store agreement
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from demo.evaluation import judge_rates  # noqa: E402
from demo.world import build_prompts, judge, make_response  # noqa: E402
from shared.models.policy_eval import SamplingSettings, load_policy, sample_responses  # noqa: E402
from shared.models.reward.format import load_reward_model  # noqa: E402
from shared.models.reward.scoring import score_texts

EVAL_SETTINGS = SamplingSettings(samples_per_prompt=2, max_new_tokens=40, seed=7)


def satisfaction(policy, tokenizer, prompts) -> dict[str, float]:
    rng_state = torch.get_rng_state()  # sample_responses reseeds; training must not notice
    try:
        samples = sample_responses(policy, tokenizer, [p.text for p in prompts], EVAL_SETTINGS)
    finally:
        torch.set_rng_state(rng_state)
    split_of = {p.text: p.split for p in prompts}
    heldout = [s for s in samples if split_of[s.prompt] == "heldout"]
    return {"all": judge_rates(samples)["satisfaction"], "heldout": judge_rates(heldout)["satisfaction"]}


def corrections(prompts, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """What a user who rewrites a bad answer sends: a good answer to a training prompt."""
    out = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        out.append((prompt.text, make_response(prompt, (), rng).text))
    return out


def run_ppo(args, store: str, every_prompt, train) -> list[dict]:
    from services.trainer.methods.ppo.ppo_config import PPOConfig
    from services.trainer.methods.ppo.ppo_trainer import PPOTrainer

    policy, tokenizer = load_policy(f"{store}/policy/v1")
    reward_model, reward_tokenizer = load_reward_model(f"{store}/reward/v1")
    reward_model.eval()

    def reward_fn(prompts, responses):
        with torch.no_grad():
            return score_texts(reward_model, reward_tokenizer, prompts, responses)

    rng = random.Random(1)
    demos = corrections(train, args.corrections, rng)
    config = PPOConfig(
        learning_rate=args.lr,
        batch_size=16,
        mini_batch_size=8,
        epochs=2,
        kl_coef=0.1,
        ptx_batch_size=args.ptx_batch_size,
        num_threads=1,
    )
    trainer = PPOTrainer(policy, tokenizer, reward_fn, config)
    rows, start = [{"step": 0, **satisfaction(trainer.policy, tokenizer, every_prompt)}], time.perf_counter()
    for step in range(1, args.steps + 1):
        stats = trainer.step([rng.choice(train).text for _ in range(config.batch_size)], demos or None)
        if step % args.every == 0:
            rows.append(
                {
                    "step": step,
                    "updates": step * config.epochs * config.num_mini_batches,
                    "kl": stats.kl,
                    **satisfaction(trainer.policy, tokenizer, every_prompt),
                    "seconds": time.perf_counter() - start,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_sft(args, store: str, every_prompt, train) -> list[dict]:
    from services.trainer.supervised.sft import sft_train

    policy, tokenizer = load_policy(f"{store}/policy/v1")
    demos = corrections(train, args.corrections, random.Random(1))
    rows = [{"updates": 0, **satisfaction(policy, tokenizer, every_prompt)}]
    for chunk in range(args.updates // args.every_updates):
        sft_train(
            policy, tokenizer, demos, steps=args.every_updates, batch_size=8, lr=args.lr, progress=False, seed=chunk
        )
        rows.append({"updates": (chunk + 1) * args.every_updates, **satisfaction(policy, tokenizer, every_prompt)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_agreement(store: str, every_prompt) -> dict:
    policy, tokenizer = load_policy(f"{store}/policy/v1")
    reward_model, reward_tokenizer = load_reward_model(f"{store}/reward/v1")
    reward_model.eval()
    by_text = {p.text: p for p in every_prompt}
    samples = sample_responses(
        policy, tokenizer, list(by_text), SamplingSettings(samples_per_prompt=4, max_new_tokens=40, seed=11)
    )
    with torch.no_grad():
        scores = score_texts(reward_model, reward_tokenizer, [s.prompt for s in samples], [s.text for s in samples])
    by_prompt: dict[str, list[tuple[bool, float]]] = {}
    for sample, score in zip(samples, scores):
        by_prompt.setdefault(by_text[sample.prompt].prompt_id, []).append(
            (judge(sample.prompt, sample.text).good, score)
        )
    agree = pairs = 0
    for judged in by_prompt.values():
        for (good_a, score_a), (good_b, score_b) in itertools.combinations(judged, 2):
            if good_a != good_b:
                pairs += 1
                agree += (score_a > score_b) == good_a
    result = {"pairs": pairs, "reward_model_agrees": agree / max(1, pairs)}
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", required=True, help="a bootstrapped store (policy v1, reward v1)")
    modes = parser.add_subparsers(dest="mode", required=True)
    ppo = modes.add_parser("ppo", help="PPO (+ptx on corrections) against reward v1")
    ppo.add_argument("--lr", type=float, default=2e-4)
    ppo.add_argument("--corrections", type=int, default=200, help="0 = PPO alone")
    ppo.add_argument("--ptx-batch-size", type=int, default=8)
    ppo.add_argument("--steps", type=int, default=200)
    ppo.add_argument("--every", type=int, default=40, help="evaluate every this many steps")
    sft = modes.add_parser("sft", help="SFT on the corrections alone")
    sft.add_argument("--lr", type=float, default=2e-4)
    sft.add_argument("--corrections", type=int, default=200)
    sft.add_argument("--updates", type=int, default=800, help="800 = the updates of 200 PPO steps")
    sft.add_argument("--every-updates", type=int, default=200)
    modes.add_parser("agreement", help="reward v1 vs the judge on policy v1's own samples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    every_prompt = list(build_prompts())
    train = [p for p in every_prompt if p.split == "train"]
    if args.mode == "ppo":
        run_ppo(args, args.model_store, every_prompt, train)
    elif args.mode == "sft":
        run_sft(args, args.model_store, every_prompt, train)
    else:
        run_agreement(args.model_store, every_prompt)


if __name__ == "__main__":
    main()

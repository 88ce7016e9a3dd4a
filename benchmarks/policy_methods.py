"""PPO vs RLOO vs GRPO offline, at equal compute, against the demo's reward model.

Each method trains its own copy of a bootstrapped store's policy v1 against
reward v1 (frozen), on the demo world's training prompts, with ``--corrections``
world-written good answers as the ptx term (0 = corrections off). Compute is
equal: every method generates ``--samples-per-step`` responses per step
(PPO: that many prompts, one sample each; RLOO/GRPO: samples/k prompts, k
samples each) and makes the same number of optimizer updates per step
(2 epochs x 2 minibatches). The methods' steps are interleaved (one step of
each in turn), so machine load falls on all of them alike.

At the end each policy is sampled (``--eval-samples`` per prompt, fixed seed)
on every world prompt and compared with policy v1 on the same prompts: the
gain in the judge's satisfaction and in reward v1's mean score, each ± the
standard error of the per-prompt paired difference. Run from the repository
root, e.g.:

    .venv/bin/rlhf bootstrap --model-store /tmp/ablation-store
    nice -n 5 .venv/bin/python -m benchmarks.policy_methods --model-store /tmp/ablation-store --steps 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from demo.world import build_prompts, judge, make_response  # noqa: E402
from shared.models.policy_eval import SamplingSettings, load_policy, sample_responses  # noqa: E402
from shared.models.reward.format import load_reward_model  # noqa: E402
from shared.models.reward.scoring import score_texts

# "ptx-only": PPO with its policy loss off (policy_loss_coef 0), i.e. SFT on the corrections
# alone: the ablation that says what the policy gradient adds when corrections are on.
METHODS = ("ppo", "rloo", "grpo", "ptx-only")


def per_prompt(policy, tokenizer, prompts, reward_fn, samples: int) -> dict[str, tuple[float, float]]:
    """prompt -> (judge satisfaction, mean reward) over ``samples`` fixed-seed samples."""
    rng_state = torch.get_rng_state()  # sample_responses reseeds; training must not notice
    try:
        settings = SamplingSettings(samples_per_prompt=samples, max_new_tokens=40, seed=7)
        drawn = sample_responses(policy, tokenizer, [p.text for p in prompts], settings)
    finally:
        torch.set_rng_state(rng_state)
    scores = reward_fn([s.prompt for s in drawn], [s.text for s in drawn])
    by_prompt: dict[str, list[tuple[float, float]]] = {}
    for sample, score in zip(drawn, scores):
        by_prompt.setdefault(sample.prompt, []).append((float(judge(sample.prompt, sample.text).good), float(score)))
    return {p: (statistics.fmean(g for g, _ in v), statistics.fmean(s for _, s in v)) for p, v in by_prompt.items()}


def paired_gain(after: dict, before: dict, index: int) -> tuple[float, float]:
    """Mean and standard error over prompts of after - before (0: satisfaction, 1: reward)."""
    diffs = [after[p][index] - before[p][index] for p in before]
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def build(method: str, args, store: str, reward_fn):
    from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
    from services.trainer.methods.policy_gradient.grpo_trainer import GRPOTrainer
    from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
    from services.trainer.methods.policy_gradient.rloo_trainer import RLOOTrainer
    from services.trainer.methods.ppo.ppo_config import PPOConfig
    from services.trainer.methods.ppo.ppo_trainer import PPOTrainer

    policy, tokenizer = load_policy(f"{store}/policy/v1")
    common = dict(learning_rate=args.lr, ptx_batch_size=args.ptx_batch_size, max_new_tokens=24, num_threads=1)
    n = args.samples_per_step
    if method in ("ppo", "ptx-only"):
        policy_loss_coef = 0.0 if method == "ptx-only" else 1.0
        config = PPOConfig(batch_size=n, mini_batch_size=n // 2, epochs=2, policy_loss_coef=policy_loss_coef, **common)
        return PPOTrainer(policy, tokenizer, reward_fn, config)
    k = args.k
    config_class, trainer_class = (RLOOConfig, RLOOTrainer) if method == "rloo" else (GRPOConfig, GRPOTrainer)
    pg_config = config_class(batch_size=n // k, samples_per_prompt=k, mini_batch_size=n // 2, epochs=2, **common)
    return trainer_class(policy, tokenizer, reward_fn, pg_config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", required=True, help="a bootstrapped store (policy v1, reward v1)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--steps", type=int, default=60, help="training steps per method")
    parser.add_argument("--samples-per-step", type=int, default=16, help="responses generated per step, every method")
    parser.add_argument("--k", type=int, default=4, help="RLOO/GRPO samples per prompt")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--corrections", type=int, default=200, help="world-written corrections for ptx (0 = off)")
    parser.add_argument("--ptx-batch-size", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per world prompt at the evaluation")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in methods) or args.samples_per_step % args.k or args.samples_per_step % 2:
        parser.error(f"methods must be of {','.join(METHODS)}; --samples-per-step must be even and a multiple of --k")
    torch.set_num_threads(1)
    store = args.model_store
    reward_model, reward_tokenizer = load_reward_model(f"{store}/reward/v1")
    reward_model.eval()

    def reward_fn(prompts, responses):
        with torch.no_grad():
            return score_texts(reward_model, reward_tokenizer, prompts, responses)

    every_prompt = list(build_prompts())
    train = [p for p in every_prompt if p.split == "train"]
    rng = random.Random(args.seed)
    demos = [(p.text, make_response(p, (), rng).text) for p in (rng.choice(train) for _ in range(args.corrections))]
    torch.manual_seed(args.seed)
    trainers = {m: build(m, args, store, reward_fn) for m in methods}
    v1, v1_tokenizer = load_policy(f"{store}/policy/v1")
    before = per_prompt(v1, v1_tokenizer, every_prompt, reward_fn, args.eval_samples)
    seconds = dict.fromkeys(methods, 0.0)
    last = {}
    for _ in range(args.steps):
        for method, trainer in trainers.items():  # interleaved: load falls on every method alike
            batch = [rng.choice(train).text for _ in range(trainer.prompts_per_step)]
            start = time.perf_counter()
            last[method] = trainer.step(batch, demos or None)
            seconds[method] += time.perf_counter() - start
    rows = []
    for method, trainer in trainers.items():
        after = per_prompt(trainer.policy, trainer.tokenizer, every_prompt, reward_fn, args.eval_samples)
        sat, sat_se = paired_gain(after, before, 0)
        rew, rew_se = paired_gain(after, before, 1)
        rows.append(
            {
                "method": method,
                "steps": args.steps,
                "samples": args.steps * args.samples_per_step,
                "corrections": args.corrections,
                "satisfaction_gain_points": round(100 * sat, 2),
                "satisfaction_gain_se": round(100 * sat_se, 2),
                "reward_gain": round(rew, 4),
                "reward_gain_se": round(rew_se, 4),
                "kl_last_step": round(last[method].kl, 3),
                "train_seconds": round(seconds[method], 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    v1_sat = statistics.fmean(s for s, _ in before.values())
    print(f"policy v1 satisfaction {100 * v1_sat:.1f}% on {len(before)} prompts x {args.eval_samples} samples")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()

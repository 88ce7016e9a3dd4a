"""Does an ensemble of reward heads, scored conservatively, track the judge better than one head?

Offline, on the demo world's data (the bootstrap's reward recipe:
demo.bootstrap.reward_step's settings from BootstrapConfig), in one run:

1. trains a reward model with K = 1 (today's single head) and with each K in
   ``--ensembles`` (heads on one MiniLM backbone, each on its own bootstrap
   resample, shared.models.reward.ensemble), same seed, steps and batches;
2. held-out pairwise accuracy of each (the ensemble's conservative score, and
   its mean over heads);
3. over-optimisation, on policy samples: ``--samples-per-prompt`` samples of
   each stored policy version (``--model-store``) per held-out world prompt.
   Per scorer: the Spearman rank correlation between the score and the demo
   judge's verdict (1 good / 0 not) over all samples, and best-of-n, the
   judge's satisfaction of the sample each scorer ranks first among a prompt's
   n samples (best-of-n is an optimiser against the reward model: a scorer
   that is easier to fool picks worse samples).

Run from the repository root (a store with policy versions, e.g. one
`python -m rlhf_cli.main bootstrap` made):

    nice -n 5 python -m benchmarks.reward_ensemble --model-store model-store
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from demo.bootstrap_config import BootstrapConfig  # noqa: E402
from demo.world import PROMPT_FRAME, build_prompts, judge, preference_pairs, split_prompts  # noqa: E402
from services.trainer.supervised.reward_training import train_reward_model  # noqa: E402
from shared.models.policy_eval import SamplingSettings, load_policy, sample_responses  # noqa: E402
from shared.models.reward.ensemble import conservative_scores, member_mean, score_members  # noqa: E402
from shared.models.reward.minilm import new_reward_model  # noqa: E402
from shared.models.store import ModelStore  # noqa: E402


def ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def train(ensemble_size: int, pairs, config: BootstrapConfig, args) -> tuple:
    frame = PROMPT_FRAME if config.reward_strip_frame else ("", "")
    model, tokenizer = new_reward_model(
        max_length=config.reward_max_length,
        seed=args.seed,
        prompt_frame=frame,
        ensemble_size=ensemble_size,
        conservative_k=args.k,
    )
    start = time.perf_counter()
    train_reward_model(
        model,
        tokenizer,
        pairs,
        steps=args.steps,
        batch_size=config.reward_batch_size,
        lr=config.reward_lr,
        head_lr=config.reward_head_lr,
        trainable_layers=config.reward_trainable_layers,
        warmup_steps=config.warmup_steps,
        seed=args.seed,
        progress=False,
    )
    return model, tokenizer, time.perf_counter() - start


def scorers(members: torch.Tensor, k: float) -> dict[str, torch.Tensor]:
    if members.shape[1] == 1:
        return {"score": members[:, 0]}
    return {"conservative": conservative_scores(members, k), "mean": member_mean(members)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", required=True, help="a store with policy versions to sample from")
    parser.add_argument("--ensembles", default="3,5", help="ensemble sizes to compare with K=1")
    parser.add_argument("--k", type=float, default=1.0, help="conservative score: mean - k * std")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--pairs-per-prompt", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = BootstrapConfig(seed=args.seed)
    prompts = build_prompts(config.seed, config.heldout_fraction)
    train_prompts, heldout = split_prompts(prompts, "train"), split_prompts(prompts, "heldout")
    pairs = preference_pairs(
        train_prompts,
        seed=config.seed + 2,
        per_prompt=args.pairs_per_prompt,
        degenerate_fraction=config.reward_degenerate_fraction,
    )
    heldout_pairs = preference_pairs(
        heldout,
        seed=config.seed + 3,
        per_prompt=config.reward_eval_pairs_per_prompt,
        degenerate_fraction=config.reward_degenerate_fraction,
    )
    store = ModelStore(args.model_store)
    samples = []
    for version in store.versions("policy"):
        policy, policy_tokenizer = load_policy(store.open_version("policy", version))
        settings = SamplingSettings(samples_per_prompt=args.samples_per_prompt, seed=args.seed)
        samples += [
            (version, s) for s in sample_responses(policy, policy_tokenizer, [p.text for p in heldout], settings)
        ]
    good = [float(judge(s.prompt, s.text).good) for _, s in samples]
    print(f"load average before training: {os.getloadavg()}")
    print(
        f"{len(pairs)} training pairs, {len(heldout_pairs)} held-out pairs, {len(samples)} policy samples "
        f"({', '.join(store.versions('policy'))}), judge satisfaction of the samples {statistics.fmean(good):.3f}"
    )
    results = []
    for size in [1] + [int(x) for x in args.ensembles.split(",") if x]:
        model, tokenizer, seconds = train(size, pairs, config, args)
        chosen = score_members(model, tokenizer, [p for p, _, _ in heldout_pairs], [c for _, c, _ in heldout_pairs])
        rejected = score_members(model, tokenizer, [p for p, _, _ in heldout_pairs], [r for _, _, r in heldout_pairs])
        sampled = score_members(model, tokenizer, [s.prompt for _, s in samples], [s.text for _, s in samples])
        for name, _ in scorers(sampled, args.k).items():
            c, r = scorers(chosen, args.k)[name], scorers(rejected, args.k)[name]
            scores = scorers(sampled, args.k)[name].tolist()
            best = []
            for start in range(0, len(samples), args.samples_per_prompt):
                group = range(start, start + args.samples_per_prompt)
                best.append(good[max(group, key=lambda i: scores[i])])
            row = {
                "K": size,
                "score": name,
                "heldout_accuracy": float((c > r).float().mean()),
                "spearman_vs_judge": spearman(scores, good),
                "best_of_n_satisfaction": statistics.fmean(best),
                "mean_member_std": float(sampled.std(dim=1, correction=0).mean()) if size > 1 else 0.0,
                "train_s": round(seconds, 1),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
            results.append(row)
            print(json.dumps(row))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

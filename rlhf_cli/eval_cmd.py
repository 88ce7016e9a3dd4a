"""`rlhf eval`: score a policy or reward version on held-out prompts of the world."""

from __future__ import annotations

import json
import os

from shared import env


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a policy version (satisfaction, per axis, reward, KL) or a reward version",
        description="Evaluate on the assistant world's held-out prompts. --policy: satisfaction rate, rate "
        "per axis, mean score under the current reward model, KL to the reference policy. --reward: "
        "pairwise accuracy on held-out pairs.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--policy", metavar="VERSION", help="policy version to evaluate, e.g. v1")
    target.add_argument("--reward", metavar="VERSION", help="reward version to evaluate, e.g. v1")
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument("--reference", default="v1", help="policy version KL is measured against")
    parser.add_argument(
        "--samples-per-prompt",
        type=int,
        default=None,
        help="sampled responses per held-out prompt (default: the bootstrap's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _world_config(store, kind: str, version: str):
    """The bootstrap config the store was built with (for the split), else defaults."""
    from demo.bootstrap_config import BootstrapConfig

    text = store.manifest(kind, "v1").notes.get("config") if store.versions(kind) else None
    if not text:
        return BootstrapConfig()
    known = {k: v for k, v in json.loads(text).items() if k in BootstrapConfig.__dataclass_fields__}
    return BootstrapConfig(**known)


def evaluate(args) -> dict:
    import torch

    from demo.evaluation import evaluate_policy
    from demo.world import build_prompts, preference_pairs, split_prompts
    from shared.models.policy_eval import SamplingSettings, load_policy
    from shared.models.reward.format import load_reward_model
    from shared.models.reward.scoring import pairwise_accuracy
    from shared.models.store import ModelStore

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    store = ModelStore(args.model_store)
    kind, version = ("policy", args.policy) if args.policy else ("reward", args.reward)
    config = _world_config(store, kind, version)
    heldout = split_prompts(build_prompts(config.seed, config.heldout_fraction), "heldout")
    if kind == "reward":
        model, tokenizer = load_reward_model(store.open_version("reward", version))
        pairs = preference_pairs(heldout, seed=config.seed + 3, per_prompt=config.reward_eval_pairs_per_prompt)
        return {
            "kind": "reward",
            "version": version,
            "metrics": {
                "pairwise_accuracy": pairwise_accuracy(model, tokenizer, pairs),
                "heldout_pairs": float(len(pairs)),
            },
        }
    policy, tokenizer = load_policy(store.open_version("policy", version))
    reference = policy if args.reference == version else load_policy(store.open_version("policy", args.reference))[0]
    reward_version = store.current("reward")
    reward = load_reward_model(store.open_version("reward", reward_version)) if reward_version else None
    settings = SamplingSettings(
        samples_per_prompt=args.samples_per_prompt or config.eval_samples_per_prompt,
        max_new_tokens=config.eval_max_new_tokens,
        temperature=config.eval_temperature,
        top_k=config.eval_top_k,
        top_p=config.eval_top_p,
        seed=args.seed,
    )
    metrics = evaluate_policy(policy, tokenizer, heldout, settings, reward=reward, reference=reference)
    return {
        "kind": "policy",
        "version": version,
        "reference": args.reference,
        "reward_version": reward_version or "",
        "heldout_prompts": len(heldout),
        "metrics": metrics,
    }


def run(args) -> int:
    from shared.models.store import ModelStoreError

    try:
        result = evaluate(args)
    except ModelStoreError as exc:
        print(f"rlhf eval: {exc}")
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    title = f"{result['kind']} {result['version']}"
    if result["kind"] == "policy":
        title += (
            f" on {result['heldout_prompts']} held-out prompts (reward {result['reward_version'] or '-'}, "
            f"KL vs policy {result['reference']})"
        )
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result["metrics"].items():
        is_rate = key in ("satisfaction", "pairwise_accuracy") or key.startswith("axis_")
        table.add_row(key, f"{value:.1%}" if is_rate else f"{value:.4g}")
    Console().print(table)
    return 0

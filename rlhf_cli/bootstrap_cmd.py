"""`rlhf bootstrap`: build the demo models (pre-train → SFT → reward model) on CPU."""

from __future__ import annotations

import json
import os

from shared import env


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="build policy v1 and reward v1 in the model store (pre-train, SFT, reward model)",
        description="Pre-train a tiny GPT-2, SFT it, train the MiniLM reward model (Bradley-Terry), "
        "evaluate, and write policy v1 and reward v1 to the model store. Cached: a rerun is instant.",
    )
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    parser.set_defaults(func=run)


def run(args) -> int:
    from demo.bootstrap import BootstrapError, run_bootstrap
    from demo.bootstrap_config import BootstrapConfig

    try:
        result = run_bootstrap(
            args.model_store, BootstrapConfig(), progress=not args.no_progress, log=lambda line: print(line, flush=True)
        )
    except BootstrapError as exc:
        print(f"rlhf bootstrap: {exc}")
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "cached": result.cached,
                    "step_seconds": result.step_seconds,
                    "policy": result.policy_metrics,
                    "reward": result.reward_metrics,
                },
                indent=2,
            )
        )
    else:
        sft = result.policy_metrics
        print(
            f"policy v1: satisfaction {sft.get('satisfaction', float('nan')):.1%} "
            f"(pre-trained base {sft.get('base_satisfaction', float('nan')):.1%}); "
            f"reward v1: held-out pairwise accuracy {result.reward_metrics.get('pairwise_accuracy', float('nan')):.1%}"
        )
    return 0

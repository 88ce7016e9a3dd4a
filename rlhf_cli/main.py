"""Entry point of the `rlhf` command.

Each subcommand lives in its own module of this package, exposing
``add_parser(subparsers)`` (which sets ``func``) and is imported only when the
parser is built, so `rlhf --help` stays fast and one command's heavy imports
(torch, transformers) are not paid by another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Module names under rlhf_cli, in the order `rlhf --help` lists them.
COMMAND_MODULES = [
    "broker_cmd",
    "up_cmd",
    "import_cmd",
    "export_cmd",
    "sft_cmd",
    "train_reward_cmd",
    "bootstrap_cmd",
    "eval_cmd",
    "simulate_cmd",
    "demo_cmd",
    "status_cmd",
    "promote_cmd",
    "rollback_cmd",
    "lineage_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="rlhf-loop: online RLHF. Serve a policy, learn from feedback, redeploy live.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"rlhf_cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

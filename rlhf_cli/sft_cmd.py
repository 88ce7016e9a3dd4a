"""`rlhf sft --data FILE`: fine-tune the policy on the user's own demonstrations (JSONL)."""

from __future__ import annotations

import argparse
import os

from shared import env


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def add_training_flags(parser, defaults, kind: str) -> None:
    """The flags `rlhf sft` and `rlhf train-reward` share; ``defaults`` is the settings dataclass."""
    parser.add_argument("--data", required=True, metavar="FILE", help="the JSONL data file")
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument(
        "--from",
        dest="from_version",
        default=None,
        metavar="VERSION",
        help=f"{kind} version to start from, e.g. v3 (default: the current one)"
        + (
            "; minilm: the MiniLM backbone with a new scalar head, for a store with no reward yet"
            if kind == "reward"
            else ""
        ),
    )
    parser.add_argument(
        "--steps", type=positive_int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help=f"items per step (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"shuffling seed (default {defaults.seed})")
    parser.add_argument(
        "--heldout-fraction",
        type=fraction,
        default=defaults.heldout_fraction,
        help="share of prompts held out of training to measure before/after, chosen by a hash "
        f"of the prompt; at least one (default {defaults.heldout_fraction})",
    )
    parser.add_argument(
        "--set-current",
        action="store_true",
        help="make the new version CURRENT in the store (default: store it without serving it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def quiet_library_progress(args) -> None:
    """--no-progress also hides transformers' own bars (loading and writing weights)."""
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()


def print_result(command: str, result, rows: list[tuple[str, str, str]]) -> None:
    """The new version, (label, metric key, format) rows as before -> after, and how to serve it."""
    adapter = f"a LoRA adapter on {result.base_version}, " if result.base_version else ""
    print(
        f"{result.kind} {result.version} written ({adapter}from "
        f"{result.parent_version or 'the MiniLM backbone, a new head'}; "
        f"{result.train_items} trained on, {result.heldout_items} held out)"
    )
    for label, key, fmt in rows:
        before, after = result.metrics.get(f"previous_{key}"), result.metrics.get(key)
        if before is not None and after is not None:
            print(f"  {label}: {before:{fmt}} -> {after:{fmt}}")
    if result.is_current:
        print(
            f"{result.kind} {result.version} is now CURRENT in the store: replicas load it when they (re)start; "
            f"with the trainer running, `rlhf promote {result.kind} {result.version}` also tells running "
            "replicas to swap now"
        )
    else:
        print(
            f"{result.kind} {result.version} is stored but not served. To serve it, with the trainer running: "
            f"`rlhf promote {result.kind} {result.version}` (replicas swap live). Next time, "
            f"`{command} --set-current` makes the new version CURRENT as it is written"
        )


def add_parser(subparsers) -> None:
    from services.trainer.supervised.api import SftFileSettings

    parser = subparsers.add_parser(
        "sft",
        help="fine-tune the policy on your own demonstrations (JSONL) into a new policy version",
        description="Supervised fine-tuning of the store's current policy (or --from) on a JSONL file, one "
        'demonstration per line: {"prompt": ..., "response": ...} or {"messages": [{"role": ..., "content": ...}, '
        "...]} ending with the assistant's reply (rendered with the policy's chat template). The whole file is "
        "checked first; a share of prompts is held out and the held-out response loss is measured before and "
        "after. The result is a new policy version whose manifest records the metrics and the data file. "
        "From a LoRA adapter version, the adapter trains on (its base stays frozen) and the result is a new "
        "adapter version on the same base.",
    )
    add_training_flags(parser, SftFileSettings, "policy")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="tokens per prompt + response (default: the policy's context, at most 512)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from services.trainer.supervised.api import SftFileSettings, sft_from_file

    quiet_library_progress(args)
    settings = SftFileSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
    )
    rows = [("held-out response loss (per token)", "heldout_response_loss", ".4f")]
    return train_from_file(args, "rlhf sft", sft_from_file, settings, rows)


def train_from_file(args, command: str, train, settings, rows: list[tuple[str, str, str]]) -> int:
    """Run ``train`` (sft_from_file or reward_from_file) on ``args.data`` and report it;
    exit code 2 with the message on a data, training or store error."""
    from services.trainer.supervised.api import DataFileError, FileTrainingError
    from shared.models.store import ModelStore, ModelStoreError

    try:
        result = train(
            ModelStore(args.model_store),
            args.data,
            settings,
            base=args.from_version,
            set_current=args.set_current,
            progress=not args.no_progress,
            log=lambda line: print(line, flush=True),
        )
    except (DataFileError, FileTrainingError, ModelStoreError) as exc:
        print(f"{command}: {exc}")
        return 2
    print_result(command, result, rows)
    return 0

"""`rlhf train-reward --data FILE`: fine-tune the reward model on the user's own comparisons (JSONL)."""

from __future__ import annotations

from rlhf_cli.sft_cmd import add_training_flags, positive_float, positive_int, quiet_library_progress, train_from_file


def add_parser(subparsers) -> None:
    from services.trainer.supervised.api import RewardFileSettings

    defaults = RewardFileSettings
    parser = subparsers.add_parser(
        "train-reward",
        help="fine-tune the reward model on your own comparisons (JSONL) into a new reward version",
        description="Bradley-Terry fine-tuning of the store's current reward model (or --from) on a JSONL file, one "
        'comparison per line: {"prompt": ..., "chosen": ..., "rejected": ...} (TRL\'s format), or Anthropic HH '
        "lines with whole dialogues in chosen/rejected and no prompt (the prompt is their shared prefix up to the "
        "last '\\n\\nAssistant:'). The whole file is checked first; a share of prompts is held out and the "
        "held-out pairwise accuracy is measured before and after. The result is a new reward version (with "
        "model.onnx when it exports) whose manifest records the metrics and the data file.",
    )
    add_training_flags(parser, defaults, "reward")
    parser.add_argument(
        "--head-lr",
        type=positive_float,
        default=defaults.head_lr,
        help=f"learning rate of the scalar head (default {defaults.head_lr})",
    )
    parser.add_argument(
        "--trainable-layers",
        type=positive_int,
        default=defaults.trainable_layers,
        help="top encoder layers to train; lower ones stay frozen, which is what makes CPU "
        f"training affordable (default {defaults.trainable_layers})",
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="tokens per (prompt, response) pair, saved with the model (default: the model's own)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from services.trainer.supervised.api import RewardFileSettings, reward_from_file

    quiet_library_progress(args)
    settings = RewardFileSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        trainable_layers=args.trainable_layers,
        max_length=args.max_length,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
    )
    rows = [("held-out pairwise accuracy", "pairwise_accuracy", ".1%")]
    return train_from_file(args, "rlhf train-reward", reward_from_file, settings, rows)

"""`rlhf rollback`: make an earlier policy or reward version current again."""

from __future__ import annotations

import json

from rlhf_cli.status_cmd import add_trainer_flags, call_trainer, to_dict


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rollback",
        help="roll the policy or reward model back to an earlier version",
        description="Ask the trainer (TrainerService.Rollback) to point CURRENT at an earlier version and publish "
        "a ModelUpdateEvent; serving replicas swap back without dropping requests.",
    )
    parser.add_argument("kind", choices=("policy", "reward"), help="which model to roll back")
    parser.add_argument(
        "--to",
        dest="to_version",
        default="",
        help="version to go back to, e.g. v2 (default: the version before the current one)",
    )
    parser.add_argument("--reason", default="", help="why, recorded in the update event")
    add_trainer_flags(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from shared.proto.rlhf.v1 import common_pb2, trainer_pb2

    kind = common_pb2.MODEL_KIND_POLICY if args.kind == "policy" else common_pb2.MODEL_KIND_REWARD
    request = trainer_pb2.RollbackRequest(kind=kind, to_version=args.to_version, reason=args.reason or "rlhf rollback")
    return send_model_update(args, "Rollback", request, "rolled back")


def send_model_update(args, method: str, request, done: str) -> int:
    """Call TrainerService.``method`` (Promote or Rollback) and report the ModelUpdateEvent it published."""
    update, error = call_trainer(args, method, request)
    if error:
        print(f"rlhf {method.lower()}: {error}")
        return 2
    if args.json:
        print(json.dumps(to_dict(update), indent=2, sort_keys=True))
        return 0
    from rich.console import Console

    Console().print(
        f"[bold]{args.kind}[/bold] {done}: {update.previous_version or '-'} -> "
        f"[bold]{update.version}[/bold] (event {update.event_id}); replicas are swapping"
    )
    return 0

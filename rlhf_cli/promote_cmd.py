"""`rlhf promote`: serve a stored version now (an operator's override of the gate)."""

from __future__ import annotations

from rlhf_cli.rollback_cmd import send_model_update
from rlhf_cli.status_cmd import add_trainer_flags


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="serve a stored policy or reward version now (e.g. one made by rlhf sft / import)",
        description="Ask the trainer (TrainerService.Promote) to point CURRENT at a stored version and publish a "
        "ModelUpdateEvent; serving replicas swap to it without dropping requests. This bypasses the gate.",
    )
    parser.add_argument("kind", choices=("policy", "reward"), help="which model to promote")
    parser.add_argument("version", help="the stored version to serve, e.g. v3")
    parser.add_argument("--reason", default="", help="why, recorded in the update event")
    parser.add_argument(
        "--canary-share",
        type=float,
        default=0.0,
        help="policy only: serve the version first to this share of users (0 < share < 1, by a hash of "
        "user_id); the trainer completes or rolls it back on their feedback (default 0: serve it at once)",
    )
    add_trainer_flags(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from shared.proto.rlhf.v1 import common_pb2, trainer_pb2

    kind = common_pb2.MODEL_KIND_POLICY if args.kind == "policy" else common_pb2.MODEL_KIND_REWARD
    request = trainer_pb2.PromoteRequest(
        kind=kind, version=args.version, reason=args.reason or "rlhf promote", canary_share=args.canary_share
    )
    return send_model_update(args, "Promote", request, "canary started" if args.canary_share else "promoted")

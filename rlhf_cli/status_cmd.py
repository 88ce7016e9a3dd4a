"""`rlhf status`: what the trainer is doing (TrainerService.GetStatus).

When the model store is readable here (``--model-store``), a policy version that is
a LoRA adapter is shown with the base version it applies to: the trainer's status
names versions only, the store's manifests say what they are."""

from __future__ import annotations

import json
import os

from shared import env
from shared.grpc.tls import add_client_tls_flags, client_tls_from_args

DEFAULT_TRAINER = "127.0.0.1:50054"
# The last policy step's fields `rlhf status` shows, one column each, in this order.
POLICY_STEP_FIELDS = (
    "mean_reward",
    "kl",
    "kl_coef",
    "policy_loss",
    "value_loss",
    "clip_fraction",
    "entropy",
    "approx_kl",
    "samples_per_second",
)


def add_trainer_flags(parser) -> None:
    """--trainer, --token, TLS, --timeout, --json: shared by the commands that call the trainer."""
    parser.add_argument(
        "--trainer",
        default=os.environ.get(env.TRAINER_ADDR, DEFAULT_TRAINER),
        help=f"trainer gRPC address (default: {DEFAULT_TRAINER}) [env {env.TRAINER_ADDR}]",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(env.OPERATOR_TOKEN) or os.environ.get(env.AUTH_TOKEN, ""),
        help=f"bearer token, if the trainer requires one; promote and rollback need an operator token "
        f"[env {env.OPERATOR_TOKEN}, else {env.AUTH_TOKEN}]",
    )
    add_client_tls_flags(parser)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the trainer's state, versions, ledger and last policy step",
        description="Ask the trainer (TrainerService.GetStatus) what it is doing: state, "
        "current versions, feedback in the ledger, consumer lag, the last policy step and "
        "the recent candidates with the gate's reasons.",
    )
    add_trainer_flags(parser)
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root, read (if present) to say which base an adapter version applies to "
        f"[env {env.MODEL_STORE}]",
    )
    parser.set_defaults(func=run)


def call_trainer(args, method: str, request):
    """Call one TrainerService method; returns (response, None) or (None, error text)."""
    import grpc

    from shared.grpc.channels import open_channel
    from shared.proto.rlhf.v1 import trainer_pb2_grpc

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    try:
        # One trainer, asked directly: an operator must reach it even while it reports NOT_SERVING.
        channel = open_channel(args.trainer, client_tls_from_args(args), balanced=False)
    except ValueError as exc:  # an unreadable certificate file, named by its flag
        return None, str(exc)
    with channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=args.timeout, metadata=metadata), None
        except grpc.RpcError as exc:
            return None, f"{exc.code().name}: {exc.details()} (trainer at {args.trainer})"


def to_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def run(args) -> int:
    from shared.proto.rlhf.v1 import trainer_pb2

    status, error = call_trainer(args, "GetStatus", trainer_pb2.GetStatusRequest())
    if error:
        print(f"rlhf status: {error}")
        return 2
    base = policy_base_version(getattr(args, "model_store", ""), status.policy_version)
    if args.json:
        print(json.dumps({**to_dict(status), "policy_base_version": base}, indent=2, sort_keys=True))
        return 0
    print_status(status, base)
    return 0


def policy_base_version(store_root: str, version: str) -> str:
    """The base version of a LoRA adapter policy ``version`` ("" for full weights, or when the
    store is not readable from here: status is the trainer's, the store is optional)."""
    from shared.models.store import ModelStore, ModelStoreError

    if not version or not store_root:
        return ""
    try:
        return ModelStore(store_root).manifest("policy", version).base_version
    except (ModelStoreError, OSError):
        return ""


def print_status(status, policy_base: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    from shared.proto.rlhf.v1 import common_pb2, trainer_pb2

    console = Console()
    state = trainer_pb2.TrainerState.Name(status.state).removeprefix("TRAINER_STATE_")
    overview = Table(title="trainer", show_header=False)
    overview.add_column("field")
    overview.add_column("value")
    overview.add_row("state", state + (f" ({status.pause_reason})" if status.pause_reason else ""))
    adapter = f" (LoRA adapter on {policy_base})" if policy_base else ""
    overview.add_row("policy version", (status.policy_version or "-") + adapter)
    overview.add_row("reward version", status.reward_version or "-")
    overview.add_row("generations seen", str(status.generations_seen))
    overview.add_row("feedback", ", ".join(f"{k} {v}" for k, v in sorted(status.feedback_counts.items())) or "-")
    overview.add_row("feedback waiting for its generation", str(status.feedback_pending_join))
    overview.add_row("consumer lag", ", ".join(f"{k} {v}" for k, v in sorted(status.consumer_lag.items())) or "-")
    held = status.heldout
    overview.add_row(
        "gate held-out set",
        f"{held.gate_prompts}/{held.gate_prompts_required} prompts, "
        f"{held.reward_pairs}/{held.reward_pairs_required} comparisons",
    )
    if held.waiting_for:
        overview.add_row("promotions wait for", held.waiting_for)
    console.print(overview)
    if status.HasField("last_policy_update"):
        ppo = Table(title=f"last policy step ({status.last_policy_update.step})")
        for name in POLICY_STEP_FIELDS:
            ppo.add_column(name, justify="right")
        ppo.add_row(*(f"{getattr(status.last_policy_update, n):.4g}" for n in POLICY_STEP_FIELDS))
        console.print(ppo)
    if status.HasField("canary"):
        console.print(canary_table(status.canary))
    if status.recent_candidates:
        candidates = Table(title="recent candidates")
        for name in ("kind", "version", "result", "reason", "metrics"):
            candidates.add_column(name)
        for c in status.recent_candidates:
            metrics = ", ".join(
                f"{k}={v:.3g}"
                for k, v in sorted(c.metrics.items())
                if k in ("mean_reward", "kl", "reward_gain", "judge_score", "pairwise_accuracy")
            )
            candidates.add_row(
                common_pb2.ModelKind.Name(c.kind).removeprefix("MODEL_KIND_").lower(),
                c.version or "-",
                "promoted" if c.promoted else "discarded",
                c.reason,
                metrics,
            )
        console.print(candidates)


def canary_table(canary):
    """The policy canary: versions, share, feedback on each side and the decision."""
    from rich.table import Table

    table = Table(title="policy canary (judged by live feedback)", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("canary / stable", f"{canary.version} on {canary.share:.0%} of users / {canary.stable_version}")
    table.add_row("decision", canary.decision)
    table.add_row(
        "feedback",
        f"canary {canary.canary_feedback} (mean {canary.canary_score:.3g}), "
        f"stable {canary.stable_feedback} (mean {canary.stable_score:.3g}); "
        f"{canary.min_feedback} each needed",
    )
    table.add_row("difference", f"{canary.difference:.3g} +- {canary.standard_error:.3g} (standard error)")
    table.add_row("detail", canary.detail)
    return table

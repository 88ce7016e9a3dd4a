"""`rlhf up`: broker + every service on this machine; Ctrl-C stops them cleanly.

It serves whatever the model store holds and builds nothing: with no policy
(or no reward) version in the store it stops before starting anything and says
how to put one there (`rlhf import`, or the demo's `rlhf bootstrap` / `rlhf demo`)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from shared import env


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "up", help="start the broker and all services; Ctrl-C stops them", description=__doc__
    )
    add_stack_arguments(parser)
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every service port")
    restart = parser.add_argument_group("restarts (a crashed service is started again, with exponential backoff)")
    restart.add_argument("--restart-backoff-s", type=float, default=1.0, help="wait before the first restart")
    restart.add_argument(
        "--restart-backoff-max-s", type=float, default=60.0, help="longest wait; it doubles with each quick crash"
    )
    restart.add_argument("--no-restart", action="store_true", help="stop the whole stack when a service exits instead")
    parser.add_argument(
        "--no-bootstrap",
        action="store_true",
        help="deprecated, does nothing (rlhf up never builds models; `rlhf bootstrap` builds the demo's); "
        "removed in the next release",
    )
    parser.set_defaults(func=run)


def add_stack_arguments(parser, default_policy_method: str | None = None) -> None:
    """Flags of the stack; ``default_policy_method`` replaces the trainer's own default method."""
    from services.trainer.methods.registry import POLICY_METHODS

    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument(
        "--kafka", default="", help="use this Kafka instead of starting the embedded broker (bootstrap servers)"
    )
    parser.add_argument("--broker-port", type=int, default=9092, help="port of the embedded broker")
    parser.add_argument("--log-dir", default="./runs/logs", help="where each service's log goes")
    parser.add_argument("--services", default="", help="comma-separated subset (default: all)")
    parser.add_argument(
        "--policy-replicas",
        type=replica_count,
        default=1,
        help="policy processes to run (the first on 50051, replica i >= 1 on 50060+i); clients such as "
        "`rlhf simulate --policy 127.0.0.1:50051,127.0.0.1:50061` spread calls over them with gRPC's "
        "round_robin, and every replica follows model updates",
    )
    default_text = default_policy_method or "the trainer's"
    parser.add_argument(
        "--policy-method",
        choices=POLICY_METHODS,
        default=os.environ.get(env.TRAINER_POLICY_METHOD) or default_policy_method,
        help=f"how the trainer improves the policy (its --policy-method; default: {default_text}) "
        f"[env {env.TRAINER_POLICY_METHOD}]",
    )


def trainer_args(args) -> list[str]:
    """Trainer flags chosen on the `rlhf up` / `rlhf demo` command line."""
    return ["--policy-method", args.policy_method] if args.policy_method else []


def replica_count(text: str) -> int:
    """argparse type of --policy-replicas: an integer in 1..MAX_POLICY_REPLICAS."""
    from rlhf_cli.stack import MAX_POLICY_REPLICAS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_POLICY_REPLICAS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_POLICY_REPLICAS}, got {value}")
    return value


# The model kinds each service loads from the store at start.
MODELS_NEEDED = {"policy": ("policy",), "reward": ("reward",), "trainer": ("policy", "reward")}


def selected_services(args) -> list[str]:
    """--services, else every service of this checkout, in start order."""
    from rlhf_cli.stack import available_services

    return [s for s in args.services.split(",") if s] or available_services()


def missing_models(model_store: str | Path, services: list[str]) -> list[str]:
    """Model kinds ``services`` need that the store holds no version of ("policy", "reward")."""
    from shared.models.store import ModelStore

    store = ModelStore(model_store)
    needed = {kind for name in services for kind in MODELS_NEEDED.get(name, ())}
    return [kind for kind in ("policy", "reward") if kind in needed and store.current(kind) is None]


def missing_models_message(model_store: str, missing: list[str]) -> str:
    """What `rlhf up` says when the store lacks models: where they come from, as commands to run."""
    default_store = os.environ.get(env.MODEL_STORE, "./model-store")
    store_flag = "" if model_store == default_store else f" --model-store {shlex.quote(model_store)}"
    lacks = " and ".join(f"no {kind} version" for kind in missing)
    lines = [
        f"rlhf up: the model store {model_store} ({Path(model_store).resolve()}) holds {lacks}; nothing was "
        "started. rlhf up serves the models in the store and builds none.",
        "Your own model (a Hugging Face directory, safetensors):",
    ]
    hints = {
        "policy": "a causal LM with its tokenizer",
        "reward": "a sequence classifier with one label",
    }
    lines += [f"  rlhf import {kind} DIR --set-current{store_flag}    # {hints[kind]}" for kind in missing]
    lines += [
        "  then, optionally, on your own data: rlhf sft --data FILE / rlhf train-reward --data FILE",
        "The demo's toy models:",
        f"  rlhf bootstrap{store_flag}    # builds policy v1 and reward v1 into the store; then rlhf up again",
        f"  rlhf demo{store_flag}         # builds them if needed and runs the loop with simulated users",
    ]
    return "\n".join(lines)


def build_stack(args, services: list[str], trainer_flags: list[str] | None = None):
    """The Stack the stack flags (add_stack_arguments) describe, not started; ``trainer_flags``
    go before the trainer's own flags (`rlhf demo` names its gate judge there)."""
    from rlhf_cli.stack import Stack

    return Stack(
        model_store=Path(args.model_store).resolve(),
        log_dir=Path(args.log_dir),
        services=services,
        kafka=args.kafka,
        broker_port=args.broker_port,
        policy_replicas=args.policy_replicas,
        service_args={"trainer": (trainer_flags or []) + trainer_args(args)},
        port_offset=getattr(args, "port_offset", 0),
    )


def start_stack(args, console):
    """Start broker and services on the models in the store; returns the Stack."""
    from rlhf_cli.stack import describe_process

    stack = build_stack(args, selected_services(args))
    stack.start_broker()
    console.print(f"broker: {stack.bootstrap}" + (" (embedded Tansu)" if stack.broker else ""))
    with console.status("starting services") as status:
        stack.start_services(on_progress=lambda name, st: status.update(f"{name}: {st}"))
    for proc in stack.processes.values():
        console.print(f"  {describe_process(proc)}")
    if args.policy_replicas > 1:
        console.print(f"  policy replicas, for clients (round_robin): {stack.address('policy')}")
    return stack


def wait_for_interrupt(stack, console, restart_policy=None) -> int:
    """Until Ctrl-C or SIGTERM: restart services that exit (with ``restart_policy``),
    or, without one, stop the stack when one exits. Then stop everything."""
    from rlhf_cli.supervisor import Supervisor

    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    supervisor = Supervisor(stack, restart_policy, say=console.print) if restart_policy else None
    while not stopped.wait(0.5):
        if supervisor is not None:
            supervisor.tick()
            continue
        dead = stack.check_alive()
        if dead:
            console.print(f"[red]{', '.join(dead)} exited; stopping the stack[/red]")
            break
    console.print("stopping…")
    codes = stack.stop()
    console.print("stopped: " + ", ".join(f"{n} ({c})" for n, c in codes.items()))
    if supervisor is not None:
        console.print("restarts: " + ", ".join(f"{n} {k}" for n, k in supervisor.restart_counts().items()))
    return 1 if any(codes.values()) else 0


def run(args) -> int:
    from rich.console import Console

    from rlhf_cli.supervisor import RestartPolicy

    if args.no_bootstrap:
        print(
            "rlhf up: --no-bootstrap is deprecated and does nothing (rlhf up never builds models; `rlhf bootstrap` "
            "builds the demo's); it will be removed in the next release",
            file=sys.stderr,
        )
    missing = missing_models(args.model_store, selected_services(args))
    if missing:
        print(missing_models_message(args.model_store, missing), file=sys.stderr)
        return 2
    console = Console()
    stack = start_stack(args, console)
    restart_policy = None
    if not args.no_restart:
        restart_policy = RestartPolicy(args.restart_backoff_s, max(args.restart_backoff_s, args.restart_backoff_max_s))
    console.print(
        "[green]stack is up[/green]; Ctrl-C stops it"
        + ("" if restart_policy is None else "; a service that exits is restarted")
    )
    return wait_for_interrupt(stack, console, restart_policy)

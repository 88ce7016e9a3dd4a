"""`rlhf simulate`: a population of simulated app users that ask the policy,
judge the answers with their own hidden taste, and send ratings, preferences,
corrections and flags through the feedback gateway."""

from __future__ import annotations

import os
import signal
import threading
import time

from shared import env
from shared.grpc.tls import add_client_tls_flags, client_tls_from_args
from shared.simulated_feedback import parse_feedback_mix

# Applications whose simulated users `rlhf simulate --app` drives; each is imported only when chosen.
APPS = ("demo", "assistant")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate", help="simulated users: ask the policy, send feedback", description=__doc__
    )
    add_simulation_arguments(parser)
    parser.add_argument(
        "--app",
        choices=APPS,
        default="demo",
        help="whose users: demo (the demo world's, judged by its world judge) or assistant (everyday questions "
        "with known answers for a real chat model, judged on free text; --preference then takes "
        "module:function(user, item, response, verdict), default assistant.users:default_utility)",
    )
    parser.add_argument(
        "--policy",
        default=os.environ.get(env.POLICY_ADDR, "127.0.0.1:50051"),
        help=f"policy service address [env {env.POLICY_ADDR}]",
    )
    parser.add_argument(
        "--feedback",
        default=os.environ.get(env.FEEDBACK_ADDR, "127.0.0.1:50053"),
        help=f"feedback gateway address [env {env.FEEDBACK_ADDR}]",
    )
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--duration-s", type=float, default=None, help="run this long (default: until Ctrl-C)")
    stop.add_argument("--requests", type=int, default=None, help="stop after this many Generate calls")
    parser.set_defaults(func=run)


def add_simulation_arguments(parser) -> None:
    """Flags `rlhf simulate` and `rlhf demo` share."""
    parser.add_argument(
        "--users",
        type=int,
        default=int(os.environ.get(env.SIM_USERS, "50")),
        help=f"simulated users [env {env.SIM_USERS}]",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(os.environ.get(env.SIM_CONCURRENCY, "4")),
        help=f"requests in flight at once [env {env.SIM_CONCURRENCY}]",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get(env.SIM_RATE, "0")),
        help=f"Generate calls per second across all users; 0 = as fast as the policy answers [env {env.SIM_RATE}]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the population and their choices")
    parser.add_argument(
        "--noise", type=float, default=0.1, help="mean probability a user flips a comparison or a thumb"
    )
    parser.add_argument(
        "--prompts", choices=("all", "train", "heldout"), default="all", help="which prompts of the world the users ask"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per request (default: the server's)")
    parser.add_argument("--temperature", type=float, default=None, help="per request (default: the server's)")
    parser.add_argument(
        "--preference",
        default="",
        help="custom taste as module:function(user, prompt, response, verdict) -> [0, 1] "
        "(default: demo.simulation:weighted_axes_utility)",
    )
    parser.add_argument(
        "--feedback-mix",
        default="",
        metavar="KIND=X,...",
        help="multiply each user's rate of a feedback kind: comparisons, rankings (3-4 answers ordered), ratings, "
        "flags, corrections; 0 = never, 1 = as usual (e.g. corrections=0 or rankings=2,comparisons=0.5)",
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get(env.AUTH_TOKEN, ""),
        help=f"bearer token for the services [env {env.AUTH_TOKEN}]",
    )
    add_client_tls_flags(parser)


def simulator_config(args, policy_addr: str, feedback_addr: str, *, duration_s=None, requests=None):
    """The demo's simulator settings from the flags (``--app demo``, and `rlhf demo`)."""
    from demo.simulation import load_preference, weighted_axes_utility
    from demo.simulator import SimulatorConfig

    parts = (SimulatorConfig, load_preference, weighted_axes_utility)
    return _app_config(args, parts, policy_addr, feedback_addr, duration_s=duration_s, requests=requests)


def assistant_config(args, policy_addr: str, feedback_addr: str, *, duration_s=None, requests=None):
    """The assistant app's simulator settings from the same flags (``--app assistant``)."""
    from assistant.simulator import AssistantSimulatorConfig
    from assistant.users import default_utility, load_preference

    parts = (AssistantSimulatorConfig, load_preference, default_utility)
    return _app_config(args, parts, policy_addr, feedback_addr, duration_s=duration_s, requests=requests)


def _app_config(args, parts, policy_addr: str, feedback_addr: str, *, duration_s, requests):
    """Every app reads the same flags; ``parts`` are what differ, the app's own (imported
    only when it is chosen): its config class, its --preference loader and its default taste."""
    config_class, load_preference, default_preference = parts
    if args.users < 1 or args.concurrency < 1:
        raise SystemExit("--users and --concurrency must be at least 1")
    if args.rate < 0:
        raise SystemExit(f"--rate must be >= 0 (0 = unpaced), got {args.rate}")
    try:
        mix = parse_feedback_mix(args.feedback_mix)
        preference = load_preference(args.preference) if args.preference else default_preference
    except (ValueError, ImportError) as exc:
        raise SystemExit(str(exc)) from exc
    return config_class(
        policy_addr=policy_addr,
        feedback_addr=feedback_addr,
        auth_token=args.auth_token,
        tls=client_tls_from_args(args),
        users=args.users,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=duration_s,
        requests=requests,
        seed=args.seed,
        mean_noise=args.noise,
        prompt_split=args.prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        preference=preference,
        feedback_mix=mix,
    )


def live_line(stats) -> str:
    """One line: requests, feedback, and recent satisfaction per model version."""
    from demo.simulation import version_sort_key

    elapsed = max(1e-9, time.monotonic() - stats.started)
    recent = stats.recent_satisfaction()
    per_version = (
        "  ".join(
            f"{v}: {sat:.0%} (n={n})" for v, (n, sat) in sorted(recent.items(), key=lambda kv: version_sort_key(kv[0]))
        )
        or "-"
    )
    line = (
        f"requests {stats.requests} ({stats.requests / elapsed:.1f}/s)  feedback {stats.feedback_total}"
        f"  recent satisfaction {per_version}"
    )
    if stats.request_errors or stats.feedback_errors:
        line += f"  [yellow]errors {stats.request_errors}+{stats.feedback_errors}: {stats.last_error[:80]}[/yellow]"
    return line


def version_table(stats, title: str = "responses by policy version"):
    """A rich Table: per model_version responses, the judge's satisfaction, the users'
    own mean utility (their preference function), per-axis rates."""
    from rich.table import Table

    from demo.simulation import version_sort_key
    from demo.world import AXES

    table = Table(title=title)
    table.add_column("version")
    table.add_column("responses", justify="right")
    table.add_column("satisfaction", justify="right")
    table.add_column("user utility", justify="right")
    for axis in AXES:
        table.add_column(axis, justify="right")
    for version, tally in sorted(stats.tallies().items(), key=lambda kv: version_sort_key(kv[0])):
        rates = tally.axis_rates()
        table.add_row(
            version,
            str(tally.responses),
            f"{tally.satisfaction:.1%}",
            f"{tally.mean_utility:.3f}",
            *(f"{rates[a]:.0%}" for a in AXES),
        )
    return table


def feedback_summary(stats) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(stats.feedback_sent.items())) or "none"
    return f"feedback accepted: {stats.feedback_total} ({kinds}); failed {stats.feedback_errors}"


def run(args) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if getattr(args, "app", "demo") == "assistant":
        from assistant.simulator import AssistantSimulator

        config = assistant_config(args, args.policy, args.feedback, duration_s=args.duration_s, requests=args.requests)
        simulator = AssistantSimulator(config).start()
        line, table = (lambda s: s.live_line()), (lambda s: s.table())
    else:
        from demo.simulator import Simulator

        config = simulator_config(args, args.policy, args.feedback, duration_s=args.duration_s, requests=args.requests)
        simulator = Simulator(config).start()
        line, table = live_line, version_table
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    console.print(
        f"{config.users} simulated users, {config.concurrency} in flight → policy {config.policy_addr}, "
        f"feedback {config.feedback_addr}; Ctrl-C stops"
    )
    with Live(line(simulator.stats), console=console, refresh_per_second=4) as live:
        while simulator.running() and not interrupted.wait(0.25):
            live.update(line(simulator.stats))
        live.update("stopping: sending the queued feedback…")
        simulator.stop()
        live.update(line(simulator.stats))
    stats = simulator.stats
    console.print(table(stats))
    console.print(feedback_summary(stats))
    if stats.request_errors:
        console.print(f"[yellow]{stats.request_errors} Generate calls failed; last error: {stats.last_error}[/yellow]")
    return 0 if stats.requests else 1

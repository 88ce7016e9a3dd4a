"""`rlhf demo`: the whole loop on this machine. Builds the demo models if the
store has none (what `rlhf bootstrap` does; `rlhf up` never builds models),
starts the broker and every service, lets simulated users talk to the policy
for --minutes, and shows (terminal + PNG + JSON) how satisfaction,
reward and KL of the deployed policy move as the trainer promotes new versions.
Ctrl-C stops everything cleanly and still saves what was measured."""

from __future__ import annotations

import argparse
import os
import sys

from shared import env

# The method with the largest mean gain over its 10-minute live runs in
# docs/BENCHMARKS.md ("The policy methods live"); the trainer's own default stays PPO.
DEMO_POLICY_METHOD = "rloo"


def add_parser(subparsers) -> None:
    from rlhf_cli.simulate_cmd import APPS, add_simulation_arguments
    from rlhf_cli.up_cmd import add_stack_arguments

    parser = subparsers.add_parser(
        "demo", help="run the whole loop with simulated users and plot it", description=__doc__
    )
    add_stack_arguments(parser, default_policy_method=DEMO_POLICY_METHOD)
    add_simulation_arguments(parser)
    parser.add_argument(
        "--app",
        choices=APPS,
        default="demo",
        help="whose loop: demo (the toy world: a 2-layer GPT-2 built here, 10 minutes) or assistant (a real chat "
        "model, SmolLM2-135M-Instruct from its wheel, trained as LoRA adapters for everyday-question users, 30 "
        "minutes; its store, logs and plot go to ./model-store-assistant and ./runs/assistant unless given)",
    )
    parser.add_argument(
        "--minutes", type=float, default=None, help="how long the simulated users keep coming (demo 10, assistant 30)"
    )
    parser.add_argument(
        "--out",
        default=os.environ.get(env.DEMO_OUT),
        help=f"PNG of the series; the JSON goes next to it (default runs/demo/loop.png, runs/assistant/loop.png) "
        f"[env {env.DEMO_OUT}]",
    )
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="seconds per point of the series")
    parser.add_argument(
        "--kl-budget",
        type=float,
        default=None,
        help="KL budget line for the plot (default: what the trainer's gate reports)",
    )
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every service port")
    parser.add_argument(
        "--no-bootstrap",
        action="store_true",
        help="do not build the demo models when the store has none (serve what it holds, e.g. a copy of a "
        "bootstrapped store)",
    )
    # Users arrive at a rate; unpaced, the simulator took most of the CPU the
    # trainer needs on a 2-core machine (51 calls/s, 16 PPO steps in 10 min).
    parser.set_defaults(func=run, rate=float(os.environ.get(env.SIM_RATE, "8")))


def ensure_models(model_store: str, console) -> None:
    """Run the four-step bootstrap when the store lacks policy or reward."""
    from shared.models.store import ModelStore

    store = ModelStore(model_store)
    if store.current("policy") is not None and store.current("reward") is not None:
        return
    from rlhf_cli import bootstrap_cmd

    console.print("[bold]No models in the store yet: running the four-step bootstrap (cached afterwards)[/bold]")
    code = bootstrap_cmd.run(argparse.Namespace(model_store=model_store, no_progress=False, json=False))
    if code:
        raise SystemExit(f"rlhf demo: the bootstrap failed (exit code {code})")


def plot_available() -> bool:
    """matplotlib (the demo extra) is there, checked before the 10 minutes rather than when the plot is saved."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return True
    print(
        "rlhf demo: the demo's plot needs matplotlib, which the platform does not install; install the demo "
        "extra: pip install -e '.[demo]' (`make demo` does)",
        file=sys.stderr,
    )
    return False


def render(simulator_stats, monitor, elapsed_s: float, total_s: float):
    """The live view: a status header and the per-version table."""
    from rich.console import Group
    from rich.table import Table

    from demo.simulation import version_sort_key

    table = Table(title=f"rlhf demo  {min(elapsed_s, total_s) / 60:.1f} / {total_s / 60:.1f} min", title_justify="left")
    for name, justify in (
        ("policy", "left"),
        ("responses", "right"),
        ("satisfaction", "right"),
        ("user utility", "right"),
        ("last interval", "right"),
        ("mean reward", "right"),
        ("KL", "right"),
    ):
        table.add_column(name, justify=justify)
    last_points = {}
    for point in monitor.series.points:
        last_points[point.version] = point
    for version, tally in sorted(simulator_stats.tallies().items(), key=lambda kv: version_sort_key(kv[0])):
        point = last_points.get(version)
        reward = monitor.series.mean_reward(version)
        kl = monitor.kl_by_version.get(version)
        table.add_row(
            version,
            str(tally.responses),
            f"{tally.satisfaction:.1%}",
            f"{tally.mean_utility:.3f}",
            f"{point.satisfaction:.0%} (n={point.responses})" if point else "-",
            f"{reward:.3f}" if reward is not None else "-",
            f"{kl:.2f}" if kl is not None else "-",
        )
    from rlhf_cli.simulate_cmd import live_line

    return Group(live_line(simulator_stats), monitor.trainer_line(), table)


def print_headline(console, series) -> None:
    head = series.headline()
    if not head:
        console.print("[red]no responses were served; nothing to compare[/red]")
        return
    if head["baseline_version"] == head["latest_version"]:
        console.print(
            f"[bold]Only policy {head['baseline_version']} served during the demo "
            f"(satisfaction {head['baseline_satisfaction']:.1%} over {head['baseline_responses']} "
            f"responses): no new version was deployed.[/bold]"
        )
        return
    kl = head.get("latest_kl")
    kl_text = "KL not reported"
    if kl is not None:
        budget = head.get("kl_budget")
        kl_text = f"KL {kl:.2f}" + (f" (budget {budget:g}: {'within' if kl <= budget else 'OVER'})" if budget else "")
    console.print(
        f"[bold]policy {head['baseline_version']}: {head['baseline_satisfaction']:.1%} "
        f"(n={head['baseline_responses']})  →  policy {head['latest_version']}: "
        f"{head['latest_satisfaction']:.1%} (n={head['latest_responses']})  "
        f"gain {head['gain_points']:+.1f} ± {head['gain_standard_error_points']:.1f} points "
        f"(standard error); {kl_text}[/bold]"
    )


def run(args) -> int:
    from rich.console import Console

    console = Console()
    if not plot_available():
        return 2
    if args.app == "assistant":
        from rlhf_cli import demo_assistant

        return demo_assistant.run(args, console)
    args.minutes = 10.0 if args.minutes is None else args.minutes
    args.out = args.out or "runs/demo/loop.png"
    return run_demo_world(args, console)


def check_services(args, services: list[str], console) -> bool:
    """The demo needs the policy and feedback services; without the trainer it runs but deploys nothing."""
    from rlhf_cli.stack import available_services

    missing = [s for s in ("policy", "feedback") if s not in services]
    if missing:
        console.print(
            f"[red]rlhf demo needs the {' and '.join(missing)} service(s); "
            f"this checkout has: {', '.join(services) or 'none'}[/red]"
        )
        return False
    if "trainer" not in services:
        why = (
            "is not started (--services)"
            if "trainer" in available_services()
            else "is not available in this checkout (services/trainer/__main__.py)"
        )
        console.print(
            f"[yellow]The trainer {why}: the demo runs without it, so no new policy version will be deployed.[/yellow]"
        )
    return True


def warn_continued_state(stack, services: list[str], console) -> None:
    if "trainer" in services and (stack.trainer_state_dir / "ledger.sqlite").exists():
        # A fresh store with an old ledger trains on earlier runs' feedback and carries their gate tests.
        console.print(
            f"[yellow]The trainer continues from {stack.trainer_state_dir} (the ledger and rounds of an earlier "
            f"run); for a fresh start remove it or set {env.TRAINER_STATE_DIR} to a new directory.[/yellow]"
        )


def run_demo_world(args, console) -> int:
    from demo.monitor import LoopMonitor
    from demo.plot import LoopSeries, save_series
    from demo.simulation import SimulationStats
    from demo.simulator import Simulator
    from rlhf_cli.live_loop import LiveApp, monitor_addresses, run_live_loop, run_totals
    from rlhf_cli.simulate_cmd import feedback_summary, simulator_config, version_table
    from rlhf_cli.up_cmd import build_stack, missing_models, selected_services

    if not args.no_bootstrap:
        ensure_models(args.model_store, console)  # Ctrl-C here is a plain KeyboardInterrupt: nothing runs yet
    services = selected_services(args)
    missing_kinds = missing_models(args.model_store, services)
    if missing_kinds:
        print(
            f"rlhf demo --no-bootstrap: the model store {args.model_store} holds "
            + " and ".join(f"no {kind} version" for kind in missing_kinds)
            + "; nothing was started. Without --no-bootstrap, rlhf demo builds the demo's models into it "
            "(or run `rlhf bootstrap` first).",
            file=sys.stderr,
        )
        return 2
    if not check_services(args, services, console):
        return 2
    # The demo plugs its world's judge into the trainer's gate the way any application
    # would: by naming it (the platform never imports demo/ on its own).
    gate_judge = os.environ.get(env.TRAINER_GATE_JUDGE, "demo.evaluation:gate_judge")
    stack = build_stack(args, services, ["--gate-judge", gate_judge] if gate_judge else [])
    warn_continued_state(stack, services, console)
    series = LoopSeries(kl_budget=args.kl_budget)
    config_holder = {}

    def start_simulator(stack, total_s: float):
        config = simulator_config(args, stack.address("policy"), stack.address("feedback"), duration_s=total_s)
        config_holder["config"] = config
        return Simulator(config, SimulationStats(recent_window=20_000)).start()

    def make_monitor(stack, simulator):
        return LoopMonitor(
            series,
            **monitor_addresses(stack),
            auth_token=args.auth_token,
            tls=config_holder["config"].tls,
            started=simulator.stats.started,
            seed=args.seed,
        )

    def finish(simulator, monitor, stack, console) -> int:
        stats = simulator.stats
        series.totals = {
            **run_totals(stats, stack),
            "feedback_mix": config_holder["config"].feedback_mix.describe(),
            "preference": args.preference or "demo.simulation:weighted_axes_utility",
        }
        png, data = save_series(series, args.out)
        console.print(version_table(stats, title="whole run, by policy version"))
        console.print(feedback_summary(stats))
        console.print(f"saved {png} and {data}")
        print_headline(console, series)
        return 0 if stats.requests else 1

    app = LiveApp(
        start_simulator=start_simulator,
        make_monitor=make_monitor,
        render=lambda sim, mon, elapsed, total: render(sim.stats, mon, elapsed, total),
        finish=finish,
    )
    return run_live_loop(stack, app, minutes=args.minutes, sample_every_s=args.sample_every_s, console=console)

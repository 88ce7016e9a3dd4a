"""`rlhf demo --app assistant`: the loop on a real chat model.

Imports SmolLM2-135M-Instruct from its wheel and trains the assistant's seed reward
model if the store lacks them (assistant/bootstrap.py), starts the broker and every
service with the OpenAI front door, lets the assistant's simulated users ask everyday
questions (assistant/), and plots, per served version, the users' own utility, the
judge's verdict, the KL to the reference and the answer length. The trainer trains
LoRA adapters with the settings below, each of which the user's own RLHF_TRAINER_*
variable overrides; the trainer fits the rest to the model's size.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared import env

DEFAULT_MINUTES = 30.0
DEFAULT_MODEL_STORE = "./model-store-assistant"
DEFAULT_LOG_DIR = "./runs/assistant/logs"
DEFAULT_OUT = "runs/assistant/loop.png"
# The users ask at the pace one CPU serves a 135M model (about one answer a second here);
# faster, and they queue behind each other and starve the trainer of the other core.
DEFAULT_RATE = 0.5
DEFAULT_CONCURRENCY = 2


def trainer_settings(method: str) -> dict[str, str]:
    """The trainer's settings for a 135M model on a 2-core CPU, as RLHF_TRAINER_* variables. The
    trainer itself fits the method to a pretrained policy (a LoRA adapter, its learning rate, one
    epoch: services/trainer/methods/size_defaults.py); these make rounds short (a step rolls out
    16 answers of 48 tokens) and the gate look at few prompts, because every answer a CPU samples
    from the real model costs about a second. docs/BENCHMARKS.md ("The live loop on SmolLM2")."""
    m = f"RLHF_TRAINER_{method.upper()}_"
    settings = {
        f"{m}BATCH_SIZE": "4",
        f"{m}MINI_BATCH_SIZE": "8",
        f"{m}MAX_PROMPT_LENGTH": "96",
        "RLHF_TRAINER_POLICY_STEPS_PER_ROUND": "4",
        "RLHF_TRAINER_POLICY_MIN_PROMPTS": "16",
        "RLHF_TRAINER_POLICY_MIN_NEW_FEEDBACK": "40",
        "RLHF_TRAINER_GATE_PROMPTS": "24",
        "RLHF_TRAINER_GATE_SAMPLES_PER_PROMPT": "2",
        "RLHF_TRAINER_REWARD_MIN_NEW_COMPARISONS": "150",
        "RLHF_TRAINER_REWARD_STEPS": "40",
    }
    if method in ("ppo", "rloo", "grpo"):
        settings.update({f"{m}SAMPLES_PER_PROMPT": "4", f"{m}MAX_NEW_TOKENS": "48", f"{m}TEMPERATURE": "0.7"})
    # Answers the users see: as long as the trainer's rollouts, so what is trained is what is served.
    settings[env.POLICY_DEFAULT_MAX_NEW_TOKENS] = "48"
    return settings


def apply_defaults(args) -> None:
    """The assistant's defaults for flags the user left at the toy demo's."""
    if args.minutes is None:
        args.minutes = DEFAULT_MINUTES
    if args.out is None:
        args.out = DEFAULT_OUT
    if args.model_store == os.environ.get(env.MODEL_STORE, "./model-store"):
        args.model_store = os.environ.get(env.MODEL_STORE) or DEFAULT_MODEL_STORE
    if args.log_dir == "./runs/logs":
        args.log_dir = DEFAULT_LOG_DIR
    if args.rate == float(os.environ.get(env.SIM_RATE, "8")):
        args.rate = float(os.environ.get(env.SIM_RATE, DEFAULT_RATE))
    if args.concurrency == int(os.environ.get(env.SIM_CONCURRENCY, "4")):
        args.concurrency = int(os.environ.get(env.SIM_CONCURRENCY, DEFAULT_CONCURRENCY))


def render(simulator, monitor, elapsed_s: float, total_s: float):
    from rich.console import Group

    table = simulator.stats.table(title=f"rlhf demo --app assistant  {elapsed_s / 60:.1f} / {total_s / 60:.1f} min")
    return Group(simulator.stats.live_line(), monitor.trainer.line(), table)


def run(args, console) -> int:
    from assistant.bootstrap import ensure_models
    from assistant.live_view import AssistantMonitor, AssistantSeries, headline_text, save_series
    from assistant.simulator import AssistantSimulator, AssistantStats
    from rlhf_cli.demo_cmd import check_services, warn_continued_state
    from rlhf_cli.live_loop import LiveApp, monitor_addresses, run_live_loop, run_totals
    from rlhf_cli.simulate_cmd import assistant_config, feedback_summary
    from rlhf_cli.up_cmd import build_stack, selected_services

    apply_defaults(args)
    if not args.no_bootstrap:
        ensure_models(args.model_store, log=console.print)
    services = selected_services(args)
    if not check_services(args, services, console):
        return 2
    method = args.policy_method or "rloo"
    for name, value in trainer_settings(method).items():
        os.environ.setdefault(name, value)  # the services inherit them; the user's own values win
    gate_judge = os.environ.get(env.TRAINER_GATE_JUDGE, "assistant.judge:gate_judge")
    stack = build_stack(args, services, ["--gate-judge", gate_judge])
    warn_continued_state(stack, services, console)
    series = AssistantSeries(kl_budget=args.kl_budget)
    holder = {}

    def start_simulator(stack, total_s: float):
        config = assistant_config(args, stack.address("policy"), stack.address("feedback"), duration_s=total_s)
        holder["config"] = config
        return AssistantSimulator(config, AssistantStats(recent_window=50_000)).start()

    def make_monitor(stack, simulator):
        return AssistantMonitor(
            series,
            **monitor_addresses(stack),
            auth_token=args.auth_token,
            tls=holder["config"].tls,
            started=simulator.stats.started,
            seed=args.seed,
        )

    def finish(simulator, monitor, stack, console) -> int:
        stats = simulator.stats
        series.totals = {
            **run_totals(stats, stack),
            "policy_method": method,
            "feedback_mix": holder["config"].feedback_mix.describe(),
            "preference": args.preference or "assistant.users:default_utility",
            "trainer_settings": {k: os.environ[k] for k in trainer_settings(method)},
        }
        png, data = save_series(series, Path(args.out))
        console.print(stats.table(title="whole run, by policy version"))
        console.print(feedback_summary(stats))
        console.print(f"saved {png} and {data}")
        console.print(f"[bold]{headline_text(series)}[/bold]")
        return 0 if stats.requests else 1

    app = LiveApp(start_simulator=start_simulator, make_monitor=make_monitor, render=render, finish=finish)
    return run_live_loop(stack, app, minutes=args.minutes, sample_every_s=args.sample_every_s, console=console)

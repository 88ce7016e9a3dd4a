"""`rlhf lineage`: what made a version, and which versions a user's feedback shaped.

``rlhf lineage KIND VERSION`` reads the model store: the version's manifest
(parent, the base version a LoRA adapter version applies to, the reward
version that scored it, the ledger ranges of feedback and corrections it
trained on, the gate's evidence, who promoted it) and the store's history
of CURRENT (every promotion and rollback, by whom, when, the update event's id).

``rlhf lineage --user USER_ID`` reads the trainer's ledger (read-only) and the
store: the user's feedback, whether they asked for their data to be excluded,
and the versions whose recorded training ranges include their feedback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from shared import env


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "lineage",
        help="what made a model version (data, reward, gate, who promoted it), or what a user's feedback shaped",
        description="`rlhf lineage policy v3`: the version's parent chain, the reward version that scored it, the "
        "ranges of feedback and corrections it trained on (trainer ledger seqs), the gate's evidence, and every "
        "promotion or rollback of it (who, when, why, event id). `rlhf lineage --user ID`: the versions whose "
        "training ranges include that user's feedback, and whether the user asked to be excluded.",
    )
    parser.add_argument("kind", nargs="?", choices=("policy", "reward"), help="model kind")
    parser.add_argument("version", nargs="?", help="stored version, e.g. v3")
    parser.add_argument("--user", default="", help="trace this user's feedback instead of a version")
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get(env.TRAINER_STATE_DIR, "./trainer-state"),
        help=f"the trainer's state directory, holding ledger.sqlite (for --user) [env {env.TRAINER_STATE_DIR}]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    if args.user and (args.kind or args.version):
        args.parser.error("give either KIND VERSION or --user USER_ID, not both")
    if not args.user and not (args.kind and args.version):
        args.parser.error("give KIND VERSION (e.g. `rlhf lineage policy v3`) or --user USER_ID")
    try:
        report = user_report(args) if args.user else version_report(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"rlhf lineage: {exc}")
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif args.user:
        print_user(report)
    else:
        print_version(report)
    return 0


def version_report(args) -> dict:
    """The manifest, parent chain and history of one version, as a dict."""
    from shared.models.store import ModelStore, ModelStoreError

    store = ModelStore(args.model_store)
    try:
        manifest = store.manifest(args.kind, args.version)
        ancestors = []
        bases = {manifest.version: manifest.base_version}  # each adapter in the chain: its base
        parent = manifest.parent_version
        while parent and parent not in ancestors and len(ancestors) < 1000:
            ancestors.append(parent)
            parent_manifest = store.manifest(args.kind, parent)
            bases[parent] = parent_manifest.base_version
            parent = parent_manifest.parent_version
    except ModelStoreError as exc:
        raise ValueError(str(exc)) from exc
    return {
        "kind": args.kind,
        "version": manifest.version,
        "parent_version": manifest.parent_version,
        "base_version": manifest.base_version,  # "" for full weights
        "ancestors": ancestors,
        "ancestor_bases": {v: b for v, b in bases.items() if b},
        "created_at": manifest.created_at,
        "notes": manifest.notes,
        "eval_metrics": manifest.eval_metrics,
        "history": store.history(args.kind, manifest.version),
        "current": store.current(args.kind) == manifest.version,
    }


def user_report(args) -> dict:
    """The user's feedback, deletion requests and the versions it shaped, as a dict."""
    from services.trainer.data.ledger_lineage import read_user_rows
    from services.trainer.loop.lineage import versions_shaped_by
    from shared.models.store import ModelStore

    rows, deletions = read_user_rows(Path(args.state_dir) / "ledger.sqlite", args.user)
    shaped = versions_shaped_by(ModelStore(args.model_store), rows)
    kinds: dict[str, int] = {}
    for _, kind, _ in rows:
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "user_id": args.user,
        "feedback": kinds,
        "feedback_seqs": [seq for seq, _, _ in rows],
        "excluded": bool(deletions),
        "deletion_requests": [{"feedback_id": d[0], "received_at": d[1], "reason": d[2]} for d in deletions],
        "versions": [{"kind": s.kind, "version": s.version, "how": s.how} for s in shaped],
    }


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def print_version(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    bases = report.get("ancestor_bases", {})
    chain = " <- ".join(
        f"{v} (adapter on {bases[v]})" if v in bases else v for v in [report["version"], *report["ancestors"]]
    )
    current = " (current)" if report["current"] else ""
    console.print(f"[bold]{report['kind']} {report['version']}[/bold]{current}, created {_when(report['created_at'])}")
    if report.get("base_version"):
        console.print(f"a LoRA adapter on base {report['kind']} {report['base_version']} (full weights)")
    console.print(f"lineage: {chain}")
    made = Table(title="what made it (manifest notes)", show_header=False)
    for key, value in sorted(report["notes"].items()):
        made.add_row(key, value)
    console.print(made)
    if report["eval_metrics"]:
        gate = Table(title="evidence (eval metrics)", show_header=False)
        for key, value in sorted(report["eval_metrics"].items()):
            gate.add_row(key, f"{value:.6g}")
        console.print(gate)
    history = Table(title="history of CURRENT")
    for name in ("when", "action", "change", "by", "reason", "event"):
        history.add_column(name)
    for entry in report["history"]:
        history.add_row(
            _when(float(entry.get("at", 0))),
            str(entry.get("action", "")),
            f"{entry.get('previous_version') or '-'} -> {entry.get('version', '')}",
            str(entry.get("actor", "")),
            str(entry.get("reason", "")),
            str(entry.get("event_id", "")),
        )
    console.print(history if report["history"] else "history of CURRENT: never made current")


def print_user(report: dict) -> None:
    from rich.console import Console

    console = Console()
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(report["feedback"].items())) or "none"
    console.print(f"[bold]user {report['user_id']}[/bold]: feedback in the ledger: {counts}")
    for request in report["deletion_requests"]:
        console.print(
            f"asked to be excluded at {_when(request['received_at'])} ({request['feedback_id']}"
            f"{': ' + request['reason'] if request['reason'] else ''}): no training set since uses their data"
        )
    if not report["versions"]:
        console.print("no stored version records training on this user's feedback")
    for shaped in report["versions"]:
        console.print(f"{shaped['kind']} {shaped['version']}: {shaped['how']}")

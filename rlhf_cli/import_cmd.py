"""`rlhf import policy|reward DIR`: a local Hugging Face model directory into the model store."""

from __future__ import annotations

import json
import os

from shared import env

KIND_HELP = (
    "policy: any AutoModelForCausalLM with its tokenizer; reward: an AutoModelForSequenceClassification "
    "with num_labels=1, or the platform's MiniLM format (reward_config.json)"
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import a local Hugging Face model directory as a new policy or reward version",
        description="Check a Hugging Face model directory (config, safetensors weights, tokenizer, that it loads "
        "as the right kind of model) and store it as a new version, with sha256s in its manifest. Pickle "
        "weights are refused. A reward model is exported to ONNX when ONNX Runtime matches torch, else it is "
        "scored with torch; the manifest notes say which. Nothing is downloaded.",
    )
    parser.add_argument("kind", choices=("policy", "reward"), help=KIND_HELP)
    parser.add_argument("directory", metavar="DIR", help="the directory save_pretrained wrote")
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument(
        "--set-current", action="store_true", help="make the new version the one replicas serve (CURRENT)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from transformers.utils import logging as hf_logging

    from shared.models.importer import ModelImportError, import_policy, import_reward
    from shared.models.store import ModelStore

    hf_logging.disable_progress_bar()
    importer = import_policy if args.kind == "policy" else import_reward
    try:
        result = importer(ModelStore(args.model_store), args.directory, set_current=args.set_current)
    except ModelImportError as exc:
        print(f"rlhf import: {exc}")
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "kind": result.kind,
                    "version": result.version,
                    "current": result.current,
                    "notes": result.notes,
                    "warnings": list(result.warnings),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    notes = result.notes
    print(
        f"imported {result.kind} {result.version} ({notes['architecture']}, {notes['format']}) into {args.model_store}"
    )
    print(f"  pad token: {notes.get('pad_token') or 'n/a'}")
    if result.kind == "reward":
        print(f"  scoring backend: {notes['scoring_backend']} ({notes['scoring_backend_reason']})")
    else:
        print(f"  chat template: {notes['chat_template']}; adds BOS: {notes['adds_bos']}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    if result.current:
        print(
            f"  CURRENT -> {result.version}: replicas load it when they (re)start; running ones swap on "
            f"`rlhf promote {result.kind} {result.version}`"
        )
    else:
        print(f"  not current: pass --set-current, or serve it with `rlhf promote {result.kind} {result.version}`")
    return 0

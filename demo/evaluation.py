"""The demo world's view of a policy: the judge's satisfaction and per-axis
rates on held-out world prompts, what `rlhf eval` and the bootstrap report.

- satisfaction: share of sampled responses the judge calls good on all axes
- per-axis rates (helpful, polite, correct, safe, concise)
- reward_mean: mean score of the sampled responses under a reward model
- kl_to_reference: see :func:`shared.models.policy_eval.kl_to_reference`

:func:`gate_judge` is the trainer's optional judge plug-in for this world
(``--gate-judge demo.evaluation:gate_judge``): the platform passes it prompts
and responses and never imports this module itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from demo.world import AXES, Prompt, judge
from shared.models.policy_eval import Sample, SamplingSettings, kl_to_reference, sample_responses


def judge_rates(samples: Sequence[Sample]) -> dict[str, float]:
    """Satisfaction and per-axis rates of judged samples (prompts are world prompt texts)."""
    verdicts = [judge(s.prompt, s.text) for s in samples]
    n = max(1, len(verdicts))
    rates = {"satisfaction": sum(v.good for v in verdicts) / n}
    for axis in AXES:
        rates[f"axis_{axis}"] = sum(getattr(v, axis) for v in verdicts) / n
    return rates


def gate_judge(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """1.0 where the world's judge calls the response good on every axis, else 0.0;
    NaN for a prompt that is not the world's (the trainer skips those)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        try:
            scores.append(1.0 if judge(prompt, response).good else 0.0)
        except KeyError:
            scores.append(float("nan"))
    return scores


def evaluate_policy(
    policy,
    tokenizer,
    prompts: Sequence[Prompt],
    settings: SamplingSettings = SamplingSettings(),
    *,
    reward: tuple | None = None,
    reference=None,
) -> dict[str, float]:
    """Satisfaction, per-axis rates, mean reward (if ``reward`` = (model,
    tokenizer)) and KL to ``reference`` (if given) on world ``prompts``."""
    samples = sample_responses(policy, tokenizer, [p.text for p in prompts], settings)
    metrics = judge_rates(samples)
    metrics["samples"] = float(len(samples))
    metrics["mean_response_words"] = sum(len(s.text.split()) for s in samples) / max(1, len(samples))
    if reward is not None:
        from shared.models.reward.scoring import score_texts

        scores = score_texts(reward[0], reward[1], [s.prompt for s in samples], [s.text for s in samples])
        metrics["reward_mean"] = sum(scores) / max(1, len(scores))
    if reference is not None:
        metrics["kl_to_reference"] = kl_to_reference(policy, reference, samples, tokenizer.pad_token_id)
    return metrics

"""What `rlhf demo --app assistant` measures over time, and how it is saved.

Every interval, the answers the simulated users saw are grouped by the policy version
that served them; one point per version holds the users' own mean utility, the judge's
verdict (correct, clean), the answer length, the reward model's mean score of a sample
(RewardService.ScoreBatch) and the KL to the reference the trainer's gate reported for
that version. The run's headline compares the first served version with the latest on
the users' utility, with its standard error. Saved as a JSON and a PNG (matplotlib,
Agg backend: no display needed).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.simulator import AssistantStats, VersionTally
from shared.grpc.channels import ClientTLS
from shared.loop_watch import LoopWatch, version_sort_key


@dataclass
class AssistantPoint:
    t_s: float  # seconds since the users started
    version: str  # the policy version that served these answers
    answers: int
    utility: float  # the users' own mean utility of these answers, in [0, 1]
    correct: float  # the judge: share correct
    clean: float  # the judge: share clean (no refusal, repetition, garbage, rambling)
    words: float  # mean answer length
    mean_reward: float | None = None
    reward_version: str = ""
    kl: float | None = None  # the gate's KL to the reference for this version


@dataclass
class AssistantVersionSummary:
    answers: int
    utility: float
    utility_standard_error: float
    correct: float
    clean: float
    words: float
    mean_reward: float | None = None
    kl: float | None = None
    first_seen_s: float | None = None

    @classmethod
    def of(cls, tally: VersionTally) -> AssistantVersionSummary:
        n = max(1, tally.responses)
        mean = tally.utility_sum / n
        variance = max(0.0, tally.utility_sq_sum / n - mean**2) * n / max(1, n - 1)
        return cls(
            answers=tally.responses,
            utility=mean,
            utility_standard_error=math.sqrt(variance / n),
            correct=tally.correct / n,
            clean=tally.clean / n,
            words=tally.words_sum / n,
        )


@dataclass
class AssistantSeries:
    points: list[AssistantPoint] = field(default_factory=list)
    versions: dict[str, AssistantVersionSummary] = field(default_factory=dict)
    kl_budget: float | None = None
    notes: list[str] = field(default_factory=list)
    totals: dict = field(default_factory=dict)

    def mean_reward(self, version: str) -> float | None:
        pairs = [(p.mean_reward, p.answers) for p in self.points if p.version == version and p.mean_reward is not None]
        weight = sum(n for _, n in pairs)
        return sum(r * n for r, n in pairs) / weight if weight else None

    def headline(self) -> dict:
        """The users' utility under the first served version against the latest, with the
        gain's standard error (the two versions' answers taken as independent samples)."""
        ordered = sorted(self.versions, key=version_sort_key)
        if not ordered:
            return {}
        first, last = ordered[0], ordered[-1]
        a, b = self.versions[first], self.versions[last]
        out = {
            "baseline_version": first,
            "baseline_utility": a.utility,
            "baseline_answers": a.answers,
            "latest_version": last,
            "latest_utility": b.utility,
            "latest_answers": b.answers,
            "utility_gain": b.utility - a.utility,
            "utility_gain_standard_error": math.hypot(a.utility_standard_error, b.utility_standard_error),
            "baseline_correct": a.correct,
            "latest_correct": b.correct,
            "baseline_words": a.words,
            "latest_words": b.words,
            "latest_kl": b.kl,
            "kl_budget": self.kl_budget,
        }
        if b.kl is not None and self.kl_budget is not None:
            out["kl_under_budget"] = b.kl <= self.kl_budget
        return out

    def to_json(self) -> dict:
        return {
            "points": [asdict(p) for p in self.points],
            "versions": {
                v: asdict(s) for v, s in sorted(self.versions.items(), key=lambda kv: version_sort_key(kv[0]))
            },
            "kl_budget": self.kl_budget,
            "headline": self.headline(),
            "totals": self.totals,
            "notes": self.notes,
        }


class AssistantMonitor:
    """Samples the users' answers, the reward service and the trainer every interval."""

    def __init__(
        self,
        series: AssistantSeries,
        *,
        reward_addr: str | None,
        trainer_addr: str | None,
        auth_token: str = "",
        tls: ClientTLS | None = None,
        started: float | None = None,
        seed: int = 0,
    ):
        self.series = series
        self.started = started if started is not None else time.monotonic()
        self._last_at = self.started
        self.watch = LoopWatch(
            reward_addr=reward_addr, trainer_addr=trainer_addr, auth_token=auth_token, tls=tls, seed=seed
        )
        self.reward, self.trainer = self.watch.reward, self.watch.trainer
        self._explicit_budget = series.kl_budget is not None

    def close(self) -> None:
        self.watch.close()

    def sample(self, stats: AssistantStats) -> list[AssistantPoint]:
        now = time.monotonic()
        fresh = [a for a in stats.snapshot_recent() if a.at > self._last_at]
        self._last_at = now
        self.series.kl_budget = self.watch.poll_trainer(self.series.kl_budget, self._explicit_budget)
        by_version = defaultdict(list)
        for answer in fresh:
            by_version[answer.model_version].append(answer)
        points = []
        for version, served in by_version.items():
            n = len(served)
            reward, reward_version = self.reward.mean_reward([(a.prompt, a.response) for a in served])
            point = AssistantPoint(
                t_s=now - self.started,
                version=version,
                answers=n,
                utility=sum(a.utility for a in served) / n,
                correct=sum(a.correct for a in served) / n,
                clean=sum(a.clean for a in served) / n,
                words=sum(a.words for a in served) / n,
                mean_reward=reward,
                reward_version=reward_version,
                kl=self.trainer.kl_by_version.get(version),
            )
            self.series.points.append(point)
            points.append(point)
        return points

    def summarise(self, stats: AssistantStats) -> None:
        """Per-version totals over the whole run, into ``series.versions``."""
        first_seen: dict[str, float] = {}
        for point in self.series.points:
            first_seen.setdefault(point.version, point.t_s)
        for version, tally in stats.tallies().items():
            summary = AssistantVersionSummary.of(tally)
            summary.mean_reward = self.series.mean_reward(version)
            summary.kl = self.trainer.kl_by_version.get(version)
            summary.first_seen_s = first_seen.get(version)
            self.series.versions[version] = summary


def headline_text(series: AssistantSeries) -> str:
    head = series.headline()
    if not head:
        return "no answers were served; nothing to compare"
    if head["baseline_version"] == head["latest_version"]:
        return (
            f"Only policy {head['baseline_version']} served (users' utility {head['baseline_utility']:.3f} over "
            f"{head['baseline_answers']} answers): no new version was deployed."
        )
    kl, budget = head.get("latest_kl"), head.get("kl_budget")
    kl_text = "KL not reported" if kl is None else f"KL {kl:.2f}" + (f" (budget {budget:g})" if budget else "")
    return (
        f"users' utility: policy {head['baseline_version']} {head['baseline_utility']:.3f} "
        f"(n={head['baseline_answers']}) → policy {head['latest_version']} {head['latest_utility']:.3f} "
        f"(n={head['latest_answers']}), gain {head['utility_gain']:+.3f} ± {head['utility_gain_standard_error']:.3f} "
        f"(standard error); correct {head['baseline_correct']:.0%} → {head['latest_correct']:.0%}; "
        f"words {head['baseline_words']:.0f} → {head['latest_words']:.0f}; {kl_text}"
    )


def save_series(series: AssistantSeries, png_path: str | Path) -> tuple[Path, Path]:
    """Write the PNG and, beside it, the JSON."""
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    data_path = png.with_suffix(".json")
    data_path.write_text(json.dumps(series.to_json(), indent=2))
    plot_series(series, png)
    return png, data_path


_PANELS = (
    ("utility", "users' own utility (mean)", 1.0),
    ("correct", "judge: correct %", 100.0),
    ("kl", "KL to reference (gate)", 1.0),
    ("words", "answer length (words)", 1.0),
)


def plot_series(series: AssistantSeries, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(_PANELS), 1, figsize=(9, 10), sharex=True)
    versions = sorted({p.version for p in series.points}, key=version_sort_key)
    colours = plt.get_cmap("tab10")
    for ax, (attr, label, scale) in zip(axes, _PANELS, strict=True):
        for i, version in enumerate(versions):
            pts = [p for p in series.points if p.version == version and getattr(p, attr) is not None]
            if pts:
                ax.plot(
                    [p.t_s / 60 for p in pts],
                    [getattr(p, attr) * scale for p in pts],
                    marker="o",
                    markersize=3,
                    linewidth=1.2,
                    color=colours(i % colours.N),
                    label=f"policy {version}",
                )
        if attr == "kl" and series.kl_budget is not None:
            ax.axhline(series.kl_budget, color="tab:red", linestyle="--", linewidth=1, label="KL budget")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("minutes since the users started")
    fig.suptitle(
        "rlhf-loop demo --app assistant: the served policy over time\n" + headline_text(series)[:160], fontsize=9
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)

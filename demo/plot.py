"""What `rlhf demo` measures over time, and how it is saved: a JSON of the
series and a PNG (matplotlib, Agg backend, so it works without a display).

One point = one policy version over one sampling interval: how many of its
responses the simulated users saw, the share the judge called good, the mean
reward-model score of a sample of them, and the KL to the reference that the
trainer reported for that version.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from demo.simulation import version_sort_key


@dataclass
class SeriesPoint:
    t_s: float  # seconds since the demo started
    version: str  # policy version that served these responses
    responses: int
    satisfaction: float  # judge good on all axes, share of these responses
    mean_reward: float | None = None  # RewardService.ScoreBatch on a sample of them
    reward_version: str = ""
    kl: float | None = None  # trainer's gate metric for this version (vs. the reference)
    ppo_kl: float | None = None  # trainer's last PPO step, for the candidate being trained


@dataclass
class VersionSummary:
    responses: int
    satisfaction: float
    axes: dict[str, float]
    mean_reward: float | None = None
    kl: float | None = None
    first_seen_s: float | None = None
    # The users' own mean utility (their preference function, e.g. a custom --preference), beside the judge's.
    user_utility: float | None = None


def satisfaction_gain_standard_error(a: VersionSummary, b: VersionSummary) -> float:
    """Standard error of b.satisfaction - a.satisfaction, each a share of independent responses."""
    variance = sum(v.satisfaction * (1 - v.satisfaction) / v.responses for v in (a, b) if v.responses)
    return math.sqrt(variance)


@dataclass
class LoopSeries:
    points: list[SeriesPoint] = field(default_factory=list)
    versions: dict[str, VersionSummary] = field(default_factory=dict)
    kl_budget: float | None = None
    notes: list[str] = field(default_factory=list)
    totals: dict = field(default_factory=dict)  # requests, feedback by kind, errors of the whole run

    def add(self, point: SeriesPoint) -> None:
        self.points.append(point)

    def latest_kl(self, version: str) -> float | None:
        for point in reversed(self.points):
            if point.version == version and point.kl is not None:
                return point.kl
        return None

    def mean_reward(self, version: str) -> float | None:
        """Response-weighted mean of the interval means of ``version``."""
        pairs = [
            (p.mean_reward, p.responses) for p in self.points if p.version == version and p.mean_reward is not None
        ]
        weight = sum(n for _, n in pairs)
        return sum(r * n for r, n in pairs) / weight if weight else None

    def headline(self) -> dict:
        """Satisfaction of the first version vs the latest one that served.

        The baseline is often served for a minute or less before the first
        promotion, so its share rests on a few hundred responses: the gain's
        standard error says how far the gain could move from that alone."""
        ordered = sorted(self.versions, key=version_sort_key)
        if not ordered:
            return {}
        first, last = ordered[0], ordered[-1]
        a, b = self.versions[first], self.versions[last]
        out = {
            "baseline_version": first,
            "baseline_satisfaction": a.satisfaction,
            "baseline_responses": a.responses,
            "latest_version": last,
            "latest_satisfaction": b.satisfaction,
            "latest_responses": b.responses,
            "gain_points": 100.0 * (b.satisfaction - a.satisfaction),
            "gain_standard_error_points": 100.0 * satisfaction_gain_standard_error(a, b),
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


def _clean(value):
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def save_series(series: LoopSeries, png_path: str | Path, json_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write the PNG and the JSON (default: the PNG's name with .json)."""
    png = Path(png_path)
    data_path = Path(json_path) if json_path else png.with_suffix(".json")
    png.parent.mkdir(parents=True, exist_ok=True)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text(json.dumps(_clean(series.to_json()), indent=2))
    plot_series(series, png)
    return png, data_path


def plot_series(series: LoopSeries, png_path: Path) -> None:
    try:
        import matplotlib
    except ImportError as exc:  # the platform does not depend on it; the demo extra does
        raise ImportError(
            "the demo's plot needs matplotlib: install the demo extra, pip install -e '.[demo]' (`make demo` does)"
        ) from exc

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True)
    versions = sorted({p.version for p in series.points}, key=version_sort_key)
    colours = plt.get_cmap("tab10")  # distinct, readable on white
    panels = [
        ("satisfaction", "satisfaction (judge: good on all axes)", 100.0),
        ("mean_reward", "mean reward (reward model)", 1.0),
        ("kl", "KL to reference (trainer)", 1.0),
    ]
    for row, (attr, label, scale) in enumerate(panels):
        ax = axes[row]
        for i, version in enumerate(versions):
            pts = [p for p in series.points if p.version == version and getattr(p, attr) is not None]
            if not pts:
                continue
            colour = colours(i % colours.N)
            ax.plot(
                [p.t_s / 60 for p in pts],
                [getattr(p, attr) * scale for p in pts],
                marker="o",
                markersize=3,
                linewidth=1.2,
                color=colour,
                label=f"policy {version}",
            )
        if attr == "kl" and series.kl_budget is not None:
            ax.axhline(series.kl_budget, color="tab:red", linestyle="--", linewidth=1, label="KL budget")
        if attr == "kl" and not any(p.kl is not None for p in series.points):
            ax.text(
                0.5,
                0.5,
                "no KL reported (trainer not running)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="grey",
            )
        ax.set_ylabel(label if scale == 1.0 else label.replace("satisfaction", "satisfaction %"), fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("minutes since the demo started")
    head = series.headline()
    title = "rlhf-loop demo: deployed policy over time"
    if head:
        title += (
            f"\n{head['baseline_version']} {head['baseline_satisfaction']:.0%} → "
            f"{head['latest_version']} {head['latest_satisfaction']:.0%} "
            f"({head['gain_points']:+.1f} ± {head['gain_standard_error_points']:.1f} points, standard error)"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)

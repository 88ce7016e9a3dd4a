"""A running mean and standard deviation of reward scores (Welford's algorithm).

Reward models drift in scale as they are retrained online, and an RL step's
size follows the scale of its rewards. Normalising each batch's scores by the
mean and standard deviation of every score seen so far keeps that scale near 1
without making one batch's scores depend on its own mean alone (which would
throw away the information that a whole batch got better). Used by PPO
(``--ppo-normalize-scores``) and by RLOO/GRPO; its state goes into the
trainer's checkpoint so a resumed trainer normalises exactly as before.

Batches are merged with the parallel form of Welford's update (Chan et al.
1979): for counts n_a, n_b, means m_a, m_b and sums of squared deviations
M2_a, M2_b, delta = m_b - m_a and

  n    = n_a + n_b
  mean = m_a + delta * n_b / n
  M2   = M2_a + M2_b + delta^2 * n_a * n_b / n
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass
class RunningMoments:
    """Count, mean and M2 (sum of squared deviations) of every value seen."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: Sequence[float]) -> None:
        """Fold a batch of values in (exactly as if they were added one by one)."""
        n_b = float(len(values))
        if n_b == 0:
            return
        mean_b = sum(values) / n_b
        m2_b = sum((v - mean_b) ** 2 for v in values)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    @property
    def std(self) -> float:
        """Population standard deviation (0 before two values were seen)."""
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0

    def normalize(self, values: Sequence[float], eps: float = 1e-8) -> list[float]:
        """(v - mean) / (std + eps) under the moments as they stand; with fewer than
        two values seen (no spread yet) only the mean is removed."""
        scale = self.std + eps if self.count > 1 else 1.0
        return [(v - self.mean) / scale for v in values]

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])

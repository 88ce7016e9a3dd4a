"""The gateway's per-client rate limit: a token bucket per client id."""

from __future__ import annotations

import collections
import threading
import time

from shared.errors import ResourceExhausted


class ClientRateLimiter:
    """A token bucket per client id: ``rate_per_s`` events a second with
    bursts up to ``burst``. Idle buckets are forgotten so memory stays bounded."""

    def __init__(self, rate_per_s: float, burst: float, max_clients: int = 100_000):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client_id: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens or raise ResourceExhausted with when to retry."""
        if self.rate_per_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(client_id)
            if bucket is None:
                bucket = [self.burst, now]
                self._buckets[client_id] = bucket
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client_id)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
                bucket[1] = now
            if bucket[0] >= cost:
                bucket[0] -= cost
                return
            wait_s = (cost - bucket[0]) / self.rate_per_s
        raise ResourceExhausted(
            f"rate limit: {self.rate_per_s:g} feedback events/s per client (burst {self.burst:g}); "
            f"retry in {wait_s:.2f} s",
            retry_after_s=wait_s,
        )

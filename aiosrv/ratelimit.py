"""Rate limits, sans-I/O: token buckets on a given clock.

:class:`TokenBucket` holds ``burst`` tokens, refilled at ``rate`` per second;
each event takes one, and an event with no token left is refused. Rate and
burst are passed on each call, so a reload changes them at once.

:class:`AddressLimiter` keeps one bucket per client address (connection
attempts) in a dict bounded by ``max_entries``: buckets that have refilled
completely carry no information and are dropped when it is full (every
``prune_every`` insertions, oldest first), so a scan of many addresses costs
memory only while they are actually active.
"""

from __future__ import annotations

__all__ = ["AddressLimiter", "TokenBucket"]


class TokenBucket:
    """``burst`` tokens, ``rate`` more per second; :meth:`take` spends one."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now

    def refill(self, now: float, rate: float, burst: float) -> float:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(float(burst), self.tokens + elapsed * rate)
            self.stamp = now
        elif self.tokens > burst:  # the burst was lowered by a reload
            self.tokens = float(burst)
        return self.tokens

    def take(self, now: float, rate: float, burst: float) -> bool:
        """Spend a token if there is one; False refuses the event."""
        if self.refill(now, rate, burst) >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float, rate: float, burst: float) -> bool:
        return self.refill(now, rate, burst) >= burst


class AddressLimiter:
    """One :class:`TokenBucket` per address."""

    __slots__ = ("_buckets", "max_entries", "refused")

    def __init__(self, max_entries: int = 100_000) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self.max_entries = max_entries
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str, now: float, rate: float, burst: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self.prune(now, rate, burst)
            bucket = self._buckets[address] = TokenBucket(burst, now)
        if bucket.take(now, rate, burst):
            return True
        self.refused += 1
        return False

    def prune(self, now: float, rate: float, burst: float) -> int:
        """Drop the buckets that have refilled (they hold nothing); if that
        frees nothing, drop the oldest half. Returns how many went."""
        buckets = self._buckets
        idle = [a for a, b in buckets.items() if b.full(now, rate, burst)]
        if not idle:
            idle = list(buckets)[: max(1, len(buckets) // 2)]
        for address in idle:
            del buckets[address]
        return len(idle)

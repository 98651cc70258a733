"""Per-key budgets: requests per minute, tokens per minute and requests in flight.

The server-wide `Admission` bound protects the server; these protect the tenants from each
other, so one key cannot use up the admission, the engine or the registry traffic of everyone.

Rates are token buckets that hold one minute of the limit and refill continuously (a key may
burst its whole minute, then gets its rate). Tokens are reserved at admission as the worst case
the request may use, `prompt + max_tokens * n` (at most one full bucket, so no request is
impossible), and settled when it ends with what it really used (prompt + completion tokens): the
unused part goes back, a request that never reached the engine gives all of it back. A capped
reservation may settle above what was reserved; the bucket then goes below zero and the key waits
until it has paid that back. Past any limit a request gets 429 with `Retry-After`, the whole
seconds until the budget would admit it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loramux.server.errors import RateLimited

Clock = Callable[[], float]


@dataclass(frozen=True)
class Limits:
    """A key's limits from its keys-file line; None: unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency))


class _Bucket:
    """`per_minute` units, refilled at per_minute / 60 a second, holding at most one minute."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0: now)."""
        self._refill()
        return max(0.0, (amount - self.level) / self.rate)

    def add(self, amount: float) -> None:
        """Take (negative) or give back (positive); the level may go below zero (a debt)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class Ticket:
    """One admitted request's hold on its key's budget; `usage` is set once the request runs,
    so that settling knows the tokens it really used."""

    def __init__(self, budget: KeyBudget | None) -> None:
        self._budget = budget
        self.reserved = 0
        self.usage: Callable[[], int] | None = None

    def reserve(self, tokens: int) -> None:
        """Reserve the request's worst case against tokens per minute, or raise RateLimited."""
        if self._budget is not None:
            self.reserved = self._budget.reserve(tokens)

    def _settle(self) -> None:
        if self._budget is not None and self.reserved:
            used = self.usage() if self.usage is not None else 0
            self._budget.tokens.add(self.reserved - used)  # type: ignore[union-attr]


class KeyBudget:
    """The live state of one key's limits (kept across keys-file reloads while they match)."""

    def __init__(self, name: str, limits: Limits, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.limits = limits
        self.requests = _Bucket(limits.rpm, clock) if limits.rpm else None
        self.tokens = _Bucket(limits.tpm, clock) if limits.tpm else None
        self.in_flight = 0

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Hold one request of this key (concurrency and requests per minute), or raise
        RateLimited; the ticket's tokens are settled when the `with` ends."""
        limit = self.limits.concurrency
        if limit is not None and self.in_flight >= limit:
            raise RateLimited(f"API key `{self.name}` already has {limit} requests in flight "
                              "(its concurrency limit); retry when one ends", retry_after=1)
        if self.requests is not None:
            wait = self.requests.wait_for(1)
            if wait > 0:
                raise RateLimited(f"API key `{self.name}` is past its limit of "
                                  f"{self.limits.rpm} requests per minute",
                                  retry_after=_seconds(wait))
            self.requests.add(-1)
        ticket = Ticket(self)
        self.in_flight += 1
        try:
            yield ticket
        finally:
            self.in_flight -= 1
            ticket._settle()

    def reserve(self, tokens: int) -> int:
        """Take `tokens` (capped at one full bucket) from tokens per minute; returns what was
        reserved. Refused: the request's place in requests per minute is given back."""
        if self.tokens is None:
            return 0
        amount = min(tokens, int(self.tokens.capacity))
        wait = self.tokens.wait_for(amount)
        if wait > 0:
            if self.requests is not None:
                self.requests.add(1)
            raise RateLimited(f"API key `{self.name}` is past its limit of {self.limits.tpm} "
                              f"tokens per minute (this request reserves {amount}: prompt + "
                              "max_tokens; a smaller max_tokens is admitted sooner)",
                              retry_after=_seconds(wait))
        self.tokens.add(-amount)
        return amount


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait - 1e-9))


@contextmanager
def unlimited() -> Iterator[Ticket]:
    """The hold of a key without limits (or of every caller when the server has no keys)."""
    yield Ticket(None)

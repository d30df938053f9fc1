"""Rate limits per tenant, per API key and (on routes without a credential) per client IP.

Counters are fixed one-minute windows from the `limits` library, kept in this replica's memory: with N
replicas a tenant may get up to N times its limit. The upgrade path is a shared `limits` storage (Redis,
Memcached or MongoDB, e.g. `limits.aio.storage.RedisStorage`, awaited in `_run`); only this module changes.

Every response of a limited route carries the IETF draft headers RateLimit-Limit / RateLimit-Remaining /
RateLimit-Reset (seconds) of the tightest limit; a refused request is a 429 problem with Retry-After.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

from limits import RateLimitItem, RateLimitItemPerMinute, parse
from limits.storage import Storage

from crm_gateway.problems import ProblemError


class LocalStorage(Storage):
    """Fixed-window counters in a dict, for one asyncio process: no locks, no expiry thread (limits' own
    MemoryStorage starts a timer thread again and again, which costs every request); expired windows are
    dropped when touched, and swept when the dict grows large."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["crm-local"]
    MAX_KEYS = 100_000

    def __init__(self, uri: str | None = None, **options: float | str | bool) -> None:
        super().__init__(uri, **options)
        self.counters: dict[str, list[float]] = {}  # key -> [count, expires_at]

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        window = self.counters.get(key)
        if window is None or window[1] <= now:
            if len(self.counters) >= self.MAX_KEYS:
                self.counters = {k: w for k, w in self.counters.items() if w[1] > now}
            window = self.counters[key] = [0, now + expiry]
        window[0] += amount
        return int(window[0])

    def get(self, key: str) -> int:
        window = self.counters.get(key)
        return int(window[0]) if window is not None and window[1] > time.time() else 0

    def get_expiry(self, key: str) -> float:
        window = self.counters.get(key)
        return window[1] if window is not None else time.time()

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        count = len(self.counters)
        self.counters.clear()
        return count

    def clear(self, key: str) -> None:
        self.counters.pop(key, None)


class RateLimits:
    def __init__(self, *, per_tenant: str, public: str, api_key_default_per_minute: int):
        self.storage = LocalStorage()
        self.tenant_item = parse(per_tenant)
        self.public_item: RateLimitItem | None = parse(public) if public.strip() else None
        self.api_key_default = api_key_default_per_minute
        self._per_minute: dict[int, RateLimitItem] = {}

    def _key_item(self, per_minute: int) -> RateLimitItem:
        per_minute = per_minute or self.api_key_default
        item = self._per_minute.get(per_minute)
        if item is None:
            item = self._per_minute[per_minute] = RateLimitItemPerMinute(per_minute)
        return item

    async def check(
        self, tenant_id: str, api_key_id: str = "", api_key_per_minute: int = 0
    ) -> dict[str, str]:
        """Counts one request of the caller; returns the RateLimit headers or raises a 429 problem."""
        checks = []
        if api_key_id:
            checks.append((self._key_item(api_key_per_minute), "key", api_key_id, "API key"))
        checks.append((self.tenant_item, "tenant", tenant_id, "tenant"))
        return await self._run(checks)

    async def check_public(self, client_ip: str) -> dict[str, str]:
        if self.public_item is None:
            return {}
        return await self._run([(self.public_item, "ip", client_ip, "client address")])

    async def _run(self, checks: list[tuple[RateLimitItem, str, str, str]]) -> dict[str, str]:
        tightest: tuple[int, int, int] | None = None  # remaining, limit, reset
        for item, kind, ident, label in checks:
            # limits' fixed window, with the count read from the increment itself (one storage call).
            key = item.key_for(kind, ident)
            count = self.storage.incr(key, item.get_expiry())
            remaining = max(0, item.amount - count)
            reset = max(1, math.ceil(self.storage.get_expiry(key) - time.time()))
            if count > item.amount:
                headers = _headers(item.amount, 0, reset)
                headers["Retry-After"] = str(reset)
                raise ProblemError(
                    429,
                    "rate_limited",
                    f"the {label}'s limit of {item.amount} requests per {_window(item)} is used up; "
                    f"retry in {reset} s",
                    headers=headers,
                )
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, item.amount, reset)
        assert tightest is not None
        return _headers(tightest[1], tightest[0], tightest[2])

    def reset(self) -> None:
        self.storage.reset()


def _headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(reset),
    }


def _window(item: RateLimitItem) -> str:
    seconds = item.get_expiry()
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(seconds, f"{seconds} s")

"""Login sessions of the web pages, kept on the server.

The cookie holds a random session id, never the key: a cookie that leaks (a proxy log, a
shared machine's browser profile) stops working when the session ends, on logout, or when the
key behind it is removed, since every page view checks the session's credential against the
keys in force right then. Sessions live in memory: a restart signs everyone out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

SESSION_TTL_S = 8 * 3600  # a working day; then the login form again
MAX_SESSIONS = 10_000  # past it the oldest go first: a login flood cannot grow memory


class Sessions:
    """Session id → (credential, expiry). Ids are looked up by their hash, so the table holds
    nothing a cookie could be rebuilt from."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._table: dict[bytes, tuple[str, float]] = {}  # insertion order = age

    def open(self, credential: str) -> str:
        """A new session for `credential` (what the app re-checks on each view); its id."""
        self._prune()
        while len(self._table) >= self.max_sessions:
            del self._table[next(iter(self._table))]
        session_id = secrets.token_urlsafe(32)
        self._table[_key(session_id)] = (credential, self._clock() + self.ttl_s)
        return session_id

    def credential(self, session_id: str | None) -> str | None:
        """The credential of a live session; None for no, an unknown or an expired id."""
        if not session_id:
            return None
        key = _key(session_id)
        found = self._table.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            del self._table[key]
            return None
        return found[0]

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._table.pop(_key(session_id), None)

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expiry) in self._table.items() if expiry <= now]:
            del self._table[key]


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()

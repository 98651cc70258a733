"""The request's `model` field → no adapter (the base) or a registry manifest.

Moving references (a bare name, an alias) are cached for a short TTL so that an alias moved in
the registry takes effect within seconds; pinned ones (`name@7`, `name@sha256:…`) never change
and are cached for longer. When an entry expires, concurrent requests for the same reference
share one registry lookup (single flight): a hot alias costs the registry one call per TTL, not
one per waiting request. A registry error becomes the server's answer in `errors.registry_failure`:
unknown names are 404, a registry that cannot answer is 503.

Moving references are monotonic per server: once `name:prod` (or `name`) has resolved to a
version here, an answer naming an older version is taken only when the registry shows that the
reference really went back (its audit log has the alias moved to the answer after it pointed at
the newer version; for a bare name, the newer version was deleted). Otherwise the answer comes
from a registry that lags (a replica of its index behind the primary, a cache) and the newer
version stays. So replicas behind one registry each serve a moved alias within the TTL and no
replica ever serves a version older than one it already served, rollbacks apart.

An alias with a weighted canary (``loramux registry alias set NAME prod 4 --canary 5:10%``) is
looked up as a split (stable, canary, weight) and decided per request in :func:`choose`, the one
place that picks: sticky per user (the request's ``user`` field, else the ``X-Loramux-User``
header), random without one. The monotonic rule applies to the stable version; the canary may
come and go (a rollback sets its weight to 0). :meth:`Resolver.route` says whether the split
chose the version: only such requests count per version in the metrics the rollback rule
reads, so a caller who pins the canary (``name@N``, a digest) cannot sway them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from loramux.registry.canary import Split
from loramux.registry.errors import REGISTRY_FAILURES, InvalidName
from loramux.registry.errors import InvalidRequest as NoHistory
from loramux.registry.manifest import Manifest
from loramux.registry.refs import AdapterRef
from loramux.server.errors import ServerError, registry_failure
from loramux.server.hub_refs import HubReferences, is_hub_reference, refuse
from loramux.server.registry_io import registry_io
from loramux.wire import USER_HEADER

log = logging.getLogger(__name__)
T = TypeVar("T")

# A pinned reference never points elsewhere, but it can be yanked: keep that visible soon too.
PINNED_TTL_S = 30.0


def with_user_header(req: T, headers: Mapping[str, str]) -> T:
    """The request with ``user`` taken from the ``X-Loramux-User`` header when its body has
    none (the body's field wins): what canary stickiness keys on."""
    user = headers.get(USER_HEADER)
    if getattr(req, "user", None) or not user:
        return req
    return req.model_copy(update={"user": user[:512]})  # type: ignore[attr-defined]


def sticky_point(model: str, user: str) -> float:
    """Where ``user`` falls in [0, 1) for ``model``: the same on every server and restart, so a
    conversation stays on one side, and a raised weight only moves users onto the canary."""
    digest = hashlib.sha256(f"{model}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(stable: Manifest, canary: Manifest | None, weight: float, model: str,
           user: str | None) -> Manifest:
    """The version one request for ``model`` gets: ``canary`` for ``weight`` of the users
    (sticky), else ``stable``."""
    if canary is None or weight <= 0:
        return stable
    point = sticky_point(model, user) if user else random.random()
    return canary if point < weight else stable


@dataclass(frozen=True)
class Route:
    """The version one request gets, and whether an alias's live canary split chose it (stable
    side or canary side). Only such requests count towards the per-version figures a canary is
    judged on: a caller who pins ``name@N`` or a digest chose the version itself."""

    manifest: Manifest
    by_split: bool = False


@dataclass
class _Entry:
    manifest: Manifest | None  # the stable version
    error: ServerError | None
    expires: float
    canary: Manifest | None = None
    weight: float = 0.0


class Resolver:
    def __init__(self, registry, served_name: str, ttl_s: float = 2.0, max_entries: int = 10_000,
                 hub: HubReferences | None = None):
        self._registry = registry
        self._hub = hub or HubReferences()  # `hf://` references: none allowed unless told
        self.served_name = served_name
        self.ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        self._lookups: dict[str, asyncio.Task[_Entry]] = {}  # in flight, one per reference
        self._newest: dict[str, Manifest] = {}  # per moving reference, the newest it named here

    def is_base(self, model: str) -> bool:
        return model == self.served_name

    async def resolve(self, model: str, user: str | None = None) -> Manifest:
        """Manifest for an adapter reference (for an alias with a canary, the side ``user``
        falls on); ModelNotFound for unknown or invalid refs, RegistryUnavailable when the
        registry cannot answer (remembered for the TTL too)."""
        return (await self.route(model, user)).manifest

    async def route(self, model: str, user: str | None = None) -> Route:
        """`resolve`, saying too whether a canary split chose the version."""
        entry = self._cache.get(model)
        if entry is None or entry.expires < time.monotonic():
            entry = await self._shared_lookup(model)
        if entry.error is not None:
            raise entry.error
        assert entry.manifest is not None
        split = entry.canary is not None and entry.weight > 0
        return Route(choose(entry.manifest, entry.canary, entry.weight, model, user), split)

    async def _shared_lookup(self, model: str) -> _Entry:
        """One registry lookup per reference at a time; every waiter gets its answer.

        The lookup is a task of its own and waiters are shielded from it, so a client that goes
        away (its request cancelled) does not cancel the lookup the others wait for."""
        task = self._lookups.get(model)
        if task is None:
            task = asyncio.get_running_loop().create_task(registry_io(self._lookup, model))
            self._lookups[model] = task
            task.add_done_callback(lambda done: self._store(model, done))
        return await asyncio.shield(task)

    def _store(self, model: str, task: asyncio.Task[_Entry]) -> None:
        if self._lookups.get(model) is task:
            del self._lookups[model]
        if task.cancelled() or task.exception() is not None:
            return  # nothing to remember; the waiters see the exception
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[model] = task.result()

    def _lookup(self, model: str) -> _Entry:
        if is_hub_reference(model):
            return self._hub_lookup(model)
        try:
            ref = AdapterRef.parse(model)
        except InvalidName as exc:
            error = registry_failure(exc, model, self.served_name)
            return _Entry(None, error, time.monotonic() + PINNED_TTL_S)
        ttl = PINNED_TTL_S if ref.pins_version else self.ttl_s
        try:
            split = self._split(ref)
        except REGISTRY_FAILURES as exc:
            error = registry_failure(exc, model, self.served_name)
            return _Entry(None, error, time.monotonic() + self.ttl_s)
        manifest = split.stable
        if not ref.pins_version:
            manifest = self._monotonic(ref, model, manifest)
        return _Entry(manifest, None, time.monotonic() + ttl, split.canary, split.weight)

    def _hub_lookup(self, model: str) -> _Entry:
        """A Hub reference, imported into the registry on first use (``hub_refs``); kept like a
        pinned reference, except that a Hub that could not be reached is not remembered."""
        try:
            manifest = self._hub.lookup(self._registry, model, self.served_name)
        except ServerError as exc:
            return _Entry(None, exc, time.monotonic() + (self.ttl_s if refuse(exc) else 0.0))
        return _Entry(manifest, None, time.monotonic() + PINNED_TTL_S)

    def _split(self, ref: AdapterRef) -> Split:
        """An alias's split (stable, canary, weight); any other reference is its one manifest
        (as a registry without canaries answers for an alias: ``Registry.resolve_split``)."""
        if ref.alias is None:
            return Split(stable=self._registry.resolve(ref))
        return self._registry.resolve_split(ref)

    def _monotonic(self, ref: AdapterRef, model: str, answer: Manifest) -> Manifest:
        """`answer`, unless it is older than what `model` named here before and the registry
        cannot show that the reference went back (see the module's docstring)."""
        newest = self._newest.get(model)
        if newest is not None and answer.version < newest.version:
            try:
                went_back = self._went_back(ref, answer, newest)
            except NoHistory:  # a read-only OCI mirror keeps no history: trust its answer
                went_back = True
            except REGISTRY_FAILURES as exc:
                log.warning("cannot check why `%s` went back to %s: %s", model, answer.ref, exc)
                went_back = False
            if not went_back:
                log.warning("the registry answered %s for `%s`, older than %s already served "
                            "here and not moved back: a lagging registry; keeping %s",
                            answer.ref, model, newest.ref, newest.ref)
                return newest
        if len(self._newest) >= self._max_entries:
            self._newest.clear()
        self._newest[model] = answer
        return answer

    def _went_back(self, ref: AdapterRef, answer: Manifest, newest: Manifest) -> bool:
        if ref.alias is None:  # the latest goes back only when the newer version is deleted
            return any(v.version == newest.version and v.deleted  # (a lagging index lacks it)
                       for v in self._registry.list(name=ref.name, include_deleted=True))
        moves = [e for e in self._registry.log(name=ref.name, alias=ref.alias, limit=1000)
                 if e.action == "alias_set"]  # newest first
        current = next((i for i, e in enumerate(moves) if e.version == answer.version), None)
        return current is not None and any(e.version == newest.version
                                           for e in moves[current + 1:])

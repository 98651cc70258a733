"""The models this server serves: a `model` string → the base, or a leased adapter.

One path for every caller (the completion handlers, admin load and unload, `--pin` and
`/v1/models`): resolve the reference, check that this base and engine can serve it, lease it from
the adapter manager. So a refusal, the quantization warning and a registry outage are each
decided here once (vLLM's `OpenAIServingModels` has the same job).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from loramux.registry.errors import REGISTRY_FAILURES, InvalidName, NotFound
from loramux.registry.manifest import Manifest
from loramux.registry.refs import AdapterRef
from loramux.server import compat
from loramux.server.adapters import AdapterManager
from loramux.server.auth import Principal, check_adapter
from loramux.server.engines.base import AdapterHandle
from loramux.server.errors import IncompatibleAdapter, ModelNotFound, registry_failure
from loramux.server.gateway_metrics import ClientNames
from loramux.server.metrics import BASE, NO_VERSION, OTHER, Metrics
from loramux.server.protocol import ModelCard, now
from loramux.server.resolver import Resolver, Route

log = logging.getLogger(__name__)
T = TypeVar("T")
# The listing's registry calls run here, not on the default pool that tokenization and the
# adapter fetches share: a flood of `/v1/models` can then only queue behind itself.
LISTING_THREADS = 2


@dataclass(frozen=True)
class _Listing:
    """The registry's side of `/v1/models`, kept for the resolve TTL: (info, manifest) pairs."""

    entries: tuple[tuple[Any, Manifest], ...]
    expires: float


@dataclass(frozen=True)
class Target:
    """What a `model` string names: the base (manifest None) or an adapter this server can
    serve, with its metrics label and the quantization warning, if any."""

    model: str
    label: str
    manifest: Manifest | None = None
    warning: str | None = None
    version: str = NO_VERSION  # the metrics' version label


class ServingModels:
    def __init__(self, registry, resolver: Resolver, adapters: AdapterManager,
                 base: compat.ServedBase, metrics: Metrics, root: str) -> None:
        self.registry = registry
        self.resolver = resolver
        self.adapters = adapters
        self.base = base
        self.metrics = metrics
        self.root = root  # what the base card names as its source (folder or Hub id)
        self._warned: set[str] = set()
        # By name and version, not by digest: two tenants may push the same bytes, and one's
        # card must never be built from (and name) the other's manifest.
        self._manifests: dict[tuple[str, int, str], Manifest] = {}
        self._listings: dict[bool, _Listing] = {}
        self._listing_tasks: dict[bool, asyncio.Future[_Listing]] = {}
        self._io = ThreadPoolExecutor(LISTING_THREADS, thread_name_prefix="loramux-listing")
        self._probe: asyncio.Future[None] | None = None
        self.client_names = ClientNames()  # for the gateway's LoRA-affinity metrics

    @property
    def served_name(self) -> str:
        return self.resolver.served_name

    def unknown_label(self, model: str) -> str:
        """The metrics label of a request that failed before its adapter was known."""
        return BASE if self.resolver.is_base(model) else OTHER

    async def _resolve(self, model: str, principal: Principal | None,
                       user: str | None = None) -> Manifest:
        """The one call to the resolver, with the API key's adapter scope checked on the name the
        reference spells and again on the name it resolved to (None: internal, e.g. `--pin`).
        `user` keeps a caller on one side of an alias's canary."""
        return (await self._route(model, principal, user)).manifest

    async def _route(self, model: str, principal: Principal | None,
                     user: str | None = None) -> Route:
        """`_resolve`, saying too whether an alias's canary split chose the version."""
        check_adapter(principal, model)
        route = await self.resolver.route(model, user)
        check_adapter(principal, model, route.manifest.name)
        return route

    async def target(self, model: str, principal: Principal | None,
                     user: str | None = None) -> Target:
        """Resolve and check `model`: raises ModelNotFound, IncompatibleAdapter (with the reason),
        AdapterForbidden or RegistryUnavailable. The quantization warning is logged once per
        adapter version."""
        if self.resolver.is_base(model):
            return Target(model, BASE)
        route = await self._route(model, principal, user)
        manifest = route.manifest
        warning = compat.check(manifest, self.base)
        self.client_names.saw(model, manifest)
        if warning and manifest.digest not in self._warned:
            self._warned.add(manifest.digest)
            log.warning(warning)
        # Through an alias, the version may be a canary that `rollout watch` must see.
        reserve = _names_alias(model)
        label = self.metrics.label(manifest.name, reserve)
        # Per version only what a canary split routed, the figures it is judged on: a caller
        # who pins `name@N` (or a digest) must not sway them, nor take a label for it.
        version = (self.metrics.version(label, manifest.version, reserve) if route.by_split
                   else NO_VERSION)
        return Target(model, label, manifest, warning, version)

    @asynccontextmanager
    async def lease(self, target: Target) -> AsyncIterator[AdapterHandle | None]:
        """The adapter loaded and held for one request (None for the base)."""
        if target.manifest is None:
            yield None
            return
        async with self.adapters.lease(target.manifest) as handle:
            yield handle

    async def load(self, model: str, principal: Principal | None) -> dict[str, Any]:
        """Admin load: make an adapter resident ahead of traffic."""
        target = await self._adapter(model, principal)
        handle = await self.adapters.load(target.manifest)
        return {"model": model, "ref": target.manifest.ref, "digest": target.manifest.digest,
                "lora_id": handle.lora_id, "resident": True, "warning": target.warning}

    async def unload(self, model: str, principal: Principal | None) -> dict[str, Any]:
        """Admin unload: drop an idle adapter from the engine (it stays in the disk cache)."""
        manifest = await self._resolve(model, principal)
        unloaded = await self.adapters.unload(manifest.digest)
        return {"model": model, "ref": manifest.ref, "digest": manifest.digest,
                "unloaded": unloaded, "resident": self.adapters.is_resident(manifest.digest)}

    async def pin(self, refs: list[str]) -> None:
        """`--pin`: load each adapter now and never evict it."""
        for ref in refs:
            target = await self._adapter(ref, None)
            self.adapters.pin(target.manifest.digest)
            await self.adapters.load(target.manifest)

    async def _adapter(self, model: str, principal: Principal | None) -> Target:
        target = await self.target(model, principal)
        if target.manifest is None:
            raise IncompatibleAdapter(f"`{model}` is the base model, not an adapter",
                                      param="model")
        return target

    async def registry_ready(self) -> None:
        """For `/ready` (unauthenticated): `check_registry` on the listing's own threads, one
        probe at a time shared by every caller, so a flood of probes never takes the default
        pool's threads (tokenization, fetches) nor more than one registry query at once."""
        if self._probe is None:
            self._probe = asyncio.get_running_loop().run_in_executor(self._io,
                                                                     self.check_registry)
            self._probe.add_done_callback(self._probe_done)
        await asyncio.shield(self._probe)

    def _probe_done(self, _: asyncio.Future[None]) -> None:
        self._probe = None

    def check_registry(self) -> None:
        """For `/ready`: the registry answers a cheap query, else RegistryUnavailable."""
        try:
            self.registry.list(name="loramux-ready-probe")
        except (*REGISTRY_FAILURES, ValueError) as exc:
            raise registry_failure(exc, None, self.served_name) from exc

    async def cards(self, include_refused: bool = False) -> list[ModelCard]:
        """`/v1/models`: the base and every adapter this server can serve; with
        `include_refused`, every adapter in the registry, refused ones with the reason. The
        registry's answer is kept for the resolve TTL and shared by concurrent callers, so a
        caller that repeats the listing costs the registry one query per TTL."""
        listing = self._listings.get(include_refused)
        if listing is None or listing.expires < time.monotonic():
            listing = await self._shared_listing(include_refused)
        cards = [ModelCard(id=self.served_name, created=now(), resident=True, root=self.root)]
        for info, manifest in listing.entries:
            card = self._card(info, manifest)
            if card.refused is None or include_refused:
                cards.append(card)
        return cards

    async def _shared_listing(self, include_refused: bool) -> _Listing:
        task = self._listing_tasks.get(include_refused)
        if task is None:
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(self._io, self._list, include_refused)
            self._listing_tasks[include_refused] = task
            task.add_done_callback(lambda _: self._listing_tasks.pop(include_refused, None))
        listing = await asyncio.shield(task)
        self._listings[include_refused] = listing
        return listing

    def _list(self, include_refused: bool) -> _Listing:
        infos = self._registry_call(lambda: self.registry.list(
            base_fingerprint=None if include_refused else self.base.fingerprint))
        entries = []
        for info in infos:
            key = (info.name, info.version, info.digest)
            manifest = self._manifests.get(key)
            if manifest is None:
                try:
                    manifest = self._registry_call(
                        lambda i=info: self.registry.show(f"{i.name}@{i.version}"))
                except ModelNotFound:  # deleted since the listing: it is simply not served
                    continue
                self._manifests[key] = manifest
            entries.append((info, manifest))
        return _Listing(tuple(entries), time.monotonic() + self.resolver.ttl_s)

    def _registry_call(self, call: Callable[[], T]) -> T:
        """A registry call for the listing: a version gone is ModelNotFound, a registry that
        cannot answer, or answers something unreadable (ValueError: a malformed manifest from a
        broken remote), is RegistryUnavailable (503, Retry-After), never a 500."""
        try:
            return call()
        except NotFound as exc:
            raise ModelNotFound(str(exc)) from exc
        except (*REGISTRY_FAILURES, ValueError) as exc:
            raise registry_failure(exc, None, self.served_name) from exc

    def _card(self, info, manifest: Manifest) -> ModelCard:
        warning = refused = None
        try:
            warning = compat.check(manifest, self.base)
        except IncompatibleAdapter as exc:  # requests for it get the same reason
            refused = exc.message
        return ModelCard(
            id=f"{info.name}@{info.version}", created=int(info.created_at.timestamp()),
            parent=self.served_name, root=info.name, digest=info.digest,
            resident=self.adapters.is_resident(info.digest), aliases=info.aliases,
            quantization_mismatch=warning, refused=refused)


def _names_alias(model: str) -> bool:
    """Whether `model` spells an alias (`name:prod`): where stable and canary versions live."""
    try:
        return AdapterRef.parse(model).alias is not None
    except InvalidName:
        return False

"""The models this server serves: a `model` string → the base, or a leased adapter.

One path for every caller (the completion handlers, admin load and unload, `--pin` and
`/v1/models`): resolve the reference, check that this base and engine can serve it, lease it from
the adapter manager. So a refusal, the quantization warning and a registry outage are each
decided here once (vLLM's `OpenAIServingModels` has the same job).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from loramux.registry.errors import REGISTRY_FAILURES, NotFound
from loramux.registry.manifest import Manifest
from loramux.server import compat
from loramux.server.adapters import AdapterManager
from loramux.server.auth import Principal, check_adapter
from loramux.server.engines.base import AdapterHandle
from loramux.server.errors import IncompatibleAdapter, ModelNotFound, registry_failure
from loramux.server.gateway_metrics import ClientNames
from loramux.server.metrics import BASE, NO_VERSION, OTHER, Metrics
from loramux.server.protocol import ModelCard, now
from loramux.server.resolver import Resolver

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self._manifests: dict[str, Manifest] = {}
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
        check_adapter(principal, model)
        manifest = await self.resolver.resolve(model, user)
        check_adapter(principal, model, manifest.name)
        return manifest

    async def target(self, model: str, principal: Principal | None,
                     user: str | None = None) -> Target:
        """Resolve and check `model`: raises ModelNotFound, IncompatibleAdapter (with the reason),
        AdapterForbidden or RegistryUnavailable. The quantization warning is logged once per
        adapter version."""
        if self.resolver.is_base(model):
            return Target(model, BASE)
        manifest = await self._resolve(model, principal, user)
        warning = compat.check(manifest, self.base)
        self.client_names.saw(model, manifest)
        if warning and manifest.digest not in self._warned:
            self._warned.add(manifest.digest)
            log.warning(warning)
        label = self.metrics.label(manifest.name)
        version = self.metrics.version(label, manifest.version)
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

    def check_registry(self) -> None:
        """For `/ready`: the registry answers a cheap query, else RegistryUnavailable."""
        try:
            self.registry.list(name="loramux-ready-probe")
        except (*REGISTRY_FAILURES, ValueError) as exc:
            raise registry_failure(exc, None, self.served_name) from exc

    async def cards(self, include_refused: bool = False) -> list[ModelCard]:
        """`/v1/models`: the base and every adapter this server can serve; with
        `include_refused`, every adapter in the registry, refused ones with the reason."""
        return await asyncio.to_thread(self._cards, include_refused)

    def _cards(self, include_refused: bool) -> list[ModelCard]:
        cards = [ModelCard(id=self.served_name, created=now(), resident=True, root=self.root)]
        infos = self._registry_call(lambda: self.registry.list(
            base_fingerprint=None if include_refused else self.base.fingerprint))
        for info in infos:
            manifest = self._manifests.get(info.digest)
            if manifest is None:
                try:
                    manifest = self._registry_call(
                        lambda i=info: self.registry.show(f"{i.name}@{i.version}"))
                except ModelNotFound:  # deleted since the listing: it is simply not served
                    continue
                self._manifests[info.digest] = manifest
            card = self._card(info, manifest)
            if card.refused is None or include_refused:
                cards.append(card)
        return cards

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

"""The request's `model` field → no adapter (the base) or a registry manifest.

Moving references (a bare name, an alias) are cached for a short TTL so that an alias moved in
the registry takes effect within seconds; pinned ones (`name@7`, `name@sha256:…`) never change
and are cached for longer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from loramux.registry.errors import InvalidName, NotFound, RegistryError
from loramux.registry.manifest import Manifest
from loramux.registry.refs import AdapterRef
from loramux.server.errors import AdapterUnavailable, ModelNotFound

log = logging.getLogger(__name__)

# A pinned reference never points elsewhere, but it can be yanked: keep that visible soon too.
PINNED_TTL_S = 30.0


@dataclass
class _Entry:
    manifest: Manifest | None
    error: Exception | None
    expires: float


class Resolver:
    def __init__(self, registry, served_name: str, ttl_s: float = 2.0, max_entries: int = 10_000):
        self._registry = registry
        self.served_name = served_name
        self.ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}

    def is_base(self, model: str) -> bool:
        return model == self.served_name

    async def resolve(self, model: str) -> Manifest:
        """Manifest for an adapter reference; raises ModelNotFound for unknown or invalid refs."""
        entry = self._cache.get(model)
        now = time.monotonic()
        if entry is None or entry.expires < now:
            entry = await asyncio.to_thread(self._lookup, model)
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[model] = entry
        if entry.error is not None:
            raise entry.error
        assert entry.manifest is not None
        return entry.manifest

    def _lookup(self, model: str) -> _Entry:
        try:
            ref = AdapterRef.parse(model)
        except InvalidName as exc:
            error = ModelNotFound(f"The model `{model}` does not exist: {exc}", param="model")
            return _Entry(None, error, time.monotonic() + PINNED_TTL_S)
        ttl = PINNED_TTL_S if ref.pins_version else self.ttl_s
        try:
            manifest = self._registry.resolve(ref)
        except NotFound as exc:
            error = ModelNotFound(
                f"The model `{model}` does not exist: it is neither the served base "
                f"`{self.served_name}` nor a registry adapter ({exc})", param="model")
            return _Entry(None, error, time.monotonic() + self.ttl_s)
        except RegistryError as exc:
            log.warning("registry lookup of %s failed: %s", model, exc)
            return _Entry(None, AdapterUnavailable(f"registry lookup of `{model}` failed: {exc}"),
                          time.monotonic() + self.ttl_s)
        return _Entry(manifest, None, time.monotonic() + ttl)

    def forget(self, model: str | None = None) -> None:
        if model is None:
            self._cache.clear()
        else:
            self._cache.pop(model, None)

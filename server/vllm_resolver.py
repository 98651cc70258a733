"""A LoRA resolver plugin for stock vLLM: `vllm serve BASE --enable-lora` serves registry adapters.

vLLM asks its registered resolvers about a request's ``model`` when it is neither the base nor an
adapter it already loaded (only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). This resolver
reads loramux references (``name``, ``name@7``, ``name:prod``, ``name@sha256:…``), resolves them
in a loramux registry (a folder, or an ``http(s)://`` URL with a token), fetches the files through
the digest-verified cache `loramux serve` uses (``adapter_cache.py``) and refuses an adapter whose
manifest names another base, with the server's own check (``compat.check_base``) and errors.

It is registered through the ``vllm.general_plugins`` entry point and stays a no-op unless
``LORAMUX_VLLM_REGISTRY`` is set (docs/vllm-resolver.md lists the variables).

The cache folder has the server's byte budget (``LORAMUX_VLLM_MAX_CACHE_BYTES``, default the
same as ``--max-cache-bytes``), so a client naming adapter after adapter cannot fill the disk.
Before a download the least recently used folders nobody holds are trimmed (`AdapterCache.trim`);
what this vLLM has served stays held, since vLLM never says when it is done with one, so when
held folders fill the budget a new adapter is refused with a 503 (``adapter_cache_full``) rather
than written.

Refusals are raised, not returned: vLLM answers a resolver's ``None`` with a bare "does not
exist", while an exception derived from its ``GracefulHTTPError`` reaches the client as an
OpenAI-shaped error with our message and status. A model string that is not a loramux reference
at all gets ``None``, so other resolvers may still claim it.

vLLM keeps what a resolver returned for the life of the process, keyed by the request's model
string, and numbers adapters itself (it overwrites ``lora_int_id``): an alias moved later is seen
by this server only after ``/v1/unload_lora_adapter`` for that model string.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from loramux.errors import LoramuxError
from loramux.registry import is_url
from loramux.registry import open as open_registry
from loramux.registry.base import Registry
from loramux.registry.digests import hex_of
from loramux.registry.errors import (
    REGISTRY_FAILURES,
    Conflict,
    IntegrityError,
    InvalidBaseModel,
    InvalidName,
    NotFound,
)
from loramux.registry.fingerprint import base_components, fingerprint_of
from loramux.registry.manifest import Manifest
from loramux.registry.refs import AdapterRef, validate_digest
from loramux.server.adapter_cache import DEFAULT_MAX_CACHE_BYTES, DISK_FULL, AdapterCache
from loramux.server.compat import check_base
from loramux.server.errors import (
    AdapterTooLarge,
    CacheFull,
    RegistryAnswerRefused,
    RegistryUnavailable,
    SettingsError,
)

log = logging.getLogger(__name__)

# The plugin's own variables: a vLLM process is not a loramux client (LORAMUX_REGISTRY and
# LORAMUX_TOKEN, in loramux.wire, are the CLI's and the server's).
ENV_VLLM_REGISTRY = "LORAMUX_VLLM_REGISTRY"
ENV_VLLM_TOKEN = "LORAMUX_VLLM_TOKEN"
ENV_VLLM_CACHE_DIR = "LORAMUX_VLLM_CACHE_DIR"
ENV_VLLM_BASE_FINGERPRINT = "LORAMUX_VLLM_BASE_FINGERPRINT"
ENV_VLLM_MAX_CACHE_BYTES = "LORAMUX_VLLM_MAX_CACHE_BYTES"
# The same folder `loramux serve` uses by default: sharing it between processes is safe.
DEFAULT_CACHE_DIR = Path("~/.cache/loramux/adapters")
RESOLVER_NAME = "loramux"


class BaseUnknown(SettingsError):
    """The served base cannot be fingerprinted, so no adapter can be checked against it (500)."""


@dataclass(frozen=True)
class ResolverSettings:
    """The plugin's configuration, read from the environment in one place."""

    registry: str
    token: str | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    base_fingerprint: str | None = None  # for a base vLLM loads from somewhere not on disk
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ResolverSettings | None:
        """None when ``LORAMUX_VLLM_REGISTRY`` is unset (the plugin stays off).

        Raises ``InvalidName`` for a bad URL scheme, fingerprint or byte budget: vLLM then fails
        at start, which beats refusing every request later.
        """
        location = env.get(ENV_VLLM_REGISTRY, "").strip()
        if not location:
            return None
        if not is_url(location) and not Path(location).expanduser().is_dir():
            raise InvalidName(f"{ENV_VLLM_REGISTRY}={location!r} is neither an http(s):// URL "
                              "nor a folder holding a loramux registry")
        fingerprint = env.get(ENV_VLLM_BASE_FINGERPRINT, "").strip() or None
        if fingerprint is not None:
            validate_digest(fingerprint, full=True)
        cache_dir = Path(env.get(ENV_VLLM_CACHE_DIR, "").strip()
                         or DEFAULT_CACHE_DIR).expanduser()
        budget = env.get(ENV_VLLM_MAX_CACHE_BYTES, "").strip()
        if budget and not (budget.isdigit() and int(budget) > 0):
            raise InvalidName(f"{ENV_VLLM_MAX_CACHE_BYTES}={budget!r} is not a positive number "
                              "of bytes")
        return cls(location, env.get(ENV_VLLM_TOKEN, "").strip() or None, cache_dir, fingerprint,
                   int(budget) if budget else DEFAULT_MAX_CACHE_BYTES)


@dataclass(frozen=True)
class Resolved:
    """What vLLM needs to load one adapter (turned into its ``LoRARequest`` by the plugin)."""

    lora_name: str  # the request's model string: vLLM's key and the response's `model`
    lora_int_id: int
    path: Path
    manifest: Manifest


def lora_int_id(digest: str) -> int:
    """A positive int32 from the adapter digest: the same adapter gets the same id everywhere."""
    return int(hex_of(digest)[:8], 16) & 0x7FFFFFFF or 1


@dataclass(frozen=True)
class _ServedBase:
    fingerprint: str
    components: dict[str, str] | None  # None when the fingerprint was given, not computed


class RegistryResolver:
    """The resolver's logic, free of vLLM: reference → checked, verified local adapter folder.

    Blocking (registry calls, hashing); the vLLM plugin runs it in a worker thread. Thread-safe.
    """

    def __init__(self, settings: ResolverSettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self._registry = registry
        self._cache: AdapterCache | None = None
        self._bases: dict[str, _ServedBase] = {}
        self._lock = threading.Lock()
        self._budget_lock = threading.Lock()
        self._reserved = 0  # bytes of downloads under way in this process, not yet on disk

    def resolve(self, base_model_name: str, lora_name: str) -> Resolved | None:
        """The adapter ``lora_name`` names, fetched and checked for ``base_model_name``.

        Returns None when ``lora_name`` is not a loramux reference. Raises ``NotFound`` (no such
        adapter), ``Conflict`` (ambiguous digest prefix), ``IncompatibleAdapter`` (another
        base), ``IntegrityError`` (bytes not matching the digest), ``RegistryAnswerRefused``
        (the registry answered another version than the reference pins),
        ``RegistryUnavailable``, ``AdapterTooLarge`` (more than the whole cache budget),
        ``CacheFull`` (held adapters fill the budget) and ``BaseUnknown``; each is logged with
        its reason.
        """
        try:
            ref = AdapterRef.parse(lora_name)
        except InvalidName as exc:
            log.info("loramux resolver: %r is not a registry reference (%s)", lora_name, exc)
            return None
        try:
            base = self._served_base(base_model_name)
            manifest = self._lookup(ref)
            check_base(manifest, base.fingerprint, base.components, asked=lora_name,
                       base_name=base_model_name)
            path = self._fetch(manifest)
        except LoramuxError as exc:  # the registry's errors and the server's, each with a status
            log.warning("loramux resolver refused `%s` (HTTP %d): %s", lora_name, exc.status,
                        exc.message)
            raise
        log.info("loramux resolver: `%s` is %s (%s) at %s", lora_name, manifest.ref,
                 manifest.digest, path)
        return Resolved(lora_name, lora_int_id(manifest.digest), path, manifest)

    def _open(self) -> tuple[Registry, AdapterCache]:
        with self._lock:
            if self._registry is None:
                try:
                    self._registry = open_registry(self.settings.registry,
                                                   token=self.settings.token, create=False)
                except REGISTRY_FAILURES as exc:
                    raise unavailable(f"cannot open the loramux registry: {exc}", exc) from exc
            if self._cache is None:
                try:
                    self._cache = AdapterCache(self.settings.cache_dir)
                    self._cache.sweep()  # what crashed fetches left, uncounted by the budget
                except OSError as exc:
                    raise unavailable(f"cannot use the adapter cache folder: {exc}", exc) from exc
            return self._registry, self._cache

    def _served_base(self, base_model_name: str) -> _ServedBase:
        """The served base's fingerprint, computed once per base name (about 1 MiB read)."""
        if self.settings.base_fingerprint is not None:
            return _ServedBase(self.settings.base_fingerprint, None)
        known = self._bases.get(base_model_name)
        if known is not None:
            return known
        folder = base_folder(base_model_name)
        try:
            components = base_components(folder)
        except (InvalidBaseModel, OSError) as exc:
            raise BaseUnknown(f"cannot fingerprint the served base `{base_model_name}` ({exc}); "
                              f"set {ENV_VLLM_BASE_FINGERPRINT}") from exc
        served = _ServedBase(fingerprint_of(components), components)
        log.info("loramux resolver: served base `%s` has fingerprint %s", base_model_name,
                 served.fingerprint)
        with self._lock:
            return self._bases.setdefault(base_model_name, served)

    def _lookup(self, ref: AdapterRef) -> Manifest:
        registry, _ = self._open()
        try:
            manifest = registry.resolve(ref)
        except NotFound as exc:
            raise NotFound(f"adapter `{ref}` is not in the loramux registry: {exc}") from exc
        except Conflict as exc:
            raise Conflict(f"adapter reference `{ref}` is ambiguous: {exc}") from exc
        except IntegrityError as exc:  # it answered another version (Registry.resolve checks)
            raise RegistryAnswerRefused(f"the loramux registry's answer for `{ref}` was "
                                        f"refused: {exc}") from exc
        except REGISTRY_FAILURES as exc:
            raise unavailable(f"the loramux registry cannot answer for `{ref}`", exc) from exc
        return manifest  # checked against `ref` by the registry client (check_answer)

    def _fetch(self, manifest: Manifest) -> Path:
        """The verified cache folder, held for the life of the process: vLLM may read it again
        whenever its own CPU cache drops the adapter, and never says when it is done."""
        registry, cache = self._open()
        cache.hold(manifest.digest)  # before the budget's trim, which skips held folders
        try:
            with self._room_for(cache, manifest):
                path, damage = cache.fetch_verified(registry, manifest)
        except BaseException as exc:
            cache.release(manifest.digest)  # nothing of it is served: the folder may go
            failure = fetch_failure(manifest, exc)
            if failure is None:
                raise
            raise failure from exc
        if damage is not None:
            log.warning("loramux resolver: cached %s was damaged (%s) and fetched again",
                        manifest.ref, damage)
        return path

    @contextlib.contextmanager
    def _room_for(self, cache: AdapterCache, manifest: Manifest) -> Iterator[None]:
        """Room in the byte budget for ``manifest``'s download, made by trimming least recently
        used folders nobody holds, and reserved until it is on disk; refused when held folders
        (this vLLM's own, or another process's) leave too little. A folder already on disk
        takes no new room (a damaged one is replaced by the same bytes)."""
        budget = self.settings.max_cache_bytes
        if cache.path(manifest.digest).is_dir():
            yield
            return
        if manifest.size > budget:  # no amount of trimming helps
            raise AdapterTooLarge(f"adapter {manifest.ref} is {manifest.size} bytes, more than "
                                  f"this vLLM's whole adapter cache ({budget} bytes, "
                                  f"{ENV_VLLM_MAX_CACHE_BYTES})", param="model")
        with self._budget_lock:
            try:
                trimmed = cache.trim(max(budget - manifest.size - self._reserved, 0))
            except OSError as exc:
                raise unavailable(f"cannot trim the adapter cache for {manifest.ref}",
                                  exc) from exc
            used = trimmed.total_bytes + self._reserved
            if used + manifest.size > budget:
                raise CacheFull(f"the adapter cache is full: {used} of its {budget} bytes "
                                f"({ENV_VLLM_MAX_CACHE_BYTES}) hold adapters in use, and "
                                f"{manifest.ref} needs {manifest.size}; this vLLM keeps every "
                                "adapter it has served until it restarts")
            self._reserved += manifest.size
        try:
            yield
        finally:
            with self._budget_lock:
                self._reserved -= manifest.size


def fetch_failure(manifest: Manifest, exc: BaseException) -> LoramuxError | None:
    """What a failed fetch tells the client, or None when ``exc`` already says it."""
    if isinstance(exc, IntegrityError):
        return IntegrityError(f"adapter {manifest.ref} failed its digest check: {exc}")
    if isinstance(exc, NotFound):
        return IntegrityError(f"adapter {manifest.ref} is incomplete in the registry: {exc}")
    if isinstance(exc, OSError):
        if exc.errno in DISK_FULL:
            return unavailable(f"no space left in the adapter cache to fetch {manifest.ref}", exc)
        return unavailable(f"cannot fetch {manifest.ref}", exc)
    if isinstance(exc, REGISTRY_FAILURES):
        return unavailable(f"the loramux registry cannot send {manifest.ref}", exc)
    return None


def unavailable(what: str, exc: BaseException) -> RegistryUnavailable:
    """A 503 whose message says what failed; the cause's full text goes to the log only."""
    log.warning("loramux resolver: %s: %s: %s", what, type(exc).__name__, exc)
    return RegistryUnavailable(f"{what} ({type(exc).__name__}); retry shortly")


def base_folder(base_model_name: str) -> Path:
    """The served base on disk: vLLM's ``--model`` folder, or its Hugging Face cache snapshot."""
    folder = Path(base_model_name).expanduser()
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(base_model_name, local_files_only=True))
    except (HFValidationError, OSError) as exc:  # OSError: LocalEntryNotFoundError (not cached)
        raise BaseUnknown(f"the served base `{base_model_name}` is neither a folder nor in the "
                          f"Hugging Face cache ({exc}); set {ENV_VLLM_BASE_FINGERPRINT}") from exc


@cache
def _vllm_resolver_class() -> type:
    """The vLLM-facing class, built on first use so that importing this module needs no vLLM."""
    from http import HTTPStatus

    from vllm.exceptions import GracefulHTTPError
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class LoramuxLoRAResolver(LoRAResolver):
        """vLLM's resolver interface over `RegistryResolver`, in a worker thread."""

        def __init__(self, core: RegistryResolver) -> None:
            self.core = core

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            _follow_vllm_logging()  # vLLM configures its logging after loading plugins
            try:
                found = await asyncio.to_thread(self.core.resolve, base_model_name, lora_name)
            except LoramuxError as exc:  # vLLM sends message and status to the client
                raise GracefulHTTPError(exc.message, HTTPStatus(exc.status)) from exc
            if found is None:
                return None
            return LoRARequest(lora_name=found.lora_name, lora_int_id=found.lora_int_id,
                               lora_path=str(found.path), base_model_name=base_model_name)

    return LoramuxLoRAResolver


def vllm_resolver(settings: ResolverSettings, registry: Registry | None = None) -> Any:
    """A ``vllm.lora.resolver.LoRAResolver`` resolving through the loramux registry."""
    return _vllm_resolver_class()(RegistryResolver(settings, registry))


def register() -> None:
    """Entry point for ``vllm.general_plugins``; a no-op unless ``LORAMUX_VLLM_REGISTRY`` is set.

    vLLM calls it in each of its processes; only the API server ever asks resolvers, and
    nothing here does I/O until the first request for an adapter.
    """
    settings = ResolverSettings.from_env()
    if settings is None:
        return
    import vllm.envs as envs
    from vllm.lora.resolver import LoRAResolverRegistry

    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, vllm_resolver(settings))
    log.info("loramux resolver: adapters from %s, cache %s", settings.registry, settings.cache_dir)
    if not envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
        log.warning("loramux resolver: VLLM_ALLOW_RUNTIME_LORA_UPDATING is not true, so vLLM "
                    "never asks resolvers: registry adapters will answer 404")


def _follow_vllm_logging() -> None:
    """loramux's log lines in vLLM's format and level, once vLLM has configured its own logger
    (the only one it configures); until then a WARNING still reaches stderr."""
    ours, theirs = logging.getLogger("loramux"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(theirs.getEffectiveLevel())
    ours.propagate = False

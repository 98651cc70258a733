"""Who may call the server and what each key may do: the keys file, key checks in constant
time, adapter scopes, and the FastAPI dependencies the routes use.

Keys file, one key a line (`#` at the start of a line or after a space starts a comment):

    KEY [user|admin] [adapters=PATTERN,...] [rpm=N] [tpm=N] [concurrency=N] [name=LABEL]

A key has at least MIN_KEY_CHARS characters and no `#` (a `#` inside a word is refused with its
line number, never taken as a comment that would silently cut the key and drop its `admin`).
`admin` adds the operator endpoints (adapter load/unload, engine state) to `user`'s; restarting
the engine, which every tenant shares, needs an admin key without `adapters=`.
`adapters=` limits the key to adapter names matching one of the shell patterns (fnmatch, case
sensitive); the served base model is always allowed, since it holds no tenant's weights. The
check runs on the name a reference resolved to, so no alias or digest reaches another name.
`rpm`/`tpm`/`concurrency` are the key's budgets (see budgets.py). `name` labels the key in
messages and logs (default: `line-N`); the secret itself is never logged or kept, only its hash.

The file is read again whenever it changes on disk (checked on each request: one `stat`), so keys
are rotated by editing or replacing it. A changed file that does not parse is refused with a
logged error and the keys in use stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from loramux.registry.errors import InvalidName
from loramux.registry.refs import AdapterRef
from loramux.server.budgets import KeyBudget, Limits, Ticket, unlimited
from loramux.server.errors import AdapterForbidden, Forbidden, SettingsError, Unauthorized
from loramux.server.hub_refs import hub_name, is_hub_reference
from loramux.web.watched import COMMENT_RE, MIN_SECRET_CHARS, WatchedFile

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

# Adapter names are lowercase letters, digits and `.-_` (registry/refs.py); a pattern may add
# fnmatch's `*?[]!`. Anything else (`/`, `:`, `@`, capitals) could never match a name.
_PATTERN_RE = re.compile(r"^[a-z0-9._*?\[\]!-]{1,64}$")
_LIMITS = ("rpm", "tpm", "concurrency")
MIN_KEY_CHARS = MIN_SECRET_CHARS  # both secrets files' rule (loramux.web.watched)
_COMMENT_RE = COMMENT_RE
T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """The caller behind one request: its label, whether it is an operator, which adapters it
    may use (None: all) and its live budget (None: unlimited)."""

    name: str
    admin: bool = False
    adapters: tuple[str, ...] | None = None
    budget: KeyBudget | None = field(default=None, compare=False)

    def may_use(self, adapter_name: str) -> bool:
        return self.adapters is None or any(fnmatchcase(adapter_name, p) for p in self.adapters)

    def admit(self) -> AbstractContextManager[Ticket]:
        """Hold this request against the key's concurrency and rates; raises RateLimited."""
        return self.budget.admit() if self.budget is not None else unlimited()


# Every caller of a server started without keys (loopback only, or --insecure-no-auth).
ANONYMOUS = Principal("anonymous", admin=True)


@dataclass(frozen=True)
class _Key:
    digest: bytes  # sha256 of the secret: compared in constant time, equal lengths always
    principal: Principal
    limits: Limits


class KeyStore:
    """The keys of one server; `path` None means no keys: every caller is ANONYMOUS."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._file: WatchedFile[tuple[_Key, ...]] | None = None
        if path is not None:  # re-read when it changes (loramux.web.watched)
            self._file = WatchedFile(path, self._parse, error=SettingsError, what="API keys")

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer KEY` header; Unauthorized otherwise."""
        if self.path is None:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        return self.by_digest(key_digest(token))

    def by_digest(self, digest: bytes, gone: str = "invalid API key") -> Principal:
        """The principal of a key given by its sha256 (what a login session keeps, so that
        a key removed from the file ends its sessions too); Unauthorized(`gone`) otherwise."""
        if self._file is None:
            return ANONYMOUS
        found: Principal | None = None
        # Every key compared, found or not: no timing of the position.
        for key in self._file.current():
            if hmac.compare_digest(key.digest, digest):
                found = key.principal
        if found is None:
            raise Unauthorized(gone)
        return found

    def _parse(self, text: str, before: tuple[_Key, ...] | None) -> tuple[_Key, ...]:
        """Keys from the file's text; a key whose limits did not change keeps its budget."""
        previous = {k.digest: k for k in before or ()}
        keys: list[_Key] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = _COMMENT_RE.sub("", raw).strip()
            if not line:
                continue
            try:
                if "#" in line:
                    raise ValueError("'#' inside a key or word (a comment starts with '#' at "
                                     "the start of a line or after a space)")
                secret, admin, adapters, limits, name = _parse_line(line, number)
            except ValueError as exc:
                raise SettingsError(f"{self.path}:{number}: {exc}") from None
            digest = key_digest(secret)
            if any(k.digest == digest for k in keys):
                raise SettingsError(f"{self.path}:{number}: this key is already listed")
            old = previous.get(digest)
            if limits and old is not None and old.limits == limits and old.principal.budget:
                budget: KeyBudget | None = old.principal.budget
                budget.name = name
            elif limits:
                budget = KeyBudget(name, limits, self._clock)
            else:
                budget = None
            keys.append(_Key(digest, Principal(name, admin, adapters, budget), limits))
        if not keys:
            raise SettingsError(f"{self.path} holds no API keys")
        return tuple(keys)


def _parse_line(line: str, number: int) -> tuple[str, bool, tuple[str, ...] | None, Limits, str]:
    first, *words = line.split()
    secret, _, legacy = first.partition(":")  # `KEY:admin`, the older spelling
    if legacy not in ("", "user", "admin"):
        if re.fullmatch(r"(read|write|admin)(:[^:\s]*)?", legacy) or "," in first:
            raise ValueError("this looks like a `loramux registry serve --tokens` line "
                             "(SECRET:read|write|admin[:NAME]); API keys are KEY [admin] "
                             "[adapters=…] [rpm=N] …")
        secret, legacy = first, ""
    admin, adapters, name = legacy == "admin", None, f"line-{number}"
    limits: dict[str, int] = {}
    for word in words:
        option, eq, value = word.partition("=")
        if not eq and word in ("user", "admin"):
            admin = admin or word == "admin"
        elif option == "adapters" and eq:
            adapters = tuple(p for p in value.split(",") if p)
            for pattern in adapters:
                if not _PATTERN_RE.match(pattern):
                    raise ValueError(
                        f"adapter pattern {pattern!r} can never match an adapter name "
                        "(names are lowercase letters, digits and '.-_'; patterns add *?[])")
            if not adapters:
                raise ValueError("adapters= needs at least one pattern")
        elif option in _LIMITS and eq:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{option}= takes a whole number >= 1, not {value!r}")
            limits[option] = int(value)
        elif option == "name" and eq and value:
            name = value
        else:
            raise ValueError(f"unknown word {word!r}: expected user, admin, adapters=, rpm=, "
                             "tpm=, concurrency= or name=")
    if len(secret) < MIN_KEY_CHARS:
        raise ValueError(f"the key is shorter than {MIN_KEY_CHARS} characters; use a random "
                         "one, e.g. `openssl rand -hex 16`")
    return secret, admin, adapters, Limits(**limits), name


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_adapter(principal: Principal | None, model: str, name: str | None = None) -> None:
    """Raise AdapterForbidden unless `principal` may use the adapter `name`.

    Called with the name the registry resolved `model` to (the check that counts: an alias or
    digest can only reach what its resolved name allows), and before resolving with `name` None,
    the name the reference spells, so that a scoped key learns nothing about, and costs no
    registry call for, names outside its scope. None: an internal caller (`--pin`), allowed.
    """
    if principal is None or principal.adapters is None:
        return
    if name is None and is_hub_reference(model):
        name = hub_name(model)  # the name an import would publish it as (server/hub_refs.py)
        if name is None:
            return  # not a valid Hub reference: resolving it answers 404
    if name is None:
        try:
            name = AdapterRef.parse(model).name
        except InvalidName:
            return  # not an adapter reference: resolving it answers 404
    if not principal.may_use(name):
        raise AdapterForbidden(
            f"The API key `{principal.name}` may not use the model `{model}` (adapter `{name}`"
            f"); it is limited to adapters matching {', '.join(principal.adapters)}",
            param="model")


def visible(principal: Principal, items: list[T], adapter_name: Callable[[T], str | None]
            ) -> list[T]:
    """The items a key may see; `adapter_name` gives an item's adapter (None: the base)."""
    return [item for item in items
            if (name := adapter_name(item)) is None or principal.may_use(name)]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


# -- FastAPI -----------------------------------------------------------------------------------


def principal_of(request: Request) -> Principal:
    """The caller's principal (401 without a valid key when keys are configured)."""
    keys: KeyStore = request.app.state.runtime.keys
    return keys.authenticate(request.headers.get("authorization"))


async def authenticate(request: Request) -> Principal:
    """Dependency: `principal_of`, on the event loop (a sync dependency would take a worker
    thread per request for a `stat` and a hash, and reload the keys from several threads).
    The key's name goes to the request state, for the access log."""
    principal = principal_of(request)
    request.state.key = principal.name
    return principal


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Dependency: an operator key (403 for a user key)."""
    if not principal.admin:
        raise Forbidden("this endpoint needs an API key with the admin scope")
    return principal


async def require_operator(principal: Annotated[Principal, Depends(require_admin)]) -> Principal:
    """Dependency: an admin key limited to no adapters. What every tenant shares (the engine)
    is not for a key scoped to some of them."""
    if principal.adapters is not None:
        raise Forbidden("this endpoint affects every tenant: it needs an admin API key "
                        "without adapters=")
    return principal


User = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
PROTECTED_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                             "/openapi.json"})


def protect_routes(app: FastAPI, paths: frozenset[str] = PROTECTED_PATHS) -> list[str]:
    """Put `paths` behind a key (`--protect-metrics`): each route's ASGI app is wrapped so that
    the key is checked before it runs. FastAPI adds its docs routes itself, without
    dependencies, so a wrapper is the one way that covers them and /metrics alike. Call it
    after every route is added; returns the paths it guarded."""
    guarded = []
    for route in app.router.routes:
        if getattr(route, "path", None) in paths:
            route.app = _guard(route.app)  # type: ignore[attr-defined]
            guarded.append(route.path)  # type: ignore[attr-defined]
    return guarded


def _guard(inner: ASGIApp) -> ASGIApp:
    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        principal_of(Request(scope))
        await inner(scope, receive, send)

    return guarded


UI_COOKIE = "loramux_server_ui"  # set by the /ui login form (loramux/web/login.py)


def ui_login_check(app: FastAPI) -> Callable[[str], str]:
    """What the /ui login form keeps for a session: the key's digest, once the key is valid
    (the secret itself is not kept, as the keys file's are not)."""

    def check(secret: str) -> str:
        keys: KeyStore = app.state.runtime.keys
        keys.authenticate(f"Bearer {secret}" if secret else None)
        return key_digest(secret).hex()

    return check


async def authenticate_ui(request: Request) -> Principal:
    """The caller of the `/ui` playground: the key behind the login session whose id the
    HttpOnly cookie holds (a page's script cannot send a bearer header it cannot read),
    checked against the keys in force now. Only /ui routes use this; the API's
    `authenticate` never reads the cookie."""
    keys: KeyStore = request.app.state.runtime.keys
    if not keys.enabled:
        principal = ANONYMOUS
    else:
        credential = request.app.state.ui_login.credential(request)
        if credential is None:
            raise Unauthorized("sign in: no session, or it expired")
        principal = keys.by_digest(bytes.fromhex(credential),
                                   gone="the API key of this session is no longer valid")
    request.state.key = principal.name
    return principal

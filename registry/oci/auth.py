"""Credentials for an OCI registry and the distribution auth dance, as an ``httpx.Auth``.

A registry answers 401 with ``WWW-Authenticate``: ``Basic`` (send the user and password), or
``Bearer realm=…,service=…,scope=…`` (fetch a token from ``realm``, with the user and password
if there are any, anonymously otherwise, then retry with it). The token is kept and sent with
the next requests, and replaced when a request needs a wider scope (push after pull) or when
the registry no longer takes it (expired). Credentials come from the environment, read here and
nowhere else.

Where secrets go: the token or basic header is attached only to requests on the registry's own
origin (an upload ``Location`` or a redirect elsewhere gets none, and a 401 from elsewhere is
not answered), and the user and password go to a bearer ``realm`` only over https or on the
registry's own host over the scheme the registry is spoken in (a loopback test registry and its
token server): a challenge naming a plain-http realm on another host is refused, not obeyed.

A bearer exchange that gets no usable token raises ``BlobStoreUnavailable`` naming the token
server and why (refused, no token in its answer, scope not granted): ending the flow quietly
would hand the token server's answer to the caller as if the registry had sent it.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass

import httpx

from loramux.registry.errors import BlobStoreUnavailable

ENV_OCI_USERNAME = "LORAMUX_OCI_USERNAME"
ENV_OCI_PASSWORD = "LORAMUX_OCI_PASSWORD"
ENV_OCI_TOKEN = "LORAMUX_OCI_TOKEN"
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credentials:
    """User and password (basic auth, and to obtain bearer tokens), or a ready bearer token."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def from_env(cls) -> Credentials:
        return cls(os.environ.get(ENV_OCI_USERNAME) or None,
                   os.environ.get(ENV_OCI_PASSWORD) or None, os.environ.get(ENV_OCI_TOKEN) or None)

    def basic(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(username={self.username!r}, token={'***' if self.token else None})"


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        scheme, _, rest = header.strip().partition(" ")
        if not scheme:
            return None
        params = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _PARAM.finditer(rest)}
        return cls(scheme.lower(), params)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def same_origin(url: httpx.URL | str, base: httpx.URL | str) -> bool:
    """Same scheme, host and port (what a header meant for ``base`` may be sent to)."""
    return _origin(httpx.URL(url)) == _origin(httpx.URL(base))


def may_send_credentials(realm: httpx.URL | str, registry: httpx.URL | str) -> bool:
    """Whether the user and password may go to this token realm: over https (Docker Hub's
    realm is another host, over https), or to the registry's own host in the scheme the
    registry itself is spoken in (a loopback registry and its token server)."""
    realm, registry = httpx.URL(realm), httpx.URL(registry)
    if realm.scheme == "https":
        return True
    return realm.scheme == registry.scheme and realm.host == registry.host


class OciAuth(httpx.Auth):
    """Answers the registry's 401 challenges; thread-safe (one client serves many threads).
    ``registry`` (``scheme://host:port``) is the only origin its headers are sent to."""

    def __init__(self, credentials: Credentials, registry: str) -> None:
        self.credentials = credentials
        self.registry = httpx.URL(registry)
        self._lock = threading.Lock()
        self._header: str | None = (f"Bearer {credentials.token}" if credentials.token
                                    else None)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            sent = self._header
        if not same_origin(request.url, self.registry):
            yield request  # an upload Location elsewhere: no secret goes with it
            return
        if sent is not None:
            request.headers["Authorization"] = sent
        response = yield request
        if response.status_code != 401 or not same_origin(response.request.url, self.registry):
            return  # a 401 from where a redirect led is not the registry's to answer
        challenge = Challenge.parse(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return
        bearer = challenge.scheme == "bearer" and "realm" in challenge.params
        if challenge.scheme == "basic":
            header = self.credentials.basic()
        elif bearer:
            token_response = yield self._token_request(challenge)
            token_response.read()
            header = self._token_of(token_response, challenge)
        else:
            return
        if header is None or header == sent:
            if bearer:  # the last response is the token server's: never the caller's answer
                raise self._refused(challenge, "gave the token the registry just refused")
            return  # nothing new to try: the registry's 401 stands
        with self._lock:
            self._header = header
        request.headers["Authorization"] = header
        response = yield request
        again = Challenge.parse(response.headers.get("www-authenticate", "")) \
            if bearer and response.status_code == 401 else None
        if again is not None and again.params.get("error") == "insufficient_scope":
            raise self._refused(again, "did not grant it")

    def _token_request(self, challenge: Challenge) -> httpx.Request:
        # One ``scope`` parameter per space-delimited entry of the challenge's scope (the token
        # spec): a cross-repository mount asks for two, and a joined one is a malformed scope.
        params = [("service", challenge.params["service"])] if "service" in challenge.params \
            else []
        params += [("scope", scope) for scope in challenge.params.get("scope", "").split()]
        headers = {"Accept": "application/json"}
        basic = self.credentials.basic()
        if basic is not None:
            if not may_send_credentials(challenge.params["realm"], self.registry):
                raise self._refused(challenge, "is neither https nor on the registry's own host, "
                                               "so the user and password were not sent")
            headers["Authorization"] = basic
        return httpx.Request("GET", challenge.params["realm"], params=params, headers=headers)

    def _token_of(self, response: httpx.Response, challenge: Challenge) -> str:
        if response.status_code != 200:
            raise self._refused(challenge, f"refused (HTTP {response.status_code}"
                                           f"{_detail(response)})")
        try:
            body = response.json()
        except ValueError:
            body = None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise self._refused(challenge, "answered without a token (no 'token' or "
                                           "'access_token' in its JSON)")
        return f"Bearer {token}"

    def _refused(self, challenge: Challenge, what: str) -> BlobStoreUnavailable:
        who = (f"user {self.credentials.username!r}" if self.credentials.username
               else "anonymous requests")
        scope = challenge.params.get("scope") or "the registry"
        return BlobStoreUnavailable(
            f"OCI token server {challenge.params.get('realm')} asked for {scope} for {who}: "
            f"{what} (set {ENV_OCI_USERNAME} and {ENV_OCI_PASSWORD}, or {ENV_OCI_TOKEN})")


def _detail(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        text = response.text[:200].strip()
    return f" {text}" if text else ""

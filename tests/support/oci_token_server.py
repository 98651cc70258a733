"""A Docker/distribution token server on loopback, for tests of the OCI client's bearer auth.

It speaks the distribution token protocol (docs/spec/auth/token.md, distribution 2.8):
``GET /token?service=S&scope=repository:NAME:pull,push`` (one ``scope`` parameter per scope
entry, as the spec asks), with the user's basic auth or none (anonymous), answers
``{"token", "access_token", "expires_in", "issued_at"}``. The token is a JWT signed with ES256 by
a key made here, its self-signed certificate in the ``x5c`` header; the registry trusts that
certificate as its ``rootcertbundle``. Claims: ``iss``, ``sub``, ``aud`` (= the service), ``exp``,
``nbf``, ``iat``, ``jti`` and ``access``, which grants only what the user may do: the actions
asked for that the user's grants allow. A wrong password is a 401; a scope entry that is not
``type:name:actions`` (e.g. several entries joined by spaces in one parameter) is a 400.

Every request is recorded (``requests``) so tests can see how often the client fetched a token
and with which scopes. ``lifetime_s`` sets how long a token lives at the registry: distribution
accepts a token up to 60 s past its ``exp`` (clock-skew leeway), so ``exp`` is set to
``now + lifetime_s - REGISTRY_LEEWAY_S`` to make the token really die after ``lifetime_s``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loramux.support.oci_registry import TokenAuthConfig

HOST = "127.0.0.1"
REGISTRY_LEEWAY_S = 60  # distribution 2.8 registry/auth/token/token.go: Leeway


@dataclass(frozen=True)
class User:
    """A password and what the user may do: repository name pattern (fnmatch) → actions."""

    password: str
    grants: dict[str, frozenset[str]]

    def allowed(self, name: str) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for pattern, actions in self.grants.items():
            if fnmatch.fnmatchcase(name, pattern):
                out |= actions
        return out


@dataclass(frozen=True)
class TokenRequest:
    """One token request as the server saw it: who (None: anonymous), the scope parameters,
    and the access it granted."""

    user: str | None
    scopes: tuple[str, ...]
    granted: tuple[tuple[str, tuple[str, ...]], ...]
    status: int
    authorization: str | None = None  # the header as it arrived: credentials sent here or not


class TokenServer:
    """``start()`` serves on a free loopback port; ``config()`` is the registry's auth section."""

    def __init__(self, folder: Path, users: dict[str, User], *,
                 service: str = "loramux-test-registry", issuer: str = "loramux-test-issuer",
                 lifetime_s: float = 300, host: str = HOST) -> None:
        """``host``: where it listens, a loopback address; another than the registry's
        (127.0.0.2) makes its realm another host, as an attacker's would be."""
        self.users, self.service, self.issuer = users, service, issuer
        self.host = host
        self.lifetime_s = lifetime_s
        self.without_token = False  # a broken server: 200 with JSON that holds no token
        self.requests: list[TokenRequest] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        self._cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.certificate = folder / "token-signer.pem"
        self.certificate.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._httpd: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server._answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="loramux-test-token"')
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: tests read ``requests``

        self._httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self.realm

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def realm(self) -> str:
        assert self._httpd is not None, "start() the token server first"
        return f"http://{self.host}:{self._httpd.server_address[1]}/token"

    def config(self) -> TokenAuthConfig:
        return TokenAuthConfig(realm=self.realm, service=self.service, issuer=self.issuer,
                               rootcertbundle=self.certificate)

    # -- the protocol --------------------------------------------------------------------------

    def _answer(self, path: str, authorization: str | None) -> tuple[int, dict]:
        url = urlsplit(path)
        query = parse_qs(url.query, keep_blank_values=True)
        scopes = tuple(query.get("scope", []))
        user, status, body = self._authenticate(authorization)
        if status == 200 and url.path != "/token":
            status, body = 404, _errors("NOT_FOUND", f"no {url.path} here")
        if status == 200 and query.get("service") != [self.service]:
            status, body = 400, _errors("INVALID_REQUEST", f"service must be {self.service!r}")
        granted: list[tuple[str, tuple[str, ...]]] = []
        access: list[dict] = []
        for scope in scopes if status == 200 else ():
            parts = scope.split(":")
            if len(parts) < 3 or any(c.isspace() for c in scope):
                status, body = 400, _errors("INVALID_SCOPE", f"malformed scope {scope!r}")
                break
            kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            allowed = self.users[user].allowed(name) if user and kind == "repository" else set()
            given = tuple(a for a in actions if a in allowed)
            granted.append((name, given))
            access.append({"type": kind, "name": name, "actions": list(given)})
        if status == 200:
            body = ({"detail": "no token today"} if self.without_token
                    else self._token(user, access))
        with self._lock:
            self.requests.append(TokenRequest(user, scopes, tuple(granted), status,
                                              authorization))
        return status, body

    def _authenticate(self, authorization: str | None) -> tuple[str | None, int, dict]:
        if authorization is None:
            return None, 200, {}  # anonymous: a token that grants nothing
        scheme, _, encoded = authorization.partition(" ")
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username = password = ""
        known = self.users.get(username)
        if scheme.lower() != "basic" or known is None or known.password != password:
            return None, 401, _errors("UNAUTHORIZED", "wrong user name or password")
        return username, 200, {}

    def _token(self, user: str | None, access: list[dict]) -> dict:
        now, lifetime = int(time.time()), self.lifetime_s
        claims = {
            "iss": self.issuer, "sub": user or "", "aud": self.service,
            "exp": int(now + lifetime - REGISTRY_LEEWAY_S),  # dies at the registry after lifetime
            "nbf": now, "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [self._x5c]})
        return {"token": token, "access_token": token, "expires_in": int(lifetime),
                "issued_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat()}


def _errors(code: str, message: str) -> dict:
    return {"errors": [{"code": code, "message": message}]}

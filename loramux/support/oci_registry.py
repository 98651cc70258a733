"""A CNCF distribution registry (Debian's ``docker-registry``) on loopback, in a folder.

Tests and the benchmark use a real OCI registry: filesystem storage under ``folder/storage``,
deletes enabled, the port picked by the kernel (``127.0.0.1:0``) and read back from the child's
socket. ``stop()`` then ``start()`` brings it back on the same port, which is how the outage
tests take it away and return it. ``users`` turns on basic auth (an htpasswd file, bcrypt via the
C library's crypt, as distribution accepts only bcrypt); ``token_auth`` turns on bearer-token
auth (distribution's ``auth.token``: tokens from ``realm``, signed under ``rootcertbundle``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from loramux.support.launch import HOST, ChildServer

BINARY = "docker-registry"


def binary() -> str | None:
    """The docker-registry executable, or None if it is not installed."""
    return shutil.which(BINARY) or (BINARY if Path(f"/usr/bin/{BINARY}").is_file() else None)


def _bcrypt(password: str) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the C library's crypt: bcrypt ($2b$) on glibc/libxcrypt

    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("this system's crypt() cannot make bcrypt hashes")
    return hashed


@dataclass(frozen=True)
class TokenAuthConfig:
    """distribution's ``auth.token`` section: the registry sends clients to ``realm`` for a
    token and trusts tokens for ``service`` from ``issuer`` signed under a certificate of
    ``rootcertbundle`` (a PEM file)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


class OciRegistry(ChildServer):
    """``docker-registry serve CONFIG`` with its storage in ``folder``."""

    def __init__(self, folder: Path, *, users: dict[str, str] | None = None,
                 token_auth: TokenAuthConfig | None = None, timeout_s: float = 30) -> None:
        exe = binary()
        if exe is None:
            raise FileNotFoundError(f"{BINARY} is not installed (run .ci/system-deps)")
        self.folder = Path(folder)
        self.storage = self.folder / "storage"
        self.config = self.folder / "config.yml"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.users = users or {}
        if self.users and token_auth is not None:
            raise ValueError("one auth scheme at a time: users (basic) or token_auth")
        self.token_auth = token_auth
        self._write_config(0)
        # /v2/ answers 401 under auth; the readiness probe then uses a public path.
        super().__init__([exe, "serve", str(self.config)], self.folder / "registry.log",
                         None, "/v2/" if not self._auth else "/", timeout_s=timeout_s,
                         name=BINARY)

    def _write_config(self, port: int) -> None:
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"{HOST}:{port}", "secret": "loramux-test-secret"},
        }
        if self.users:
            htpasswd = self.folder / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{_bcrypt(p)}\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "loramux-test", "path": str(htpasswd)}}
        if self.token_auth is not None:
            t = self.token_auth
            config["auth"] = {"token": {"realm": t.realm, "service": t.service,
                                        "issuer": t.issuer,
                                        "rootcertbundle": str(t.rootcertbundle)}}
        self.config.write_text(yaml.safe_dump(config))

    @property
    def _auth(self) -> bool:
        return bool(self.users) or self.token_auth is not None

    def _ready(self, port: int) -> bool:
        if self._auth:  # "/" is 200 or 404 depending on build; any HTTP answer means up
            import httpx

            try:
                httpx.get(f"http://{HOST}:{port}/", timeout=2)
                return True
            except httpx.TransportError:
                return False
        return super()._ready(port)

    def start(self) -> str:
        if self.port is not None:
            self._write_config(self.port)  # a restart: the same port, where clients point
        return super().start()

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def location(self, repository: str) -> str:
        """``oci://127.0.0.1:PORT/repository`` (loopback: plain http)."""
        return f"oci://{self.host}/{repository}"

    # -- looking behind the API (tests flip bytes, count blobs) -------------------------------

    @property
    def _v2(self) -> Path:
        return self.storage / "docker" / "registry" / "v2"

    def blob_data(self, hex_: str) -> Path:
        """The file holding a blob's bytes (shared by every repository of this registry)."""
        return self._v2 / "blobs" / "sha256" / hex_[:2] / hex_ / "data"

    def linked_blobs(self, repository: str) -> set[str]:
        """Hex digests of the blobs ``repository`` holds (its layer links; DELETE drops one)."""
        layers = self._v2 / "repositories" / repository / "_layers" / "sha256"
        if not layers.is_dir():
            return set()
        return {p.name for p in layers.iterdir() if (p / "link").is_file()}

    def uploads(self, repository: str) -> list[Path]:
        """Upload sessions ``repository`` still holds (begun and never finished or cancelled).

        A cancelled session leaves an empty ``hashstates`` folder behind in distribution 2.8;
        it holds no bytes and is not counted."""
        folder = self._v2 / "repositories" / repository / "_uploads"
        if not folder.is_dir():
            return []
        return [p for p in folder.iterdir()
                if (p / "startedat").exists() or (p / "data").exists()]

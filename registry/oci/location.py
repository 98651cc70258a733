"""Where an OCI repository is: ``oci://host[:port]/repository``, parsed once at the edge.

Transport rule (like Docker's for insecure registries): ``oci://`` speaks https, except to a
loopback host (``localhost``, ``127.0.0.0/8``, ``::1``), which gets plain http because a test or
a sidecar registry there has no certificate. ``oci+https://`` and ``oci+http://`` force the
scheme (plain http only for a trusted network: credentials would travel in clear).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from loramux.registry.errors import InvalidName

SCHEMES = {"oci": None, "oci+https": "https", "oci+http": "http"}
# The distribution spec's repository name grammar (path components of lowercase alphanumerics).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$")


def is_oci_url(text: str) -> bool:
    return text.partition("://")[0] in SCHEMES and "://" in text


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OciLocation:
    """One repository in one OCI registry: ``base`` is ``http(s)://host:port``."""

    scheme: str
    host: str
    repository: str

    @classmethod
    def parse(cls, text: str) -> OciLocation:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in SCHEMES:
            raise InvalidName(f"{text!r} is not an OCI location: use "
                              "oci://host:port/repository (or oci+http://, oci+https://)")
        host, _, repository = rest.partition("/")
        repository = repository.rstrip("/")
        if not _HOST.match(host):
            raise InvalidName(f"{text!r}: {host!r} is not a host[:port]")
        if not _REPOSITORY.match(repository) or len(repository) > 255:
            raise InvalidName(f"{text!r}: {repository!r} is not an OCI repository name "
                              "(lowercase path components: letters, digits, '.', '_', '-')")
        forced = SCHEMES[scheme]
        return cls(forced or ("http" if _loopback(host) else "https"), host, repository)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def __str__(self) -> str:
        default = "http" if _loopback(self.host) else "https"
        prefix = "oci" if self.scheme == default else f"oci+{self.scheme}"
        return f"{prefix}://{self.host}/{self.repository}"

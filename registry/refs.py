"""Names, aliases and references, validated once at the edge.

Names end up in URLs, file names, SQL and vLLM LoRA names, so the pattern is deliberately narrow:
lowercase ASCII letters, digits and ``.-_``, starting and ending alphanumeric, at most 64
characters, no ``..``. Aliases follow the same rule but may not be all digits (that would read like
a version) and ``latest`` is reserved because it is implicit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loramux.registry.errors import InvalidName

MAX_NAME_LEN = 64
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{12,64}$")
LATEST = "latest"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid adapter name, else raise InvalidName saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidName("adapter name is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(f"adapter name is {len(name)} characters long (at most {MAX_NAME_LEN})")
    if ".." in name or not _NAME_RE.match(name):
        raise InvalidName(
            f"invalid adapter name {name!r}: use lowercase letters, digits and '.-_', "
            "start and end with a letter or digit, no '..', no '/' or spaces"
        )
    return name


def validate_alias(alias: str, *, allow_latest: bool = False) -> str:
    """Return ``alias`` if it may be set by users; ``latest`` only where reading."""
    if not isinstance(alias, str) or not alias:
        raise InvalidName("alias is empty")
    if len(alias) > MAX_NAME_LEN or ".." in alias or not _NAME_RE.match(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use lowercase letters, digits and '.-_' "
            f"(at most {MAX_NAME_LEN} characters)"
        )
    if alias.isdigit():
        raise InvalidName(f"invalid alias {alias!r}: an all-digit alias reads like a version")
    if alias == LATEST and not allow_latest:
        raise InvalidName("'latest' is implicit and cannot be set or removed")
    return alias


def validate_digest(digest: str, *, full: bool = False) -> str:
    """Accept ``sha256:<hex>`` (at least 12 hex digits, or exactly 64 when ``full``)."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidName(f"invalid digest {digest!r}: expected sha256:<at least 12 hex digits>")
    if full and len(digest) != len("sha256:") + 64:
        raise InvalidName(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A parsed reference: exactly one of version, alias, digest, or none of them (= latest)."""

    name: str
    version: int | None = None
    alias: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str | AdapterRef) -> AdapterRef:
        """Parse ``name``, ``name@7``, ``name:prod`` or ``name@sha256:<hex>``."""
        if isinstance(ref, AdapterRef):
            return ref
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidName("empty adapter reference")
        ref = ref.strip()
        if "@" in ref:
            name, _, selector = ref.partition("@")
            validate_name(name)
            if selector.startswith("sha256:"):
                return cls(name, digest=validate_digest(selector))
            if selector == LATEST:
                return cls(name)
            if not selector.isdigit() or int(selector) < 1 or len(selector) > 12:
                raise InvalidName(
                    f"invalid reference {ref!r}: after '@' expect a version number >= 1 "
                    "or sha256:<hex>"
                )
            return cls(name, version=int(selector))
        if ":" in ref:
            name, _, alias = ref.partition(":")
            validate_name(name)
            validate_alias(alias, allow_latest=True)
            return cls(name) if alias == LATEST else cls(name, alias=alias)
        return cls(validate_name(ref))

    @property
    def pins_version(self) -> bool:
        """True when the reference can never move (a number or a digest)."""
        return self.version is not None or self.digest is not None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        return self.name

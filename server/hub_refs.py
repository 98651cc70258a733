"""``"model": "hf://ORG/REPO@REV"``: Hub adapters on first use, opt in (``--hub-allow``).

Without ``--hub-allow`` such a model is a 404 that names the flag. With it, a reference whose
repo matches one of the patterns (``ORG/*``, ``ORG/REPO``; shell patterns, case-sensitive) is
imported into the server's registry by the one import path (``loramux.hub``: the same checks
as ``loramux registry import``, shapes checked against the served base, the commit recorded)
and served as the version it became: the resolver asks again only when its entry expires, and
the same commit re-imports to the same version. The registry name is the repo's
(``org--repo``), so an API key's ``adapters=`` scope applies to that name, before the import.

A Hub that cannot be reached is the server's condition (503, ``hub_unavailable``), remembered
nowhere; a repo that is not a loadable adapter is the client's (400, nothing published).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loramux.hub.errors import HubError, HubNotFound, HubUnauthorized, HubUnavailable
from loramux.hub.importer import import_from_hub
from loramux.hub.refs import SCHEME, HubRef
from loramux.registry.errors import REGISTRY_FAILURES, Forbidden, Invalid, InvalidName
from loramux.registry.errors import Unauthorized as RegistryUnauthorized
from loramux.registry.manifest import Manifest
from loramux.server.errors import (
    InvalidRequest,
    ModelNotFound,
    RegistryUnavailable,
    ServerError,
    ServiceUnavailable,
    logged,
    registry_failure,
)

log = logging.getLogger(__name__)
FLAG = "--hub-allow"


class HubUnreachable(ServiceUnavailable, code="hub_unavailable"):
    """The Hub cannot be reached (or refuses the server's own token): the server's condition."""


class HubAdapterRefused(InvalidRequest, code="invalid_hub_adapter"):
    """The Hub repo is not an adapter this server may serve (a pickle, another base's shapes)."""


def is_hub_reference(model: str) -> bool:
    return model.startswith(SCHEME)


def hub_name(model: str) -> str | None:
    """The registry name a Hub reference imports to (for the key's scope check), or None."""
    try:
        return HubRef.parse(model).default_name()
    except InvalidName:
        return None


@dataclass(frozen=True)
class HubReferences:
    """What the server may import from the Hub, and against which base."""

    allow: tuple[str, ...] = ()
    base: Path | None = None
    endpoint: str | None = None
    token: str | None = None

    @classmethod
    def from_patterns(cls, patterns: Sequence[str], base: Path | None) -> HubReferences:
        return cls(tuple(p.strip() for p in patterns if p.strip()), base)

    def allows(self, repo: str) -> bool:
        return any(fnmatch.fnmatchcase(repo, pattern) for pattern in self.allow)

    def lookup(self, registry, model: str, served_name: str) -> Manifest:
        """Import ``model`` (a Hub reference) into ``registry`` and return its version; raises
        the ServerError a client gets."""
        try:
            ref = HubRef.parse(model)
        except InvalidName as exc:
            raise ModelNotFound(f"The model `{model}` does not exist: {exc}",
                                param="model") from None
        if not self.allow:
            raise ModelNotFound(f"The model `{model}` does not exist: this server imports no "
                                f"Hub adapters (start it with {FLAG} '{ref.repo.split('/')[0]}/*'"
                                " to allow them)", param="model")
        if not self.allows(ref.repo):
            raise ModelNotFound(f"The model `{model}` does not exist: {ref.repo} is not in this "
                                f"server's {FLAG} ({', '.join(self.allow)})", param="model")
        try:
            manifest = import_from_hub(registry, ref, base=self.base, endpoint=self.endpoint,
                                       token=self.token, created_by="loramux serve (hf://)")
        except HubNotFound as exc:
            raise ModelNotFound(f"The model `{model}` does not exist: {exc}",
                                param="model") from None
        except (HubUnavailable, HubUnauthorized) as exc:
            raise logged(HubUnreachable, f"the Hugging Face Hub cannot answer for `{model}`; "
                         "retry shortly", exc, retry_after=5) from None
        except HubError as exc:
            raise HubAdapterRefused(f"`{model}`: {exc}", param="model") from None
        except (RegistryUnauthorized, Forbidden) as exc:
            raise logged(RegistryUnavailable, f"the server may not publish `{model}` to its "
                         "registry (its token needs push rights)", exc) from None
        except Invalid as exc:
            raise HubAdapterRefused(f"`{model}` is not an adapter this server can serve: {exc}",
                                    param="model") from None
        except REGISTRY_FAILURES as exc:
            raise registry_failure(exc, model, served_name) from None
        log.info("imported %s as %s (%s)", model, manifest.ref, manifest.digest[:19])
        return manifest


def refuse(exc: ServerError) -> bool:
    """Whether a Hub lookup's failure may be remembered for the resolver's TTL: not when the
    Hub was unreachable (the next request should try again)."""
    return not isinstance(exc, HubUnreachable)

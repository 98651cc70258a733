"""The Hub's failures as loramux errors: one line each, the exit code and HTTP status of their
kind, so the CLI prints ``error: …`` and the server answers OpenAI-shaped JSON.

``huggingface_hub`` raises a family of ``HfHubHTTPError`` subclasses and httpx transport errors;
:func:`hub_errors` is the one place they are translated (as ``huggingface_hub`` itself keeps one
error map).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from loramux.errors import LoramuxError


class HubError(LoramuxError):
    """Base of every Hub failure."""

    status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 2
    code: ClassVar[str] = "hub_error"


class HubNotFound(HubError):
    """The repo, revision or file does not exist (or is private and the token does not open it:
    the Hub answers both the same way)."""

    status: ClassVar[int] = 404
    exit_code: ClassVar[int] = 3
    code: ClassVar[str] = "hub_not_found"


class HubUnauthorized(HubError):
    status: ClassVar[int] = 401
    exit_code: ClassVar[int] = 8
    code: ClassVar[str] = "hub_unauthorized"


class HubUnavailable(HubError):
    """The Hub cannot be reached or answered 5xx: try again later (never the adapter's fault)."""

    status: ClassVar[int] = 503
    exit_code: ClassVar[int] = 9
    code: ClassVar[str] = "hub_unavailable"


class HubNotAllowed(HubError):
    """A Hub reference the server was not told to import (``--hub-allow``)."""

    status: ClassVar[int] = 404
    exit_code: ClassVar[int] = 2
    code: ClassVar[str] = "model_not_found"


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Run a ``huggingface_hub`` call; its errors leave as one :class:`HubError` line about
    ``what`` (``hf://org/repo@rev``)."""
    from huggingface_hub import errors as hf

    transport = _transport_errors()

    try:
        yield
    except hf.LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: first)
        raise HubUnavailable(f"{what}: the Hub cannot be reached (or HF_HUB_OFFLINE is set) and "
                             "the files are not in the local Hub cache") from None
    except hf.RevisionNotFoundError:
        raise HubNotFound(f"{what}: no such revision on the Hub") from None
    except hf.EntryNotFoundError as exc:
        raise HubNotFound(f"{what}: {_first_line(exc)}") from None
    except hf.GatedRepoError:
        raise HubUnauthorized(f"{what}: the repo is gated; accept its terms on the Hub and set "
                              "HF_TOKEN to a token of that account") from None
    except hf.RepositoryNotFoundError as exc:
        if _status(exc) == 401:
            raise HubUnauthorized(f"{what}: the Hub refused the credentials (401): the repo is "
                                  "private or missing; check HF_TOKEN") from None
        raise HubNotFound(f"{what}: no such repo on the Hub") from None
    except hf.OfflineModeIsEnabled:
        raise HubUnavailable(f"{what}: HF_HUB_OFFLINE is set and the files are not in the "
                             "local Hub cache") from None
    except hf.HfHubHTTPError as exc:
        status = _status(exc) or 0
        if status == 401:
            raise HubUnauthorized(f"{what}: the Hub refused the credentials (401); check "
                                  "HF_TOKEN") from None
        if status == 403:
            raise HubUnauthorized(f"{what}: the token may not do this (403)") from None
        if status >= 500 or status == 429:
            raise HubUnavailable(f"{what}: the Hub answered {status}; try again later") from None
        raise HubError(f"{what}: the Hub answered {status}: {_first_line(exc)}") from None
    except (*transport, OSError) as exc:
        if isinstance(exc, OSError) and not _is_network(exc):
            raise
        raise HubUnavailable(f"{what}: the Hub cannot be reached ({type(exc).__name__})") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors: ``huggingface_hub`` 2 ships its own fork of httpx
    (``httpx2``); older releases use httpx itself."""
    import httpx

    errors: list[type[BaseException]] = [httpx.TransportError]
    try:
        import httpx2
    except ImportError:
        pass
    else:
        errors.append(httpx2.TransportError)
    return tuple(errors)


def _is_network(exc: OSError) -> bool:
    return isinstance(exc, ConnectionError | TimeoutError)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

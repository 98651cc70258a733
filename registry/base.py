"""The ``Registry`` interface every store implements, and the argument handling they share.

The trainer, the server and release management hold a ``Registry`` and never care whether it is
a local folder, a remote server or an OCI mirror. It is an abstract base class: ``LocalRegistry``,
``RemoteRegistry`` and ``OciReadOnlyRegistry`` subclass it and must implement its abstract
methods, and the parts that must not differ between them (push, pull, show, the check of every
answer to ``resolve`` (answers.py), and what a store without canaries or evaluations answers)
are written once, here; push's arguments become one ``PushRequest`` in push_args.py.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from loramux.registry.answers import check_answer
from loramux.registry.canary import CanaryState, Split
from loramux.registry.errors import InvalidName, InvalidRequest
from loramux.registry.evaluations import Evaluation, EvaluationEntry
from loramux.registry.manifest import (
    AliasPointer,
    AuditEntry,
    GcReport,
    Lineage,
    Manifest,
    PushRequest,
    QuantizationInfo,
    VerifyReport,
    VersionInfo,
    check_labels,
)
from loramux.registry.push_args import facts_beside, push_request, with_recorded_base
from loramux.registry.refs import AdapterRef, validate_name
from loramux.registry.transfer import materialize

log = logging.getLogger(__name__)
DEFAULT_LOG_LIMIT = 100


class Registry(ABC):
    """A store of versioned LoRA adapters: a local folder or a registry server.

    Every error is a :class:`~loramux.registry.errors.RegistryError`; a remote registry that
    cannot be reached raises ``RemoteError``, and one that refuses the token ``Unauthorized`` or
    ``Forbidden``, from any method.
    """

    actor: str  # who the audit log records for this client's changes

    def push(
        self,
        folder: Path | str,
        name: str,
        *,
        alias: str | None = None,
        description: str = "",
        labels: dict[str, str] | None = None,
        base_model: Path | str | None = None,
        base_fingerprint: str | None = None,
        quantization: QuantizationInfo | str | dict[str, Any] | None = None,
        lineage: Lineage | dict[str, Any] | None = None,
        created_by: str | None = None,
        new_version: bool = False,
    ) -> Manifest:
        """Validate the PEFT LoRA adapter in ``folder`` and store it as ``name``'s next version.

        ``alias`` is moved to the new version; ``base_model`` (a folder) is fingerprinted, or
        ``base_fingerprint`` (``sha256:…``) is taken as given; without either, the base named
        in ``adapter_config.json`` is fingerprinted when it is a local folder.
        ``quantization`` is what the adapter was trained against (``nf4+dq+bf16``…), and
        ``lineage`` how it was made. Content equal to the latest version's makes no new version
        (and facts given with it that differ from that version's are refused, ``Conflict``,
        naming them), unless ``new_version``: then a new version records them.

        Returns the manifest of the version ``name`` now ends with.
        Raises ``InvalidName`` (name, alias, labels, description), ``InvalidAdapter`` and its
        subclasses (not a loadable LoRA adapter), ``InvalidBaseModel``, ``InvalidRequest``
        (quantization, lineage), ``TooLarge``; nothing is stored when it raises.
        """
        validate_name(name)
        if lineage is None and quantization is None:  # a trainer's output folder says them
            facts = facts_beside(Path(folder))
            lineage, quantization = facts.get("lineage"), facts.get("quantization")
        request = push_request(
            alias=alias, description=description, labels=labels, base_model=base_model,
            base_fingerprint=base_fingerprint, quantization=quantization, lineage=lineage,
            created_by=created_by or self.actor, new_version=new_version,
        )
        unfingerprinted = None
        if base_model is None and base_fingerprint is None:
            request, unfingerprinted = with_recorded_base(Path(folder), request)
        manifest = self._push(Path(folder), name, request)
        if unfingerprinted:  # said after the push: a refused adapter gets its error alone
            log.warning("%s has no base fingerprint (%s): servers will refuse it; re-push with "
                        "--base FOLDER or --base-fingerprint", manifest.ref, unfingerprinted)
        return manifest

    @abstractmethod
    def _push(self, folder: Path, name: str, request: PushRequest) -> Manifest:
        """Store the folder's files, then commit ``request`` as ``name``'s next version."""
        ...

    def resolve(self, ref: str | AdapterRef) -> Manifest:
        """The manifest ``ref`` names now: ``name`` (latest), ``name@7``, ``name:prod`` or
        ``name@sha256:<12+ hex>``.

        Raises ``InvalidName`` for a malformed reference, ``NotFound`` (saying whether the
        name, alias or version is missing, or when the version was deleted), ``Conflict`` when
        a digest prefix matches several versions, ``IntegrityError`` when the store's answer is
        not what ``ref`` names (see :func:`check_answer`).
        """
        r = AdapterRef.parse(ref)
        return check_answer(r, self._resolve(r))

    @abstractmethod
    def _resolve(self, ref: AdapterRef) -> Manifest:
        """The store's own answer for ``ref``; :meth:`resolve` checks it before anyone uses it."""
        ...

    def show(self, ref: str | AdapterRef) -> Manifest:
        """What ``loramux registry show`` prints: the manifest, exactly as :meth:`resolve`."""
        return self.resolve(ref)

    def list(
        self,
        *,
        name: str | None = None,
        base_fingerprint: str | None = None,
        labels: dict[str, str] | None = None,
        include_deleted: bool = False,
    ) -> list[VersionInfo]:
        """Versions, by name then newest first, with their current aliases.

        Filters: ``name``, ``base_fingerprint`` (exact), ``labels`` (every pair must match);
        deleted versions only with ``include_deleted``. Raises ``InvalidName`` for a bad name.
        """
        if name is not None:
            validate_name(name)
        return self._list(name, base_fingerprint, check_labels(labels), include_deleted)

    @abstractmethod
    def _list(self, name: str | None, base_fingerprint: str | None, labels: dict[str, str],
              include_deleted: bool) -> list[VersionInfo]: ...

    def pull(self, ref: str | AdapterRef, to: Path | str) -> Path:
        """Write ``ref``'s files into the folder ``to`` (absent or empty); returns it.

        Every byte is verified against the manifest; on any failure no folder is left behind.
        Raises what :meth:`resolve` raises, ``Conflict`` if ``to`` is not an empty folder,
        ``IntegrityError`` if a blob's bytes do not match.
        """
        return materialize(self.resolve(ref), self.open_blob, Path(to))

    @abstractmethod
    def open_blob(self, digest: str) -> BinaryIO:
        """A readable stream of the blob ``sha256:<64 hex>`` (unverified: the caller hashes).

        Raises ``NotFound`` if the store lacks it.
        """
        ...

    @abstractmethod
    def alias_set(self, name: str, alias: str, version: int) -> AliasPointer:
        """Point ``name:alias`` at ``version`` (recorded in the audit log); returns the pointer.

        Raises ``InvalidName`` (``latest`` and all-digit aliases are refused), ``NotFound`` if
        the version does not exist or was deleted.
        """
        ...

    @abstractmethod
    def alias_rm(self, name: str, alias: str) -> None:
        """Remove ``name:alias``. Raises ``InvalidName``, ``NotFound`` if it is not set."""
        ...

    def canary_set(self, name: str, alias: str, stable: int, canary: int | None,
                   weight: float, *, reason: str | None = None) -> CanaryState:
        """Point ``name:alias`` at ``stable`` and send ``weight`` (0..1) of its requests to
        ``canary`` (None: no canary); an audit row ``canary`` records it with ``reason``.
        Weight 0 with a canary is a rollback that keeps the canary visible.

        Raises ``InvalidName``, ``InvalidRequest`` (weight, canary == stable), ``NotFound``.
        """
        raise InvalidRequest(f"{self!r} holds no canaries")

    def canary(self, name: str, alias: str) -> CanaryState:
        """The alias's split now. Raises ``NotFound`` if the alias is not set."""
        raise InvalidRequest(f"{self!r} holds no canaries")

    def resolve_split(self, ref: str | AdapterRef) -> Split:
        """As :meth:`resolve`, and for an alias with a live canary also the canary's manifest
        and share, so that a server can split requests between the two. Both are checked as
        :meth:`resolve` checks its answer (the canary is another version of the same name)."""
        r = AdapterRef.parse(ref)
        split = self._resolve_split(r)
        check_answer(r, split.stable)
        if split.canary is not None:
            check_answer(AdapterRef(r.name), split.canary)
        return split

    def _resolve_split(self, ref: AdapterRef) -> Split:
        """The store's own split for ``ref``; without canaries, its one manifest."""
        return Split(stable=self._resolve(ref))

    @abstractmethod
    def delete(self, ref: str | AdapterRef, *, force: bool = False) -> VersionInfo:
        """Yank a version (``name@N`` or ``name@sha256:…``): it no longer resolves, and its
        number is never reused; its blobs go at the next :meth:`gc`. Returns it, ``deleted``.

        Raises ``InvalidName`` for a reference that could move (a name or an alias),
        ``NotFound``, ``Conflict`` while aliases point at it (``force`` removes them; over
        HTTP that needs an admin token, else ``Forbidden``).
        """
        ...

    @abstractmethod
    def gc(self) -> GcReport:
        """Remove blobs no live version uses and leftovers of interrupted pushes.

        Waits for running pushes. Over HTTP it needs an admin token (else ``Forbidden``).
        """
        ...

    @abstractmethod
    def verify(self) -> VerifyReport:
        """Re-hash every blob. Corrupt ones are moved to ``quarantine/`` (so the next push of
        the same file stores it again) and reported, with missing ones, in ``problems``.

        Over HTTP it needs an admin token (it changes the store), else ``Forbidden``.
        """
        ...

    def log(
        self,
        *,
        name: str | None = None,
        alias: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_LOG_LIMIT,
    ) -> list[AuditEntry]:
        """The audit log, newest first: pushes, alias moves (with the version before and
        after) and deletes, filtered by name, alias and time (naive times are local)."""
        return self._log(name, alias, since, until, max(0, limit))

    @abstractmethod
    def _log(self, name: str | None, alias: str | None, since: datetime | None,
             until: datetime | None, limit: int) -> list[AuditEntry]: ...

    @abstractmethod
    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None:
        """Where ``name:alias`` pointed at ``when``, or None if it was not set then.

        Raises ``InvalidName`` for a bad name or alias.
        """
        ...

    def record_evaluation(self, name: str, evaluation: Evaluation) -> EvaluationEntry:
        """Record a gate run on ``name`` (audit ``evaluate``, and a row per version measured,
        which :meth:`evaluations` lists). Over HTTP it needs a write token.

        Raises ``InvalidRequest`` when ``passed`` does not follow from the scores, ``NotFound``
        when a measured version (with its digest) is not live.
        """
        raise InvalidRequest(f"{self!r} does not record evaluations")

    def evaluations(self, name: str, version: int, limit: int = 5) -> list[EvaluationEntry]:
        """The newest ``limit`` recorded evaluations that measured ``name@version``."""
        return []

    def promote_alias(self, name: str, alias: str, version: int, *, expected: int | None,
                      evaluation_id: int) -> AliasPointer:
        """Move ``name:alias`` to ``version`` if it still points at ``expected`` (None: unset),
        citing the passing evaluation ``evaluation_id`` of exactly this move (audit ``promote``).

        Raises ``Conflict`` when the alias moved meanwhile or the evaluation is of another move,
        ``GateFailed`` when it did not pass, ``NotFound``.
        """
        raise InvalidRequest(f"{self!r} does not move aliases")

    @abstractmethod
    def close(self) -> None:
        """Release connections; the registry is not used afterwards."""

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_actor() -> str:
    """``user@host`` for the audit log; containers without a passwd entry still get one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def labels_match(have: dict[str, str], want: dict[str, str] | None) -> bool:
    return all(have.get(k) == v for k, v in (want or {}).items())


def require_pinned(ref: AdapterRef) -> AdapterRef:
    """Destructive operations take a version that cannot move under the caller's feet."""
    if not ref.pins_version:
        raise InvalidName(f"delete needs an exact version ({ref.name}@N or @sha256:…), not {ref}")
    return ref

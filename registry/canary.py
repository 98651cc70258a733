"""Weighted canaries: ``name:prod`` resolves to a stable version and, for a share of the
requests, to a canary version beside it.

The registry only stores the split (stable, canary, weight) next to the alias and records every
change in the audit log (action ``canary``); serving decides per request (see
``loramux.server.resolver.choose``). A rollback keeps the canary's version with weight 0, so its
state stays visible; a plain alias move (no canary given) clears it.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from loramux.registry.errors import InvalidRequest
from loramux.registry.index import Transaction, now, to_dt
from loramux.registry.index import canary as sql
from loramux.registry.index.canary import WEIGHT_SCALE
from loramux.registry.manifest import Manifest
from loramux.registry.refs import AdapterRef, validate_alias, validate_name

if TYPE_CHECKING:
    from loramux.registry.store import LocalRegistry

log = logging.getLogger(__name__)
_SPEC = re.compile(r"^\s*(\d+)\s*:\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


class CanaryState(BaseModel):
    """An alias's split: the stable version, and the canary with its share of requests."""

    name: str
    alias: str
    stable: int
    stable_digest: str
    canary: int | None = None
    canary_digest: str | None = None
    weight: float = Field(0.0, ge=0.0, le=1.0)
    since: datetime
    set_by: str

    @property
    def active(self) -> bool:
        return self.canary is not None and self.canary_digest is not None and self.weight > 0


class Split(BaseModel):
    """What a server needs to answer one reference per request: the stable manifest and, for
    an alias with a live canary, the canary's manifest and its share (0..1)."""

    stable: Manifest
    canary: Manifest | None = None
    weight: float = Field(0.0, ge=0.0, le=1.0)


class CanaryRequest(BaseModel):
    """``PUT /v2/adapters/{name}/aliases/{alias}/canary``'s body: ``Registry.canary_set``."""

    stable: int = Field(ge=1, le=2**62)
    canary: int | None = Field(None, ge=1, le=2**62)
    weight: float = Field(ge=0.0, le=1.0)
    reason: str | None = Field(None, max_length=2000)


def parse_spec(text: str) -> tuple[int, float]:
    """``5:10%`` or ``5:0.1`` -> (5, 0.1): the CLI's ``--canary``."""
    m = _SPEC.match(text)
    if m is None:
        raise InvalidRequest(f"--canary {text!r}: expected VERSION:WEIGHT, e.g. 5:10% or 5:0.1")
    weight = float(m[2]) / (100 if m[3] else 1)
    if not 0.0 <= weight <= 1.0:
        raise InvalidRequest(f"--canary {text!r}: the weight must be 0..100% (0..1)")
    return int(m[1]), weight


def check_args(stable: int, canary: int | None, weight: float) -> int:
    """The weight in parts per million, after the checks every entry point shares."""
    if not 0.0 <= weight <= 1.0:
        raise InvalidRequest(f"canary weight {weight} is not within 0..1")
    if canary is None and weight:
        raise InvalidRequest("a canary weight needs a canary version")
    if canary is not None and canary == stable:
        raise InvalidRequest(f"the canary version {canary} is the stable version itself")
    return round(weight * WEIGHT_SCALE)


def state_of(name: str, alias: str, row: sql.CanaryRow) -> CanaryState:
    return CanaryState(
        name=name, alias=alias, stable=row.stable, stable_digest=row.stable_digest,
        canary=row.canary, canary_digest=row.canary_digest, weight=row.weight_ppm / WEIGHT_SCALE,
        since=to_dt(row.updated_at), set_by=row.updated_by,
    )


def audit_detail(alias: str, stable: int, canary: int | None, weight: float,
                 reason: str | None) -> dict[str, Any]:
    """The ``canary`` audit row's detail (the web page reads these keys)."""
    return {"alias": alias, "stable": stable, "canary": canary, "weight": weight,
            "reason": reason}


def end_canary(tx: Transaction, name: str, alias: str, actor: str, at: int,
               reason: str = "alias set without a canary") -> None:
    """A plain alias move ends any canary beside it (logged); a no-op when there is none."""
    row = sql.tx_row(tx, name, alias)
    if row is None or row.canary is None:
        return
    sql.put_canary(tx, name, alias, None, 0, at, actor)
    tx.audit(at=at, actor=actor, action="canary", name=name, alias=alias, version=row.stable,
             digest=row.stable_digest, detail=audit_detail(alias, row.stable, None, 0.0, reason))
    log.info("canary of %s:%s ended (%s)", name, alias, reason)


class LocalCanaries:
    """The canary verbs of :class:`~loramux.registry.store.LocalRegistry` (a base class of it)."""

    def canary_set(
        self: LocalRegistry, name: str, alias: str, stable: int, canary: int | None,
        weight: float, *, reason: str | None = None, actor: str | None = None,
    ) -> CanaryState:
        validate_name(name)
        validate_alias(alias)
        ppm = check_args(int(stable), canary, weight)
        actor = actor or self.actor
        at = now()
        with self.index.write() as tx:
            if canary is not None and tx.live_digest(name, canary) is None:
                raise self._not_found(AdapterRef(name, version=canary))
            self._alias_set(tx, name, alias, int(stable), actor, at)  # moves it if needed
            sql.put_canary(tx, name, alias, canary, ppm, at, actor)
            row = sql.tx_row(tx, name, alias)
            assert row is not None
            state = state_of(name, alias, row)
            tx.audit(at=at, actor=actor, action="canary", name=name, alias=alias,
                     version=state.stable, digest=state.stable_digest,
                     detail=audit_detail(alias, state.stable, canary, state.weight, reason))
        log.info("canary %s:%s stable @%d, canary %s at %.4g%%%s", name, alias, state.stable,
                 f"@{canary}" if canary else "none", state.weight * 100,
                 f" ({reason})" if reason else "")
        return state

    def canary(self: LocalRegistry, name: str, alias: str) -> CanaryState:
        validate_name(name)
        validate_alias(alias)
        row = sql.read_row(self.index, name, alias)
        if row is None:
            raise self._not_found(AdapterRef(name, alias=alias))
        return state_of(name, alias, row)

    def _resolve_split(self: LocalRegistry, r: AdapterRef) -> Split:
        if r.alias is None:
            return Split(stable=self._resolve(r))
        found = sql.read_split(self.index, r.name, r.alias)
        if found is None:
            raise self._not_found(r)
        stable, canary, ppm = found
        return Split(stable=stable, canary=canary, weight=ppm / WEIGHT_SCALE)

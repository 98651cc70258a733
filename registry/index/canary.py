"""The index's SQL for weighted canaries: a second version beside an alias, with its share.

The canary lives in the alias's own row (``aliases.canary_version``, ``canary_weight``, schema 4),
so one read gives a server both versions and the split, and a plain alias move can clear it in
the same transaction. The weight is stored as an integer in parts per million: the same value
on SQLite and PostgreSQL, no float rounding between them.
"""

from __future__ import annotations

from dataclasses import dataclass

from loramux.registry.index.base import LIVE, Index, Transaction
from loramux.registry.manifest import Manifest

WEIGHT_SCALE = 1_000_000  # canary_weight's unit: parts per million


@dataclass(frozen=True)
class CanaryRow:
    """An alias's row: its stable target, and the canary beside it (None: none)."""

    stable: int
    stable_digest: str
    canary: int | None
    canary_digest: str | None  # None also when the canary version was deleted since
    weight_ppm: int
    updated_at: int
    updated_by: str


_ROW = (
    "SELECT a.version, s.digest, a.canary_version, c.digest, a.canary_weight, a.updated_at, "
    "a.updated_by FROM aliases a JOIN versions s ON s.name=a.name AND s.version=a.version "
    f"LEFT JOIN versions c ON c.name=a.name AND c.version=a.canary_version AND c.{LIVE} "
    "WHERE a.name=? AND a.alias=?"
)
_SPLIT = (
    "SELECT s.manifest, c.manifest, a.canary_weight FROM aliases a JOIN versions s "
    f"ON s.name=a.name AND s.version=a.version AND s.{LIVE} "
    f"LEFT JOIN versions c ON c.name=a.name AND c.version=a.canary_version AND c.{LIVE} "
    "WHERE a.name=? AND a.alias=?"
)


def _row(values) -> CanaryRow | None:
    return CanaryRow(*values) if values else None


def read_row(index: Index, name: str, alias: str) -> CanaryRow | None:
    return _row(index._one(_ROW, (name, alias)))


def read_split(index: Index, name: str, alias: str) -> tuple[Manifest, Manifest | None, int] | None:
    """(stable manifest, canary manifest, weight ppm) in one read; the canary is None (and
    the weight 0) unless it is live and weighs more than 0."""
    row = index._one(_SPLIT, (name, alias))
    if row is None:
        return None
    weight = int(row[2])
    canary = Manifest.model_validate_json(row[1]) if row[1] is not None and weight else None
    return Manifest.model_validate_json(row[0]), canary, weight if canary else 0


def tx_row(tx: Transaction, name: str, alias: str) -> CanaryRow | None:
    tx.claim(name)
    return _row(tx.execute(_ROW, (name, alias)).fetchone())


def put_canary(tx: Transaction, name: str, alias: str, canary: int | None, weight_ppm: int,
               at: int, actor: str) -> None:
    """Set (or, with None and 0, clear) the canary of an alias that exists."""
    tx.claim(name)
    tx.execute(
        "UPDATE aliases SET canary_version=?, canary_weight=?, updated_at=?, updated_by=? "
        "WHERE name=? AND alias=?",
        (canary, weight_ppm, at, actor, name, alias),
    )


def canaries_of(tx: Transaction, name: str, version: int) -> list[str]:
    """The aliases of ``name`` whose canary is ``version`` (what deleting it would orphan)."""
    tx.claim(name)
    rows = tx.execute("SELECT alias FROM aliases WHERE name=? AND canary_version=? "
                      "ORDER BY alias", (name, version)).fetchall()
    return [row[0] for row in rows]

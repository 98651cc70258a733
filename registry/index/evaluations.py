"""The ``evaluations`` table (migration 3): each gate run, once per version it measured.

The audit row ``evaluate`` is the record of the run; these rows index it by version, so that
``registry show NAME@V`` finds a version's latest results without scanning the audit log. Both
are written in one transaction by :func:`record`. The records' classes are read through their
module (``records.Evaluation``): :mod:`loramux.registry.evaluations` imports this one too.
"""

from __future__ import annotations

import json
from typing import Any

from loramux.registry import evaluations as records
from loramux.registry.index.base import Index, Transaction
from loramux.registry.index.times import to_dt

_COLUMNS = ("SELECT e.audit_id, e.at, a.actor, e.name, e.version, e.role, e.record "
            "FROM evaluations e JOIN audit a ON a.id=e.audit_id")


def record(tx: Transaction, name: str, evaluation: records.Evaluation, *, at: int,
           actor: str) -> int:
    """Write the ``evaluate`` audit row and one evaluations row per measured version; returns
    the audit id (what a promotion cites)."""
    tx.claim(name)
    detail = evaluation.model_dump(mode="json")
    cand = evaluation.candidate
    audit_id = int(tx.execute(
        "INSERT INTO audit(at, actor, action, name, version, digest, alias, old_version, "
        "old_digest, detail) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (at, actor, "evaluate", name, cand.version, cand.digest, evaluation.alias,
         evaluation.current.version if evaluation.current else None,
         evaluation.current.digest if evaluation.current else None,
         json.dumps(detail, sort_keys=True)),
    ).fetchone()[0])
    text = evaluation.model_dump_json()
    sides = [("candidate", cand.version)]
    if evaluation.current is not None and evaluation.current.version != cand.version:
        sides.append(("current", evaluation.current.version))
    for role, version in sides:
        tx.execute(
            "INSERT INTO evaluations(audit_id, at, name, version, role, passed, record) "
            "VALUES (?,?,?,?,?,?,?)",
            (audit_id, at, name, version, role, int(evaluation.passed), text),
        )
    return audit_id


def find(tx: Transaction, audit_id: int) -> tuple[str, records.Evaluation] | None:
    """(name, evaluation) of the ``evaluate`` audit row ``audit_id``, inside a write."""
    row = tx.execute("SELECT name, detail FROM audit WHERE id=? AND action='evaluate'",
                     (audit_id,)).fetchone()
    return (row[0], records.Evaluation.model_validate_json(row[1])) if row else None


def latest(index: Index, name: str, version: int, limit: int) -> list[records.EvaluationEntry]:
    """The newest ``limit`` evaluations that measured ``name@version``."""
    rows = index._all(f"{_COLUMNS} WHERE e.name=? AND e.version=? ORDER BY e.id DESC LIMIT ?",
                      (name, version, max(0, limit)))
    return [_entry(r) for r in rows]


def _entry(row: Any) -> records.EvaluationEntry:
    return records.EvaluationEntry(id=row[0], at=to_dt(row[1]), actor=row[2], name=row[3],
                                   version=row[4], role=row[5],
                                   evaluation=records.Evaluation.model_validate_json(row[6]))

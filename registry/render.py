"""How registry records look in a terminal: tables that fit 80 columns, ``--json`` for all.

Digests are shown as 12 hex digits (enough to name a version: ``name@sha256:<12 hex>``), times
in local time, lineage as a few key fields; nothing is wrapped into the next column. Times are
read the same way (:func:`parse_when`). Only the CLIs (the registry's, release's) import it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import typer
from pydantic import BaseModel
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from loramux.registry.canary import CanaryState
from loramux.registry.evaluations import EvaluationEntry
from loramux.registry.manifest import AuditEntry, Lineage, Manifest, VersionInfo

SHORT = 12


def console() -> Console:
    """A console for this command: made per call, so the width (``COLUMNS``) is today's."""
    return Console(soft_wrap=True, highlight=False)


def as_json(data: Any) -> str:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    return json.dumps(data, indent=2)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def short(digest: str | None) -> str:
    """``sha256:0123456789ab`` -> ``0123456789ab``: the column header says what it is."""
    return digest.removeprefix("sha256:")[:SHORT] if digest else "-"


def local(when: datetime, *, seconds: bool = False) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


_AGO = re.compile(r"^(\d+)([smhd])$")


def parse_when(text: str | None, option: str) -> datetime | None:
    """ISO 8601 (naive = local time), ``now``, or an age like ``90m``, ``2h``, ``7d``."""
    if text is None:
        return None
    if text == "now":
        return datetime.now().astimezone()
    if m := _AGO.match(text):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return datetime.now().astimezone() - timedelta(**{unit: int(m[1])})
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use ISO 8601 (2024-05-07T14:00), 'now', or an age (90m, 2h, 7d)",
            param_hint=option,
        ) from None


def fitted(headers: list[str], rows: list[list[str]], width: int, squeeze: str) -> Table:
    """A table whose ``squeeze`` column takes what room is left (cut with …, or left out
    when under 8 characters); the other columns are never cut or wrapped."""
    widths = [max([cell_len(h), *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    cut = headers.index(squeeze)
    room = width - sum(w + 1 for i, w in enumerate(widths) if i != cut)
    keep = [i for i in range(len(headers)) if i != cut or room >= 8]
    table = Table(box=None, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for i in keep:
        table.add_column(headers[i], no_wrap=True, overflow="ellipsis",
                         max_width=room if i == cut else None)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def versions_table(rows: list[VersionInfo], width: int) -> Table:
    """``registry list``: labels and authors are in ``show`` and ``--json``."""
    cells = [
        [v.name, f"{v.version}{' del' if v.deleted else ''}", ",".join(v.aliases) or "-",
         short(v.digest), size(v.size), local(v.created_at), v.description.splitlines()[0]
         if v.description else ""]
        for v in rows
    ]
    headers = ["NAME", "VER", "ALIASES", "DIGEST", "SIZE", "CREATED", "DESCRIPTION"]
    return fitted(headers, cells, width, "DESCRIPTION")


def log_table(entries: list[AuditEntry], width: int) -> Table:
    cells = []
    for e in entries:
        version, digest = str(e.version or ""), short(e.digest)
        if e.action in ("alias_set", "alias_rm"):
            version = f"{e.old_version or '-'}→{e.version or '-'}"
            digest = f"{short(e.old_digest)}→{short(e.digest)}"
        target = f"{e.name}:{e.alias}" if e.alias else e.name
        cells.append([local(e.at), e.action, target, version, digest, e.actor])
    return fitted(["WHEN", "ACTION", "ADAPTER", "VERSION", "DIGEST", "WHO"], cells, width, "WHO")


def manifest_view(m: Manifest, evaluations: Sequence[EvaluationEntry] = ()) -> list[Table]:
    """``registry show``: the facts a person checks, each on one line, then the files; the
    latest eval-gate results for this version follow its lineage."""
    lora = m.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(
        lora.target_modules)
    rows = [
        ("ref", m.ref),
        ("digest", f"sha256:{short(m.digest)}"),
        ("size", size(m.size)),
        ("created", f"{local(m.created_at, seconds=True)} by {m.created_by}"),
        ("lora", f"r={lora.r} alpha={lora.lora_alpha:g} targets={targets}"
                 + (" rslora" if lora.use_rslora else "") + (" dora" if lora.use_dora else "")),
        ("base model", m.base_model_name_or_path or "-"),
        ("base fingerprint", f"sha256:{short(m.base_fingerprint)}" if m.base_fingerprint
         else "none (push with --base: servers refuse it)"),
        ("quantization", str(m.quantization) if m.quantization else "-"),
        ("labels", ", ".join(f"{k}={v}" for k, v in m.labels.items()) or "-"),
        ("description", m.description or "-"),
        *lineage_rows(m.lineage),
        *evaluation_rows(evaluations),
    ]
    facts = Table(box=None, show_header=False, pad_edge=False)
    facts.add_column(no_wrap=True, style="bold")
    facts.add_column(overflow="fold")  # a long path folds in its own column; nothing is lost
    for key, value in rows:
        facts.add_row(key, value)
    files = Table("FILE", "SIZE", "SHA256", box=None, pad_edge=False)
    for f in m.files:
        files.add_row(f.path, size(f.size), short(f.sha256))
    return [facts, files]


_TRAINING_KEYS = ("epochs", "max_steps", "learning_rate", "batch_size", "max_seq_length")
_METRIC_KEYS = ("train_loss", "eval_loss", "steps")


def lineage_rows(lineage: Lineage | None) -> list[tuple[str, str]]:
    """A few key fields of the lineage; ``show --json`` has all of it."""
    if lineage is None:
        return []
    rows = []
    if lineage.dataset or lineage.dataset_digest:
        data = lineage.dataset or "-"
        rows.append(("data", f"{data} (sha256:{short(lineage.dataset_digest)})"
                     if lineage.dataset_digest else data))
    hyper = lineage.hyperparameters
    if picked := [f"{k}={hyper[k]:g}" if isinstance(hyper[k], float) else f"{k}={hyper[k]}"
                  for k in _TRAINING_KEYS if hyper.get(k) is not None]:
        rows.append(("training", " ".join(picked)))
    metrics = lineage.metrics
    if picked := [f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else
                  f"{k}={metrics[k]}" for k in _METRIC_KEYS if metrics.get(k) is not None]:
        rows.append(("metrics", " ".join(picked)))
    rows.append(("lineage", "more with --json"))
    return rows


def evaluation_rows(entries: Sequence[EvaluationEntry]) -> list[tuple[str, str]]:
    """One line per recorded gate run that measured this version, newest first."""
    rows = []
    for entry in entries:
        e = entry.evaluation
        mine = e.candidate if entry.role == "candidate" else e.current
        assert mine is not None
        other = e.current if entry.role == "candidate" else e.candidate
        verdict = "passed" if e.passed else "FAILED"
        role = (f"candidate for :{e.alias} ({verdict})" if entry.role == "candidate"
                else f"current of :{e.alias} while @{e.candidate.version} was gated ({verdict})")
        versus = (f" vs @{other.version} {other.score:.3f}" if other is not None
                  else " (alias was unset)")
        rows.append((f"eval #{entry.id}", (
            f"{local(entry.at)} {role}: {e.scorer} {mine.score:.3f} (exact {mine.exact:.3f})"
            f"{versus}, threshold {e.threshold:g}, max regression {e.max_regression:g}, "
            f"{mine.n} records sha256:{short(e.eval_digest)} on {e.server}")))
    return rows


def canary_line(state: CanaryState) -> str:
    """An alias's split: ``alias set --canary`` and ``rollout status`` print it."""
    line = f"{state.name}:{state.alias} -> {state.name}@{state.stable}  {state.stable_digest}"
    if state.canary is not None:
        line += f"\n  canary {state.name}@{state.canary} at {state.weight:.4g}"
        line += f" ({state.weight:.1%})" + ("" if state.weight else " (rolled back)")
    return line

"""What the registry's pages show, shaped from the registry's own records (no HTTP here).

Rollout state comes from the audit log: the newest ``evaluate`` row per alias is its latest
eval result, the newest ``canary`` row per alias its canary state, and ``alias_set``,
``alias_rm``, ``promote`` and ``canary`` rows make up the alias history.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from loramux.registry.base import Registry
from loramux.registry.errors import NotFound
from loramux.registry.manifest import AuditEntry, Manifest, VersionInfo

REPORT_FILE = "training_report.json"  # what the trainer publishes next to the adapter
CURVE_FILE = "loss_curve.png"
CONFIG_FILE = "train_config.yaml"
MAX_TEXT_FILE = 1 << 20  # a report or config larger than this is not shown inline
ALIAS_ACTIONS = ("alias_set", "alias_rm", "promote", "canary")
HISTORY_LIMIT = 500
MISSING = "n/a"


@dataclass
class AdapterSummary:
    name: str
    versions: int
    latest: int
    aliases: dict[str, int] = field(default_factory=dict)


def adapters(registry: Registry) -> list[AdapterSummary]:
    summaries: dict[str, AdapterSummary] = {}
    for info in registry.list():
        summary = summaries.setdefault(info.name, AdapterSummary(info.name, 0, info.version))
        summary.versions += 1
        summary.latest = max(summary.latest, info.version)
        summary.aliases.update({alias: info.version for alias in info.aliases})
    return sorted(summaries.values(), key=lambda s: s.name)


def versions(registry: Registry, name: str) -> list[VersionInfo]:
    found = registry.list(name=name)
    if not found:
        raise NotFound(f"no adapter named {name!r}")
    return found


def history(registry: Registry, name: str) -> list[AuditEntry]:
    return registry.log(name=name, limit=HISTORY_LIMIT)


def alias_history(entries: list[AuditEntry]) -> list[AuditEntry]:
    return [e for e in entries if e.action in ALIAS_ACTIONS]


def latest_by_alias(entries: list[AuditEntry], action: str) -> list[AuditEntry]:
    """The newest ``action`` row per alias (entries are newest first)."""
    seen: dict[str, AuditEntry] = {}
    for entry in entries:
        if entry.action == action:
            alias = entry.alias or str(entry.detail.get("alias") or "")
            seen.setdefault(alias, entry)
    return list(seen.values())


def read_text(registry: Registry, manifest: Manifest, path: str) -> str | None:
    """A small text file of the version (its report, its training config), or None."""
    try:
        entry = manifest.file(path)
    except KeyError:
        return None
    if entry.size > MAX_TEXT_FILE:
        return None
    with registry.open_blob(entry.digest) as blob:
        return blob.read(MAX_TEXT_FILE).decode("utf-8", "replace")


def report(registry: Registry, manifest: Manifest) -> dict[str, Any] | None:
    text = read_text(registry, manifest, REPORT_FILE)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any, spec: str) -> str:
    return MISSING if not isinstance(value, int | float) else format(value, spec)


def report_figures(data: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The training report's headline numbers, as the trainer's summary table prints them."""
    if not data:
        return []
    metrics = data.get("metrics") or {}
    verdict = data.get("verdict") or {}
    rows = [
        ("train loss (last logged)", _num(metrics.get("train_loss_last"), ".4f")),
        ("train loss (run mean)", _num(metrics.get("train_loss"), ".4f")),
        ("eval loss", _num(metrics.get("eval_loss"), ".4f")),
        ("steps", _num(metrics.get("steps"), "d")),
        ("epochs", _num(metrics.get("epochs"), ".2f")),
        ("tokens seen", _num(metrics.get("tokens_seen"), ",")),
        ("wall time (s)", _num(metrics.get("train_seconds"), ".1f")),
        ("tokens/s", _num(metrics.get("tokens_per_second"), ",.0f")),
    ]
    if isinstance(verdict.get("eval_loss_before"), int | float):
        rows.append(("eval loss: base → adapter", f"{_num(verdict['eval_loss_before'], '.4f')} → "
                                                  f"{_num(verdict.get('eval_loss_after'), '.4f')}"))
    if isinstance(verdict.get("exact_match_before"), int | float):
        rows.append((f"exact match ({verdict.get('exact_match_total', '?')} prompts)",
                     f"{_num(verdict['exact_match_before'], '.0%')} → "
                     f"{_num(verdict.get('exact_match_after'), '.0%')}"))
    if verdict.get("summary"):
        rows.append(("verdict", str(verdict["summary"])))
    data_facts = data.get("data") or {}
    if "train_examples" in data_facts:
        rows.append(("records used / skipped", f"{data_facts.get('train_examples')} / "
                                               f"{data_facts.get('skipped_records', 0)}"))
    return [(k, v) for k, v in rows if MISSING not in v]


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys with JSON-ish leaves, for a row-by-row diff."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, str):
        return {prefix: value}
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def comparable(manifest: Manifest) -> dict[str, Any]:
    """A version's configuration and lineage: what a diff of two versions compares."""
    data = manifest.model_dump(mode="json", exclude={"files", "name", "version", "created_at"})
    data["files"] = {f.path: f"{f.size} B, {f.sha256[:12]}" for f in manifest.files}
    return data


@dataclass
class DiffRow:
    key: str
    a: str | None
    b: str | None

    @property
    def changed(self) -> bool:
        return self.a != self.b


def diff(a: Manifest, b: Manifest) -> list[DiffRow]:
    left, right = flatten(comparable(a)), flatten(comparable(b))
    return [DiffRow(key, left.get(key), right.get(key)) for key in sorted(left.keys() | right)]


def config_diff(registry: Registry, a: Manifest, b: Manifest) -> list[str]:
    """A unified diff of the two training configs (empty when equal or either is missing)."""
    left, right = read_text(registry, a, CONFIG_FILE), read_text(registry, b, CONFIG_FILE)
    if left is None or right is None:
        return []
    return list(difflib.unified_diff(left.splitlines(), right.splitlines(),
                                     f"{a.ref}/{CONFIG_FILE}", f"{b.ref}/{CONFIG_FILE}",
                                     lineterm=""))

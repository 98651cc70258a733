"""``loramux registry …``: the registry from the shell, against a folder or a server URL.

Tables (rich) for people, ``--json`` for scripts. Every RegistryError becomes one line on
stderr and the exit code of its class, in :class:`_Group` and nowhere else.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from loramux import registry as reg
from loramux.registry.errors import IntegrityError, RegistryError
from loramux.registry.manifest import Manifest

out = Console(soft_wrap=True)


class _Group(TyperGroup):
    """The one place registry errors become a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RegistryError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="registry",
    cls=_Group,
    no_args_is_help=True,
    help="Versioned store of LoRA adapters (a local folder or a registry server).",
)
alias_app = typer.Typer(no_args_is_help=True, help="Move or remove an alias (prod, staging…).")
app.add_typer(alias_app, name="alias")


class _State:
    def __init__(self, location: str, token: str | None) -> None:
        self.location = location
        self.token = token
        self._registry: reg.Registry | None = None

    def open(self) -> reg.Registry:
        if self._registry is None:
            self._registry = reg.open(self.location, token=self.token)
        return self._registry


@app.callback()
def main(
    ctx: typer.Context,
    registry: str | None = typer.Option(
        None,
        "--registry",
        envvar=reg.ENV_REGISTRY,
        help="Registry folder or http(s):// URL (default: ~/.loramux/registry).",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="LORAMUX_TOKEN", help="Bearer token for a remote registry."
    ),
) -> None:
    state = _State(registry or reg.default_location(), token)
    ctx.obj = state
    ctx.call_on_close(lambda: state._registry.close() if state._registry else None)


def _open(ctx: typer.Context) -> reg.Registry:
    return ctx.find_object(_State).open()  # type: ignore[union-attr]


def _emit_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def _local(when: datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected k=v, got {item!r}", param_hint="--label")
        labels[key] = value
    return labels


_AGO = re.compile(r"^(\d+)([smhd])$")


def _when(text: str | None, option: str) -> datetime | None:
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


# -- commands ----------------------------------------------------------------------------------


@app.command()
def push(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="PEFT LoRA adapter folder (save_pretrained output)."),
    name: str = typer.Option(..., "--name", "-n", help="Adapter name."),
    alias: str | None = typer.Option(None, "--alias", "-a", help="Point this alias at it."),
    description: str = typer.Option("", "--description", "-d"),
    label: list[str] = typer.Option([], "--label", "-l", help="k=v, repeatable."),
    base: Path | None = typer.Option(None, "--base", help="Base model folder to fingerprint."),
    base_fingerprint: str | None = typer.Option(None, "--base-fingerprint"),
    quantization: str | None = typer.Option(
        None, "--quantization", "-q", help="Trained against: nf4+dq+bf16, int8, none…"
    ),
    lineage: Path | None = typer.Option(None, "--lineage", help="JSON file of training lineage."),
    created_by: str | None = typer.Option(None, "--created-by"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate and store an adapter as the next version of NAME."""
    lineage_data = None
    if lineage is not None:
        try:
            lineage_data = json.loads(lineage.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{lineage}: {exc}", param_hint="--lineage") from None
    manifest = _open(ctx).push(
        folder, name, alias=alias, description=description, labels=_labels(label),
        base_model=base, base_fingerprint=base_fingerprint, quantization=quantization,
        lineage=lineage_data, created_by=created_by,
    )
    if as_json:
        _emit_json(manifest)
    else:
        out.print(f"{manifest.ref}  {manifest.digest}  {_size(manifest.size)}")


@app.command("list")
def list_(
    ctx: typer.Context,
    name: str | None = typer.Option(None, "--name", "-n"),
    base: str | None = typer.Option(None, "--base", help="Base fingerprint or model folder."),
    label: list[str] = typer.Option([], "--label", "-l", help="k=v, repeatable."),
    include_deleted: bool = typer.Option(False, "--all", help="Include deleted versions."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Versions, newest first per name, with their aliases."""
    fingerprint = base
    if base is not None and not base.startswith("sha256:"):
        fingerprint = reg.base_fingerprint(Path(base))
    rows = _open(ctx).list(
        name=name, base_fingerprint=fingerprint, labels=_labels(label),
        include_deleted=include_deleted,
    )
    if as_json:
        _emit_json(rows)
        return
    table = Table("NAME", "VER", "ALIASES", "DIGEST", "SIZE", "CREATED", "BY", "LABELS",
                  "DESCRIPTION", box=None)
    for v in rows:
        table.add_row(
            v.name, str(v.version) + (" (deleted)" if v.deleted else ""), ",".join(v.aliases),
            _short(v.digest), _size(v.size), _local(v.created_at), v.created_by,
            ",".join(f"{k}={val}" for k, val in v.labels.items()), v.description[:40],
        )
    out.print(table)


@app.command()
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="name, name@7, name:prod or name@sha256:…"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The manifest of the version REF resolves to."""
    manifest = _open(ctx).show(ref)
    if as_json:
        _emit_json(manifest)
        return
    _print_manifest(manifest)


def _print_manifest(m: Manifest) -> None:
    facts = Table(box=None, show_header=False)
    lora = m.lora
    rows = [
        ("ref", m.ref),
        ("digest", m.digest),
        ("size", _size(m.size)),
        ("created", f"{_local(m.created_at)} by {m.created_by}"),
        ("lora", f"r={lora.r} alpha={lora.lora_alpha:g} targets={lora.target_modules}"
                 + (" rslora" if lora.use_rslora else "") + (" dora" if lora.use_dora else "")),
        ("base model", m.base_model_name_or_path or "-"),
        ("base fingerprint", m.base_fingerprint or "-"),
        ("quantization", str(m.quantization) if m.quantization else "-"),
        ("labels", ", ".join(f"{k}={v}" for k, v in m.labels.items()) or "-"),
        ("description", m.description or "-"),
    ]
    if m.lineage is not None:
        rows.append(("lineage", m.lineage.model_dump_json(exclude_defaults=True)))
    for key, value in rows:
        facts.add_row(f"[bold]{key}[/]", value)
    out.print(facts)
    files = Table("FILE", "SIZE", "SHA256", box=None)
    for f in m.files:
        files.add_row(f.path, _size(f.size), f.sha256)
    out.print(files)


@app.command()
def pull(
    ctx: typer.Context,
    ref: str = typer.Argument(...),
    to: Path = typer.Option(..., "--to", help="Folder to create (absent or empty)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Download REF into a folder, verifying every byte (no partial folder on failure)."""
    registry = _open(ctx)
    manifest = registry.resolve(ref)
    path = registry.pull(f"{manifest.name}@{manifest.version}", to)
    if as_json:
        _emit_json({"ref": manifest.ref, "digest": manifest.digest, "path": str(path)})
    else:
        out.print(f"{manifest.ref}  {manifest.digest}  -> {path}")


@alias_app.command("set")
def alias_set(
    ctx: typer.Context, name: str, alias: str, version: int = typer.Argument(..., min=1)
) -> None:
    """Point NAME:ALIAS at VERSION (recorded in the audit log)."""
    pointer = _open(ctx).alias_set(name, alias, version)
    out.print(f"{name}:{alias} -> {name}@{pointer.version}  {pointer.digest}")


@alias_app.command("rm")
def alias_rm(ctx: typer.Context, name: str, alias: str) -> None:
    """Remove NAME:ALIAS."""
    _open(ctx).alias_rm(name, alias)
    out.print(f"removed {name}:{alias}")


@app.command()
def delete(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="name@N or name@sha256:…"),
    force: bool = typer.Option(False, "--force", help="Also remove aliases pointing at it."),
) -> None:
    """Yank a version: it no longer resolves; its number is never reused."""
    info = _open(ctx).delete(ref, force=force)
    out.print(f"deleted {info.name}@{info.version}  {info.digest}")


@app.command()
def gc(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove blobs no live version references, and leftovers of interrupted pushes."""
    report = _open(ctx).gc()
    if as_json:
        _emit_json(report)
    else:
        out.print(
            f"removed {report.removed_blobs} blob(s) ({_size(report.removed_bytes)}) and "
            f"{report.removed_temp_files} temp file(s); kept {report.kept_blobs} blob(s)"
        )


@app.command()
def verify(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-hash every blob; exit non-zero if any is corrupt or missing."""
    report = _open(ctx).verify()
    if as_json:
        _emit_json(report)
    else:
        for p in report.problems:
            out.print(f"{p.problem.upper()} {p.digest}: {p.detail}; used by "
                      f"{', '.join(p.used_by) or 'nothing'}", markup=False)
        out.print(f"checked {report.checked_blobs} blob(s), {_size(report.checked_bytes)}")
    if not report.ok:
        raise IntegrityError(f"{len(report.problems)} blob(s) corrupt or missing")


@app.command("log")
def log_(
    ctx: typer.Context,
    name: str | None = typer.Option(None, "--name", "-n"),
    alias: str | None = typer.Option(None, "--alias", "-a"),
    since: str | None = typer.Option(None, "--since", help="ISO time or age (2h, 7d)."),
    until: str | None = typer.Option(None, "--until", help="ISO time or age."),
    at: str | None = typer.Option(
        None, "--at", help="With --name and --alias: where the alias pointed at that time."
    ),
    limit: int = typer.Option(100, "--limit", min=0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The audit log (newest first), or where an alias pointed at a given time."""
    registry = _open(ctx)
    if at is not None:
        if not (name and alias):
            raise typer.BadParameter("--at needs --name and --alias", param_hint="--at")
        when = _when(at, "--at")
        assert when is not None
        pointer = registry.alias_at(name, alias, when)
        if as_json:
            _emit_json(pointer.model_dump(mode="json") if pointer else None)
        elif pointer is None:
            out.print(f"{name}:{alias} did not exist at {_local(when.astimezone())}")
        else:
            out.print(f"{name}:{alias} -> {name}@{pointer.version}  {pointer.digest}  "
                      f"(since {_local(pointer.since)}, set by {pointer.set_by})")
        return
    entries = registry.log(
        name=name, alias=alias, since=_when(since, "--since"), until=_when(until, "--until"),
        limit=limit,
    )
    if as_json:
        _emit_json(entries)
        return
    table = Table("WHEN", "WHO", "ACTION", "NAME", "ALIAS", "VERSION", "DIGEST", box=None)
    for e in entries:
        version = str(e.version or "")
        digest = _short(e.digest)
        if e.action in ("alias_set", "alias_rm"):
            version = f"{e.old_version or '-'} -> {e.version or '-'}"
            digest = f"{_short(e.old_digest)} -> {_short(e.digest)}"
        table.add_row(_local(e.at), e.actor, e.action, e.name, e.alias or "", version, digest)
    out.print(table)


@app.command()
def serve(
    ctx: typer.Context,
    root: Path | None = typer.Option(None, "--root", help="Store folder [default: --registry]."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8700, "--port"),
    tokens: Path | None = typer.Option(
        None, "--tokens", help="File of SECRET:read|write:NAME entries (NAME optional; also env "
        "LORAMUX_REGISTRY_TOKENS)."
    ),
    anonymous_read: bool = typer.Option(False, "--anonymous-read", help="Allow reads without "
                                        "a token."),
    max_bytes: int = typer.Option(2 << 30, "--max-bytes", help="Largest adapter accepted."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve a local store over HTTP (FastAPI; OpenAPI at /docs)."""
    from loramux.registry.app import serve as run
    from loramux.registry.auth import ENV_TOKENS, TokenAuth

    state = ctx.find_object(_State)
    if root is None:
        if state is None or reg.is_url(state.location):
            raise typer.BadParameter("give --root (a folder to serve)", param_hint="--root")
        root = Path(state.location)
    auth = TokenAuth.from_sources(tokens, anonymous_read=anonymous_read)
    if not auth.configured:
        raise RegistryError(
            f"no tokens configured: pass --tokens FILE or set {ENV_TOKENS}"
            " (e.g. 'secret1:write,secret2:read'), or --anonymous-read for a read-only registry"
        )
    run(str(root), host=host, port=port, auth=auth,
        limits=reg.Limits(max_total_bytes=max_bytes), log_level=log_level)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes, seconds instead of minutes"),
    as_json: bool = typer.Option(False, "--json"),
    out_file: Path | None = typer.Option(None, "--out", help="Also write the results here."),
) -> None:
    """Resolve latency (local and HTTP) and push/pull throughput against a plain copy."""
    from loramux.registry import bench as bench_mod

    results = bench_mod.run(quick=quick, out=out_file, show=not as_json)
    if as_json:
        _emit_json(results)


if __name__ == "__main__":
    app()

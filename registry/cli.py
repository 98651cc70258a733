"""``loramux registry …``: the registry from the shell, against a folder or a server URL.

Tables for people (``render``), ``--json`` for scripts. Every error becomes one line on stderr
and the exit code of its class (``loramux.cli_errors``, as every loramux command). ``--registry``
and ``--token`` may be given before the verb or after it. Only registry verbs live here: release
management (``promote``, ``rollout status``) has its own CLI, ``release/cli.py``, which
``loramux/cli.py`` mounts into this group under those names, using :func:`verb`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loramux import registry as reg
from loramux import wire
from loramux.registry import render
from loramux.registry.blobs import BLOBS_HELP, ENV_BLOBS
from loramux.registry.canary import parse_spec
from loramux.registry.cli_kit import (  # noqa: F401  (REGISTRY_HELP, TOKEN_HELP: re-exported)
    REGISTRY_HELP,
    TOKEN_HELP,
    Location,
    _State,
    app,
    emit_json,
    verb,
)
from loramux.registry.errors import IntegrityError, NotFound, RegistryError
from loramux.registry.http.auth import TOKENS_FORMAT
from loramux.registry.index import INDEX_FILE, INDEX_HELP
from loramux.registry.manifest import parse_labels

alias_app = typer.Typer(no_args_is_help=True, help="Move or remove an alias (prod, staging…).")
app.add_typer(alias_app, name="alias")


# -- commands ----------------------------------------------------------------------------------


@verb(create=True)
def push(
    registry: reg.Registry,
    folder: Path = typer.Argument(..., help="PEFT LoRA adapter folder (save_pretrained output)."),
    name: str = typer.Option(..., "--name", "-n", help="Adapter name."),
    alias: str | None = typer.Option(None, "--alias", "-a", help="Point this alias at it."),
    description: str = typer.Option("", "--description", "-d"),
    label: list[str] = typer.Option([], "--label", "-l", help="k=v, repeatable."),
    base: Path | None = typer.Option(
        None, "--base", help="Base model folder to fingerprint (default: the folder "
        "adapter_config.json names, if it exists here; else a warning)."),
    base_fingerprint: str | None = typer.Option(None, "--base-fingerprint"),
    quantization: str | None = typer.Option(
        None, "--quantization", "-q", help="Trained against: nf4+dq+bf16, int8, none…"
    ),
    lineage: Path | None = typer.Option(None, "--lineage", help="JSON file of training lineage."),
    created_by: str | None = typer.Option(None, "--created-by"),
    new_version: bool = typer.Option(False, "--new-version", help="Files equal to the latest "
                                     "version's: record the facts given as a new version."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate and store an adapter as the next version of NAME (creates the registry)."""
    lineage_data = None
    if lineage is not None:
        try:
            lineage_data = json.loads(lineage.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{lineage}: {exc}", param_hint="--lineage") from None
    manifest = registry.push(
        folder, name, alias=alias, description=description, labels=parse_labels(label),
        base_model=base, base_fingerprint=base_fingerprint, quantization=quantization,
        lineage=lineage_data, created_by=created_by, new_version=new_version,
    )
    if as_json:
        emit_json(manifest)
    else:
        render.console().print(f"{manifest.ref}  {manifest.digest}  {render.size(manifest.size)}")


@verb("list")
def list_(
    registry: reg.Registry,
    name: str | None = typer.Option(None, "--name", "-n"),
    base: str | None = typer.Option(None, "--base", help="Base fingerprint or model folder."),
    label: list[str] = typer.Option([], "--label", "-l", help="k=v, repeatable."),
    include_deleted: bool = typer.Option(False, "--all", help="Include deleted versions."),
    as_json: bool = typer.Option(False, "--json", help="Every field (labels, authors, bases)."),
) -> None:
    """Versions, newest first per name, with their aliases."""
    fingerprint = base
    if base is not None and not base.startswith("sha256:"):
        fingerprint = reg.base_fingerprint(Path(base))
    rows = registry.list(
        name=name, base_fingerprint=fingerprint, labels=parse_labels(label),
        include_deleted=include_deleted,
    )
    if as_json:
        emit_json(rows)
    else:
        out = render.console()
        out.print(render.versions_table(rows, out.width))


@verb()
def show(
    registry: reg.Registry,
    ref: str = typer.Argument(..., help="name, name@7, name:prod or name@sha256:…"),
    as_json: bool = typer.Option(False, "--json", help="The whole manifest (full digests, "
                                 "lineage)."),
) -> None:
    """The manifest of the version REF resolves to."""
    manifest = registry.show(ref)
    if as_json:
        emit_json(manifest)
    else:
        out, evaluations = render.console(), registry.evaluations(manifest.name, manifest.version)
        for table in render.manifest_view(manifest, evaluations):
            out.print(table)


@verb()
def pull(
    registry: reg.Registry,
    ref: str = typer.Argument(...),
    to: Path = typer.Option(..., "--to", help="Folder to create (absent or empty)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Download REF into a folder, verifying every byte (no partial folder on failure)."""
    manifest = registry.resolve(ref)
    path = registry.pull(f"{manifest.name}@{manifest.version}", to)
    if as_json:
        emit_json({"ref": manifest.ref, "digest": manifest.digest, "path": str(path)})
    else:
        render.console().print(f"{manifest.ref}  {manifest.digest}  -> {path}")


@verb("rm", group=alias_app)
def alias_rm(registry: reg.Registry, name: str, alias: str) -> None:
    """Remove NAME:ALIAS."""
    registry.alias_rm(name, alias)
    render.console().print(f"removed {name}:{alias}")


@verb("set", group=alias_app)
def alias_set(
    registry: reg.Registry, name: str, alias: str, version: int = typer.Argument(..., min=1),
    canary: str | None = typer.Option(
        None, "--canary", metavar="V:WEIGHT",
        help="Also send WEIGHT of the alias's requests to version V: 5:10% or 5:0.1 (sticky "
             "per user). Without it the move is plain and ends any canary."),
) -> None:
    """Point NAME:ALIAS at VERSION (recorded in the audit log)."""
    if canary is None:
        pointer = registry.alias_set(name, alias, version)
        render.console().print(f"{name}:{alias} -> {name}@{pointer.version}  {pointer.digest}")
        return
    canary_version, weight = parse_spec(canary)
    render.console().print(render.canary_line(registry.canary_set(name, alias, version,
                                                                  canary_version, weight)))


@verb()
def delete(
    registry: reg.Registry,
    ref: str = typer.Argument(..., help="name@N or name@sha256:…"),
    force: bool = typer.Option(False, "--force", help="Also remove aliases pointing at it "
                               "(over HTTP: an admin token)."),
) -> None:
    """Yank a version: it no longer resolves; its number is never reused."""
    info = registry.delete(ref, force=force)
    render.console().print(f"deleted {info.name}@{info.version}  {info.digest}")


@verb()
def gc(
    registry: reg.Registry,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove blobs no live version references, and leftovers of interrupted pushes.

    Over HTTP it needs an admin token.
    """
    report = registry.gc()
    if as_json:
        emit_json(report)
    else:
        render.console().print(
            f"removed {report.removed_blobs} blob(s) ({render.size(report.removed_bytes)}) and "
            f"{report.removed_temp_files} temp file(s); kept {report.kept_blobs} blob(s)"
            + (f"; removed {report.removed_artifacts} OCI artifact(s) of deleted versions"
               if report.removed_artifacts else "")
        )


@verb()
def verify(
    registry: reg.Registry,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-hash every blob; exit non-zero if any is corrupt or missing.

    Corrupt blobs are moved to quarantine/ in the store (the next push of the same file stores
    it again). Over HTTP it needs an admin token.
    """
    report = registry.verify()
    if as_json:
        emit_json(report)
    else:
        out = render.console()
        for p in report.problems:
            out.print(f"{p.problem.upper()} {p.digest}: {p.detail}; used by "
                      f"{', '.join(p.used_by) or 'nothing'}", markup=False)
        out.print(f"checked {report.checked_blobs} blob(s), {render.size(report.checked_bytes)}")
    if not report.ok:
        raise IntegrityError(f"{len(report.problems)} blob(s) corrupt or missing")


@verb("log")
def log_(
    registry: reg.Registry,
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
    out = render.console()
    if at is not None:
        if not (name and alias):
            raise typer.BadParameter("--at needs --name and --alias", param_hint="--at")
        when = render.parse_when(at, "--at")
        assert when is not None
        pointer = registry.alias_at(name, alias, when)
        if as_json:
            emit_json(pointer.model_dump(mode="json") if pointer else None)
        elif pointer is None:
            out.print(f"{name}:{alias} did not exist at {render.local(when, seconds=True)}")
        else:
            out.print(f"{name}:{alias} -> {name}@{pointer.version}  {pointer.digest}  "
                      f"(since {render.local(pointer.since, seconds=True)}, "
                      f"set by {pointer.set_by})")
        return
    entries = registry.log(
        name=name, alias=alias, since=render.parse_when(since, "--since"),
        until=render.parse_when(until, "--until"),
        limit=limit,
    )
    if as_json:
        emit_json(entries)
    else:
        out.print(render.log_table(entries, out.width))


@app.command()
def serve(
    ctx: typer.Context,
    registry: Location = None,
    root: Path | None = typer.Option(None, "--root", help="Store folder (default: --registry)."),
    create: bool = typer.Option(False, "--create", help="Create the store when --root holds "
                                "none (else a typo would serve a new empty one)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8700, "--port", help="0: any free port."),
    tokens: Path | None = typer.Option(None, "--tokens", help=TOKENS_FORMAT),
    anonymous_read: bool = typer.Option(False, "--anonymous-read", help="Allow reads without "
                                        "a token."),
    max_bytes: int = typer.Option(2 << 30, "--max-bytes", help="Largest adapter accepted."),
    log_level: str = typer.Option("info", "--log-level"),
    index: str | None = typer.Option(None, "--index", envvar=reg.ENV_INDEX,
                                     metavar="postgresql://…", help=INDEX_HELP),
    blobs: str | None = typer.Option(None, "--blobs", envvar=ENV_BLOBS, metavar="oci://…",
                                     help=BLOBS_HELP),
    # The connection limits `loramux serve` has too (loramux.wire).
    keep_alive: int = typer.Option(wire.KEEP_ALIVE_S, "--keep-alive-s", min=1,
                                   help=wire.KEEP_ALIVE_HELP),
    header_timeout: float = typer.Option(wire.HEADER_TIMEOUT_S, "--header-timeout-s", min=0.1,
                                         help=wire.HEADER_TIMEOUT_HELP),
    max_connections: int = typer.Option(wire.MAX_CONNECTIONS, "--max-connections", min=1,
                                        help=wire.MAX_CONNECTIONS_HELP),
    forwarded_allow_ips: str = typer.Option(wire.FORWARDED_ALLOW_IPS, "--forwarded-allow-ips",
                                            help=wire.FORWARDED_HELP),
) -> None:
    """Serve a local store over HTTP (FastAPI; OpenAPI at /docs)."""
    from loramux.registry.http.app import serve as run
    from loramux.registry.http.auth import ENV_TOKENS, TokenAuth
    from loramux.web.serving import ConnectionLimits

    if root is None:
        location = registry or ctx.find_object(_State).location  # type: ignore[union-attr]
        if reg.is_url(location):
            raise typer.BadParameter("give --root (a folder to serve)", param_hint="--root")
        root = Path(location)
    auth = TokenAuth.from_sources(tokens, anonymous_read=anonymous_read)
    if not auth.configured:
        raise RegistryError(
            f"no tokens configured: pass --tokens FILE or set {ENV_TOKENS}"
            " (e.g. 'secret0:admin,secret1:write,secret2:read'), or --anonymous-read for a"
            " read-only registry"
        )
    if not create and index is None and not (root / INDEX_FILE).is_file():
        raise NotFound(f"no registry at {root}: check the path, or pass --create to serve a new "
                       "empty one there")
    run(str(root), host=host, port=port, auth=auth,
        limits=reg.Limits(max_total_bytes=max_bytes), log_level=log_level, index=index,
        blobs=blobs, connection_limits=ConnectionLimits(keep_alive, header_timeout,
                                                        max_connections, forwarded_allow_ips))


if __name__ == "__main__":
    app()

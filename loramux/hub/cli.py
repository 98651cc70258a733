"""``loramux registry import`` and ``loramux registry export``: the Hub's two verbs, mounted
beside the registry's own (``loramux/cli.py``) with its ``--registry``/``--token``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from loramux import registry as reg
from loramux.hub.export import export_to_hub
from loramux.hub.importer import import_from_cache, import_from_hub
from loramux.hub.refs import SCHEME, HubRef
from loramux.registry import render
from loramux.registry.cli import emit_json, verb


@verb(group=None, create=True)
def import_command(
    registry: reg.Registry,
    source: str = typer.Argument(..., metavar="hf://ORG/REPO[@REVISION] | CACHE_FOLDER",
                                 help="A Hub repo, or a folder inside the Hub cache "
                                 "(…/models--ORG--REPO/snapshots/<commit>)."),
    name: str | None = typer.Option(None, "--name", "-n",
                                    help="Adapter name (default: org--repo)."),
    subfolder: str = typer.Option("", "--subfolder", help="The adapter's folder in the repo."),
    base: Path | None = typer.Option(None, "--base", help="Base model folder: the adapter's "
                                     "shapes are checked against it and it is fingerprinted."),
    alias: str | None = typer.Option(None, "--alias", "-a", help="Point this alias at it."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import a PEFT adapter from the Hugging Face Hub (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE
    apply); its repo, commit and files' sha256 are recorded. The same commit twice is a no-op."""
    if source.startswith(SCHEME):
        manifest = import_from_hub(registry, HubRef.parse(source), name=name,
                                   subfolder=subfolder, base=base, alias=alias,
                                   token=os.environ.get("HF_TOKEN") or None)
    else:
        folder = Path(source)
        if subfolder:
            folder = folder / subfolder
        manifest = import_from_cache(registry, folder, name=name, base=base, alias=alias)
    if as_json:
        emit_json(manifest)
        return
    hub = (manifest.lineage.model_extra or {}).get("source", {}).get("hub", {}) \
        if manifest.lineage else {}
    render.console().print(f"{manifest.ref}  {manifest.digest}  {render.size(manifest.size)}  "
                           f"from hf://{hub.get('repo')}@{str(hub.get('commit'))[:12]}")


@verb(group=None)
def export_command(
    registry: reg.Registry,
    ref: str = typer.Argument(..., metavar="NAME@V|NAME:ALIAS", help="The version to export."),
    to_hub: str = typer.Option(..., "--to-hub", metavar="ORG/REPO", help="Hub model repo "
                               "(created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    base_model: str | None = typer.Option(None, "--base-model", metavar="HUB_ID", help="The base "
                                          "model's Hub id for the card and adapter_config.json "
                                          "(default: the recorded one, unless a local path)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Upload a version to the Hub as a standard PEFT repo with a model card."""
    done = export_to_hub(registry, ref, to_hub, private=private, base_model=base_model,
                         token=os.environ.get("HF_TOKEN") or None)
    if as_json:
        emit_json({"repo": done.repo, "commit": done.commit, "url": done.url, "ref": done.ref})
    else:
        render.console().print(f"{done.ref} -> hf://{done.repo}@{done.commit[:12]}  {done.url}")

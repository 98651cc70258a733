"""Export a registry version to the Hub as a standard PEFT repo (``upload_folder``).

The repo holds ``adapter_config.json``, ``adapter_model.safetensors`` and a model card; the
config's ``base_model_name_or_path`` is set to the Hub id given (a local path from the trainer's
machine means nothing to whoever downloads it), so ``PeftModel.from_pretrained(base, repo)``
works as on any PEFT adapter repo.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loramux.hub.card import model_card
from loramux.hub.errors import hub_errors
from loramux.hub.fetch import remove
from loramux.hub.refs import HubRef
from loramux.registry import Registry

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class Exported:
    repo: str
    commit: str
    url: str
    ref: str  # the registry version exported


def export_to_hub(registry: Registry, ref: str, repo: str, *, private: bool = False,
                  base_model: str | None = None, endpoint: str | None = None,
                  token: str | None = None) -> Exported:
    """Upload ``ref`` (``name@3``, ``name:prod``…) to the Hub model repo ``repo``."""
    from huggingface_hub import HfApi

    HubRef.parse(f"hf://{repo}")  # the same repo rules as an import
    manifest = registry.resolve(ref)
    work = Path(tempfile.mkdtemp(prefix="loramux-export-"))
    try:
        folder = registry.pull(manifest.ref, work / "adapter")
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        recorded = config.get("base_model_name_or_path")
        base = base_model or (recorded if isinstance(recorded, str) and not
                              Path(recorded).expanduser().is_absolute() else None)
        if base:
            config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        evaluations = registry.evaluations(manifest.name, manifest.version)
        (folder / "README.md").write_text(model_card(manifest, base, evaluations),
                                          encoding="utf-8")
        api = HfApi(endpoint=endpoint, token=token)
        where = f"hf://{repo}"
        with hub_errors(where):
            api.create_repo(repo, private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo, folder_path=folder,
                allow_patterns=[*PEFT_FILES, "README.md"],
                commit_message=f"loramux: {manifest.ref} ({manifest.digest[:19]})",
            )
        return Exported(repo=repo, commit=info.oid, url=str(info.commit_url), ref=manifest.ref)
    finally:
        remove(work)

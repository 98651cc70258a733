"""Adapters from and to the Hugging Face Hub through the real ``huggingface_hub`` client and the
``loramux`` CLI, against the Hub-compatible endpoint on loopback (no internet here)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_cli import TOKEN, Cli

from loramux.registry.store import LocalRegistry
from loramux.support.adapters import llama_shapes, write_adapter


def adapter_files(base: Path, seed: int, *, rank: int = 4, recorded: str = "org/some-base",
                  modules: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, bytes]:
    """A PEFT adapter for ``base`` (its real shapes) as the files a Hub repo holds."""
    import tempfile

    folder = Path(tempfile.mkdtemp()) / "a"
    write_adapter(folder, llama_shapes(base, modules), rank=rank, seed=seed, base=recorded)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else ""


def versions(registry: Path) -> list[str]:
    if not registry.exists():
        return []
    with LocalRegistry(registry) as store:
        return [f"{row.name}@{row.version}" for row in store.list()]


def test_import_by_tag_and_by_commit_records_the_source(cli: Cli, demo_base: Path) -> None:
    files = adapter_files(demo_base, seed=1)
    first = cli.hub.commit("acme/sql-lora", files, tag="v1")
    moved = cli.hub.commit("acme/sql-lora", adapter_files(demo_base, seed=2))  # main moves on

    by_tag = cli("import", "hf://acme/sql-lora@v1", "--base", str(demo_base), "--json")
    assert by_tag.returncode == 0, by_tag.stderr
    manifest = json.loads(by_tag.stdout)
    assert manifest["name"] == "acme--sql-lora" and manifest["version"] == 1
    source = manifest["lineage"]["source"]["hub"]
    assert source["repo"] == "acme/sql-lora" and source["commit"] == first
    assert source["revision"] == "v1" and source["endpoint"] == cli.hub.url
    assert source["files"] == {p: "sha256:" + hashlib.sha256(b).hexdigest()
                               for p, b in sorted(files.items())}
    assert manifest["base_fingerprint"].startswith("sha256:")

    # The same commit again (by its id this time): no new version, the same digest.
    again = cli("import", f"hf://acme/sql-lora@{first}", "--base", str(demo_base), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["digest"] == manifest["digest"]
    assert versions(cli.registry) == ["acme--sql-lora@1"]

    latest = cli("import", "hf://acme/sql-lora", "--name", "sql", "--base", str(demo_base),
                 "--json")
    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["lineage"]["source"]["hub"]["commit"] == moved
    # The moved branch does not change what the pinned commit names.
    pinned = cli("import", f"hf://acme/sql-lora@{first}", "--name", "sql", "--json",
                 "--base", str(demo_base))
    assert json.loads(pinned.stdout)["digest"] == manifest["digest"]


@pytest.mark.parametrize("bad", ["pickle", "unsafe-path", "nested-pickle"])
def test_a_repo_with_a_pickle_or_an_unsafe_path_publishes_nothing(cli: Cli, demo_base: Path,
                                                                   bad: str) -> None:
    files = adapter_files(demo_base, seed=3)
    extra = {"pickle": {"adapter_model.bin": b"\x80\x04evil"},
             "unsafe-path": {"../../escape.json": b"{}"},
             "nested-pickle": {"checkpoints/optimizer.pt": b"\x80\x04"}}[bad]
    cli.hub.commit(f"acme/{bad}", {**files, **extra})
    proc = cli("import", f"hf://acme/{bad}", "--base", str(demo_base))
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith("error: ") and "nothing was imported" in line, proc.stderr
    assert "Traceback" not in proc.stderr
    assert versions(cli.registry) == []


def test_an_adapter_for_another_base_is_refused(cli: Cli, demo_base: Path, tmp_path: Path) -> None:
    config = json.loads((demo_base / "config.json").read_text())
    wider = {**config, "hidden_size": config["hidden_size"] * 2,
             "intermediate_size": config["intermediate_size"] * 2}
    folder = write_adapter(tmp_path / "wide", llama_shapes(wider, ("q_proj",)), rank=4)
    cli.hub.commit("acme/wide", {p.name: p.read_bytes() for p in folder.iterdir()})
    proc = cli("import", "hf://acme/wide", "--base", str(demo_base))
    assert proc.returncode != 0 and "trained for another base" in last_line(proc), proc.stderr
    assert versions(cli.registry) == []


def test_a_private_repo_needs_the_token(cli: Cli, demo_base: Path) -> None:
    cli.hub.commit("acme/private", adapter_files(demo_base, seed=4), private=True)
    refused = cli("import", "hf://acme/private", "--base", str(demo_base), HF_TOKEN="hf_wrong")
    assert refused.returncode == 8, refused.stderr
    assert last_line(refused).startswith("error: hf://acme/private@main: the Hub refused the "
                                         "credentials (401)")
    assert "Traceback" not in refused.stderr
    allowed = cli("import", "hf://acme/private", "--base", str(demo_base), HF_TOKEN=TOKEN)
    assert allowed.returncode == 0, allowed.stderr


def test_offline_imports_from_the_populated_cache_and_fails_cleanly_without_it(
        cli: Cli, demo_base: Path) -> None:
    sha = cli.hub.commit("acme/offline", adapter_files(demo_base, seed=5), tag="v2")
    online = cli("import", "hf://acme/offline@v2", "--base", str(demo_base), "--json")
    assert online.returncode == 0, online.stderr
    cli.hub.requests.clear()
    offline = cli("import", "hf://acme/offline@v2", "--name", "offline-copy", "--base",
                  str(demo_base), "--json", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["lineage"]["source"]["hub"]["commit"] == sha
    assert cli.hub.requests == []  # not one request reached the Hub
    missing = cli("import", "hf://acme/never-fetched", "--base", str(demo_base),
                  HF_HUB_OFFLINE="1")
    assert missing.returncode == 9 and "HF_HUB_OFFLINE" in last_line(missing), missing.stderr


def test_the_hub_unreachable_is_one_line(cli: Cli, demo_base: Path) -> None:
    cli.hub.commit("acme/down", adapter_files(demo_base, seed=6))
    cli.hub.fail_with = 503
    try:
        down = cli("import", "hf://acme/down", "--base", str(demo_base))
    finally:
        cli.hub.fail_with = None
    assert down.returncode == 9, down.stderr
    assert "the Hub answered 503" in last_line(down) or "cannot be reached" in last_line(down)
    closed = cli("import", "hf://acme/down", "--base", str(demo_base),
                 HF_ENDPOINT="http://127.0.0.1:9")
    assert closed.returncode == 9 and "cannot be reached" in last_line(closed), closed.stderr


def test_a_folder_in_the_hub_cache_records_repo_and_commit(cli: Cli, demo_base: Path) -> None:
    from huggingface_hub import snapshot_download

    sha = cli.hub.commit("acme/cached", adapter_files(demo_base, seed=7))
    folder = Path(snapshot_download("acme/cached", endpoint=cli.hub.url,
                                    cache_dir=cli.home / "hub"))
    assert folder.name == sha and (folder / "adapter_config.json").is_symlink()
    proc = cli("import", str(folder), "--base", str(demo_base), "--json")
    assert proc.returncode == 0, proc.stderr
    hub = json.loads(proc.stdout)["lineage"]["source"]["hub"]
    assert (hub["repo"], hub["commit"]) == ("acme/cached", sha)
    # A link out of the cache's blobs is refused, even inside a snapshot folder.
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to("/etc/hostname")
    bad = cli("import", str(folder), "--name", "bad", "--base", str(demo_base))
    assert bad.returncode != 0 and "links outside" in last_line(bad), bad.stderr


def test_export_is_a_peft_repo_that_peft_loads(cli: Cli, demo_base: Path, tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", llama_shapes(demo_base, ("q_proj", "v_proj")), rank=4,
                           seed=8, base=str(demo_base))
    with LocalRegistry(cli.registry, create=True) as store:
        store.push(folder, "codeword", base_model=demo_base, alias="prod",
                   lineage={"dataset_digest": "sha256:" + "ab" * 32,
                            "hyperparameters": {"r": 4}})
    refused = cli("export", "codeword:prod", "--to-hub", "acme/codeword", HF_TOKEN="hf_wrong")
    assert refused.returncode == 8 and "401" in last_line(refused), refused.stderr
    proc = cli("export", "codeword:prod", "--to-hub", "acme/codeword", "--private",
               "--base-model", "acme/demo-base", "--json", HF_TOKEN=TOKEN)
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    repo = cli.hub.repos["acme/codeword"]
    assert repo.private and repo.refs["main"] == done["commit"]
    tree = repo.commits[done["commit"]]
    assert sorted(tree) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = tree["README.md"].decode()
    meta = card.split("---")[1]
    for line in ("library_name: peft", "base_model: acme/demo-base",
                 "base_model_relation: adapter", "digest: sha256:"):
        assert line in meta, card
    assert "dataset_digest" in card
    assert json.loads(tree["adapter_config.json"])["base_model_name_or_path"] == "acme/demo-base"

    # PEFT loads it by repo id, through the endpoint, as any PEFT adapter repo.
    script = (
        "import sys, torch\n"
        "from peft import PeftModel\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM\n"
        "base = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)\n"
        "model = PeftModel.from_pretrained(base, 'acme/codeword')\n"
        "want = load_file(sys.argv[2])\n"
        "got = {k: v for k, v in model.state_dict().items() if 'lora_' in k}\n"
        "assert len(got) == len(want), (len(got), len(want))\n"
        "for key, value in want.items():\n"
        "    mine = key.replace('.lora_A.weight', '.lora_A.default.weight')"
        ".replace('.lora_B.weight', '.lora_B.default.weight')\n"
        "    assert torch.equal(got[mine], value), key\n"
        "print('loaded', len(got))\n"
    )
    env = cli.env(HF_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    loaded = subprocess.run([sys.executable, "-c", script, str(demo_base),
                             str(folder / "adapter_model.safetensors")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().startswith("loaded ")
    assert os.environ.get("HF_ENDPOINT") != cli.hub.url  # the test's own process untouched

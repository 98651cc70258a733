"""What a pusher controls cannot hurt the registry: regexes from adapter_config.json, links and
special files in the folder, file lists that are not a tree, oversized manifest fields."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from registry_support import WRITE_TOKEN, write_adapter

from loramux.registry import InvalidAdapter, InvalidName, InvalidPattern
from loramux.registry.digests import adapter_digest
from loramux.registry.manifest import FileEntry, LoraFacts, Manifest, PushRequest, utcnow
from loramux.registry.store import LocalRegistry
from loramux.registry.transfer import materialize

pytestmark = pytest.mark.timeout(120)


def _config(folder: Path, **changes: object) -> Path:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    path.chmod(0o644)
    path.write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize(("changes", "named"), [
    ({"rank_pattern": {"q_proj(": 8}}, "rank_pattern key 'q_proj('"),
    ({"alpha_pattern": {"[v_proj": 8}}, "alpha_pattern key '[v_proj'"),
    ({"target_modules": "(?P<x>q)(?P<x>v)"}, "target_modules"),
    ({"rank_pattern": {"q" * 600: 8}}, "600 characters"),
    ({"rank_pattern": {f"m{i}": 8 for i in range(600)}}, "rank_pattern has 600 entries"),
    ({"target_modules": ["q_proj", "x" * 600]}, "target_modules entry"),
])
def test_bad_patterns_are_refused_naming_the_field(backend, make_adapter, changes, named) -> None:
    folder = _config(make_adapter(), **changes)
    with pytest.raises(InvalidPattern, match=r"adapter_config\.json: ") as info:
        backend.registry.push(folder, "patterned")
    assert named in str(info.value) and info.value.status == 400
    assert backend.blob_files() == set()


def _evil_adapter(folder: Path, **config: object) -> Path:
    """One module whose name makes ``(a|aa)+$`` backtrack for longer than anyone can wait."""
    import numpy as np
    from safetensors.numpy import save_file

    module = "a" * 60 + "b"
    folder.mkdir(parents=True)
    save_file({f"{module}.lora_A.weight": np.zeros((4, 8), np.float32),
               f"{module}.lora_B.weight": np.zeros((8, 4), np.float32)},
              str(folder / "adapter_model.safetensors"))
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": [module]}
    (folder / "adapter_config.json").write_text(json.dumps({**base, **config}))
    return folder


def test_slow_patterns_stop_at_the_budget(tmp_path: Path) -> None:
    store = LocalRegistry(tmp_path / "store")
    for i, config in enumerate([{"target_modules": "(a|aa)+$"},
                                {"rank_pattern": {"(a|aa)+$": 8}},
                                {"target_modules": "(a+)+$"}]):
        with pytest.raises(InvalidAdapter) as info:
            store.push(_evil_adapter(tmp_path / f"evil{i}", **config), "evil")
        assert info.value.status == 400
        assert ("takes too long" in str(info.value)) == ("|" in json.dumps(config)), info.value
    long_name = write_adapter(tmp_path / "long", modules=("q" * 500,))
    with pytest.raises(InvalidAdapter, match=r"tensor name .* characters"):
        store.push(long_name, "long")
    assert store.list() == []


def test_symlinks_are_refused_not_followed(backend, make_adapter, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the contents of someone else's file")
    linked = make_adapter()
    (linked / "notes.txt").symlink_to(secret)
    with pytest.raises(InvalidAdapter, match=r"notes.txt is a symlink: .*regular files only"):
        backend.registry.push(linked, "linked")
    linked_dir = make_adapter()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "data.txt").write_text("outside")
    (linked_dir / "extras").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(InvalidAdapter, match="extras is a symlink"):
        backend.registry.push(linked_dir, "linked")
    assert backend.blob_files() == set() and backend.store.list() == []


def test_a_fifo_is_refused_without_hanging(backend, make_adapter) -> None:
    folder = make_adapter()
    fifo = folder / "notes.txt"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def push() -> None:
        try:
            backend.registry.push(folder, "fifo")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=push, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # let the blocked open() return, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("push blocked on the FIFO")
    assert isinstance(outcome[0], InvalidAdapter), outcome
    assert "notes.txt is a FIFO" in str(outcome[0])
    assert backend.blob_files() == set()


def test_cli_refuses_a_fifo_in_one_line(make_adapter, tmp_path: Path) -> None:
    folder = make_adapter()
    os.mkfifo(folder / "pipe")
    args = [sys.executable, "-m", "loramux.cli", "registry", "push", str(folder), "-n", "x",
            "--registry", str(tmp_path / "store")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert r.returncode == 5, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "is a FIFO" in r.stderr


def _upload(http: httpx.Client, data: bytes) -> str:
    hex_ = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v2/blobs/sha256:{hex_}", content=data).status_code == 201
    return hex_


@pytest.fixture
def raw_push(http_server, tmp_path: Path, adapters):
    """(post(name, **fields) over HTTP with a valid adapter's blobs, the store behind it)."""
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    http = httpx.Client(base_url=http_server.url, timeout=30,
                        headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    files = [FileEntry(path=p, size=len(data), sha256=_upload(http, data))
             for p in ("adapter_config.json", "adapter_model.safetensors")
             for data in [(adapters["a"] / p).read_bytes()]]

    def post(name: str, extra: list[FileEntry] = (), **fields: object) -> httpx.Response:
        body = {**PushRequest(files=[*files, *extra]).model_dump(mode="json"), **fields}
        return http.post(f"/v2/adapters/{name}/versions", json=body)

    post.upload = lambda data: _upload(http, data)  # type: ignore[attr-defined]
    yield post, store
    http.close()
    store.close()


def test_a_file_list_must_be_a_tree(raw_push, tmp_path: Path) -> None:
    post, store = raw_push
    hex_ = post.upload(b"notes")
    both = [FileEntry(path="extra", size=5, sha256=hex_),
            FileEntry(path="extra/y", size=5, sha256=hex_)]
    r = post("tree", both)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "InvalidName"
    assert "'extra' is also listed as a folder" in r.json()["error"]["message"]
    assert store.list() == []
    assert post("tree", both[1:]).status_code == 201  # x/y alone is fine

    # a version stored before the check: its pull says why, leaving nothing behind
    m = store.resolve("tree@1")
    files = [*m.files, both[0]]
    bad = Manifest(name="old", version=1, digest=adapter_digest(files), size=0, files=files,
                   lora=LoraFacts(r=4, lora_alpha=8, target_modules=["q_proj"]),
                   created_at=utcnow(), created_by="t")
    with pytest.raises(InvalidName, match="also listed as a folder"):
        materialize(bad, store.open_blob, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


BIG_LINEAGE = {"metrics": {f"m{i}": "x" * 100 for i in range(1000)}}
DEEP = {"hyperparameters": {"a": {}}}
node = DEEP["hyperparameters"]["a"]
for _ in range(30):
    node["a"] = {}
    node = node["a"]


@pytest.mark.parametrize(("fields", "named"), [
    ({"lineage": BIG_LINEAGE}, "lineage is"),
    ({"lineage": DEEP}, "lineage is nested"),
    ({"lineage": {"dataset": "d" * 70_000}}, "lineage is"),
    ({"base_components": {f"c{i}": "sha256:x" for i in range(100)}}, "base_components has"),
    ({"base_components": {"config": "v" * 1000}}, "base_components entry 'config'"),
    ({"base_fingerprint": "sha256:" + "0" * 10_000}, "base_fingerprint"),
    ({"created_by": "c" * 10_000}, "created_by"),
    ({"quantization": {"method": "nf4", "compute_dtype": "q" * 1000}}, "compute_dtype"),
    ({"description": "d" * 10_000}, "description"),
    ({"labels": {f"k{i}": "v" for i in range(100)}}, "labels"),
])
def test_every_manifest_field_is_bounded(raw_push, fields, named) -> None:
    post, store = raw_push
    r = post("bounded", **fields)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]
    assert len(r.text) < 1000  # the error names the field, it does not echo the value
    assert store.list() == []


def test_lineage_of_a_real_training_run_fits(raw_push) -> None:
    post, _ = raw_push
    lineage = {"dataset_digest": "sha256:" + "1" * 64, "dataset": "sql.jsonl",
               "hyperparameters": {"lr": 2e-4, "epochs": 3, "target_modules": ["q_proj"] * 7},
               "metrics": {"eval_loss": 0.07, "train_loss": 0.1},
               "library_versions": {"peft": "0.17", "trl": "0.21"},
               "records": {"train": 1000, "eval": 100, "skipped": 0}}
    r = post("real", lineage=lineage, created_by="ci@builder",
             base_fingerprint="sha256:" + "2" * 64,
             base_components={"config": "sha256:" + "3" * 64, "chat_template": "none"})
    assert r.status_code == 201, r.text


"""The registry contract, run against the local store and a real HTTP server alike."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from registry_support import flip_byte, folder_bytes

from loramux.registry import (
    ConfigMismatch,
    Conflict,
    IntegrityError,
    InvalidAdapter,
    InvalidName,
    Limits,
    NotFound,
    NotLora,
    PickleWeights,
    TooLarge,
)
from loramux.registry.digests import adapter_digest

pytestmark = pytest.mark.timeout(180)  # processes and servers: never hang CI


def test_round_trip(backend, adapters, tmp_path: Path) -> None:
    reg = backend.registry
    first = reg.push(adapters["a"], "support", description="first", labels={"team": "cx"})
    assert (first.name, first.version) == ("support", 1)
    assert first.digest == adapter_digest(first.files)
    assert {f.path for f in first.files} == {"adapter_config.json", "adapter_model.safetensors"}
    assert first.lora.r == 4 and first.lora.target_modules == ["q_proj", "v_proj"]
    assert first.base_model_name_or_path == "tiny-llama"

    [row] = reg.list()
    assert (row.name, row.version, row.digest, row.labels) == ("support", 1, first.digest,
                                                                {"team": "cx"})
    assert reg.show("support@1") == first

    out = reg.pull("support@1", tmp_path / "pulled")
    assert folder_bytes(out) == folder_bytes(adapters["a"])

    again = reg.push(adapters["a"], "support", description="first")  # nothing new: a no-op
    assert (again.version, again.digest, again.description) == (1, first.digest, "first")
    # New facts with the same files are never dropped silently: refused, naming them ...
    with pytest.raises(Conflict, match=r"--description, --label given.*--new-version"):
        reg.push(adapters["a"], "support", description="second", labels={"team": "ml"})
    assert [v.version for v in reg.list(name="support")] == [1]
    # ... or recorded as a new version of the same files when asked.
    amended = reg.push(adapters["a"], "support", description="second", new_version=True)
    assert (amended.version, amended.digest, amended.description) == (2, first.digest, "second")
    reg.delete("support@2")
    assert [v.version for v in reg.list(name="support")] == [1]

    second = reg.push(adapters["b"], "support")
    assert second.version == 3 and second.digest != first.digest
    assert [v.version for v in reg.list(name="support")] == [3, 1]
    assert reg.resolve("support").version == 3
    assert folder_bytes(reg.pull("support", tmp_path / "latest")) == folder_bytes(adapters["b"])

    # the same content under another name is stored once and has the same digest
    other = reg.push(adapters["a"], "other-name")
    assert other.version == 1 and other.digest == first.digest
    assert len(backend.blob_files()) == 3  # a and b share their config: stored once
    assert reg.list(labels={"team": "cx"})[0].name == "support"
    assert reg.list(labels={"team": "nope"}) == []


def test_refs_and_aliases(backend, adapters) -> None:
    reg = backend.registry
    v1 = reg.push(adapters["a"], "chat", alias="prod")
    v2 = reg.push(adapters["b"], "chat", alias="staging")
    assert reg.resolve("chat:prod").version == 1
    assert reg.resolve("chat:staging").version == 2
    assert reg.resolve("chat:latest").version == 2
    assert reg.resolve(f"chat@{v1.digest[:19]}").version == 1
    assert reg.resolve(f"chat@{v2.digest}").version == 2

    pointer = reg.alias_set("chat", "prod", 2)
    assert (pointer.version, pointer.digest) == (2, v2.digest)
    assert reg.resolve("chat:prod").digest == v2.digest
    assert {v.version: v.aliases for v in reg.list(name="chat")} == {2: ["prod", "staging"], 1: []}

    reg.alias_rm("chat", "staging")
    with pytest.raises(NotFound, match="no alias 'staging'"):
        reg.resolve("chat:staging")
    with pytest.raises(NotFound):
        reg.alias_rm("chat", "staging")
    with pytest.raises(NotFound):
        reg.alias_set("chat", "prod", 9)
    with pytest.raises(InvalidName, match="implicit"):
        reg.alias_set("chat", "latest", 1)
    with pytest.raises(NotFound, match="no adapter named"):
        reg.resolve("nothing-here")
    with pytest.raises(NotFound, match="latest is chat@2"):
        reg.resolve("chat@3")
    with pytest.raises(NotFound):
        reg.resolve("chat@sha256:" + "0" * 12)
    for bad in ("chat@", "chat@0", "chat@x", "Chat", "chat:", "chat@sha256:abc"):
        with pytest.raises(InvalidName):
            reg.resolve(bad)


def test_delete_yanks_and_never_reuses_numbers(backend, adapters, make_adapter) -> None:
    reg = backend.registry
    reg.push(adapters["a"], "yank", alias="prod")
    reg.push(adapters["b"], "yank")
    with pytest.raises(Conflict, match="prod"):
        reg.delete("yank@1")
    with pytest.raises(InvalidName, match="exact version"):
        reg.delete("yank")
    with pytest.raises(InvalidName):
        reg.delete("yank:prod")
    info = reg.delete("yank@1", force=True)
    assert (info.version, info.deleted) == (1, True)
    with pytest.raises(NotFound, match="deleted"):
        reg.resolve("yank@1")
    with pytest.raises(NotFound, match="no alias 'prod'"):
        reg.resolve("yank:prod")
    assert [v.version for v in reg.list(name="yank")] == [2]
    assert [(v.version, v.deleted) for v in reg.list(name="yank", include_deleted=True)] == [
        (2, False), (1, True)]
    reg.delete("yank@2")
    with pytest.raises(NotFound):
        reg.resolve("yank")
    again = reg.push(adapters["a"], "yank")
    assert again.version == 3  # numbers of deleted versions are never handed out again

    # gc removes what only deleted versions used, and keeps the rest
    reg.push(make_adapter(seed=99), "yank")
    reg.delete("yank@4")
    report = reg.gc()
    assert report.removed_blobs == 2 and report.kept_blobs == 2
    assert reg.verify().ok


def test_audit_log_answers_where_alias_pointed(backend, adapters) -> None:
    reg = backend.registry
    reg.push(adapters["a"], "audited", alias="prod")
    time.sleep(0.02)
    v2 = reg.push(adapters["b"], "audited")
    time.sleep(0.02)
    reg.alias_set("audited", "prod", 2)
    time.sleep(0.02)
    reg.alias_rm("audited", "prod")

    entries = reg.log(name="audited")
    assert [e.action for e in entries] == ["alias_rm", "alias_set", "push", "alias_set", "push"]
    actor = "tester" if backend.kind == "local" else "admin (tester)"  # token name + claimed
    assert {e.actor for e in entries} == {actor}
    move = entries[1]
    assert (move.old_version, move.version, move.digest) == (1, 2, v2.digest)
    assert move.old_digest == reg.resolve("audited@1").digest

    first_set, moved, removed = entries[3].at, entries[1].at, entries[0].at
    assert reg.alias_at("audited", "prod", first_set - timedelta(seconds=1)) is None
    assert reg.alias_at("audited", "prod", first_set + (moved - first_set) / 2).version == 1
    assert reg.alias_at("audited", "prod", moved).version == 2
    assert reg.alias_at("audited", "prod", removed) is None
    # a naive datetime is the caller's local time
    local_naive = (moved + (removed - moved) / 2).astimezone().replace(tzinfo=None)
    assert reg.alias_at("audited", "prod", local_naive).version == 2

    assert len(reg.log(name="audited", limit=2)) == 2
    assert reg.log(name="audited", since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert [e.action for e in reg.log(name="audited", alias="prod")][-1] == "alias_set"


def test_flipped_byte_is_caught_by_pull_and_verify(backend, adapters, tmp_path: Path) -> None:
    reg = backend.registry
    manifest = reg.push(adapters["a"], "rot")
    weights = manifest.file("adapter_model.safetensors")
    flip_byte(backend.blob_data(weights.sha256))

    dest = tmp_path / "out" / "rot"
    with pytest.raises(IntegrityError, match=weights.sha256):
        reg.pull("rot@1", dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial folder either

    report = reg.verify()
    assert not report.ok
    [problem] = report.problems
    assert (problem.digest, problem.problem, problem.used_by) == (weights.digest, "corrupt",
                                                                  ["rot@1"])
    # verify quarantined the blob: now it is missing rather than silently wrong
    with pytest.raises(NotFound, match=weights.sha256):
        reg.pull("rot@1", dest)
    assert not dest.exists()
    assert [p.problem for p in reg.verify().problems] == ["missing"]

    if backend.oci is not None:
        # CNCF distribution keeps a deleted blob's rotten data until its own garbage collection
        # and does not replace it on upload: the push says so instead of linking it again
        with pytest.raises(IntegrityError, match="garbage-collect"):
            reg.push(adapters["a"], "rot")
        assert [p.problem for p in reg.verify().problems] == ["missing"]
        return
    # pushing the intact folder again stores the bytes again (over HTTP too)
    reg.push(adapters["a"], "rot")
    assert reg.verify().ok
    assert folder_bytes(reg.pull("rot", dest)) == folder_bytes(adapters["a"])


BAD_NAMES = ["../evil", "a/../b", "a/b", "has space", "x" * 65, "Upper", "-dash", "a..b", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(backend, adapters, name: str) -> None:
    with pytest.raises(InvalidName):
        backend.registry.push(adapters["a"], name)
    assert backend.blob_files() == set()
    assert backend.store.list() == []


def _pickle_adapter(folder: Path) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, '
                                                '"target_modules": ["q_proj"]}')
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04\x95pickle")
    return folder


INVALID = {
    "pickle": (PickleWeights, "safe_serialization=True"),
    "not-lora": (NotLora, "PREFIX_TUNING"),
    "rank-mismatch": (ConfigMismatch, "r=8"),
    "missing-b": (ConfigMismatch, "lora_B is missing"),
    "untargeted-module": (ConfigMismatch, "not in target_modules"),
    "no-config": (InvalidAdapter, "adapter_config.json"),
    "not-safetensors": (InvalidAdapter, "not a valid safetensors"),
    "too-large": (TooLarge, "limit"),
    "too-many-files": (TooLarge, "files"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_adapters_are_refused(backend, make_adapter, tmp_path: Path, case: str) -> None:
    registry = backend.registry
    if case == "pickle":
        folder = _pickle_adapter(tmp_path / "pickled")
    elif case == "not-lora":
        folder = make_adapter(peft_type="PREFIX_TUNING")
    elif case == "rank-mismatch":
        folder = make_adapter(r=4, config_r=8)
    elif case == "missing-b":
        folder = make_adapter(drop=("base_model.model.model.layers.1.self_attn.v_proj"
                                    ".lora_B.weight",))
    elif case == "untargeted-module":
        folder = make_adapter(target_modules=["q_proj"])
    elif case == "no-config":
        folder = make_adapter()
        (folder / "adapter_config.json").unlink()
    elif case == "not-safetensors":
        folder = make_adapter()
        (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    elif case == "too-large":
        folder = make_adapter(hidden=512)  # ~66 kB
        registry = backend.with_limits(Limits(max_total_bytes=20_000))
    else:
        folder = make_adapter()
        (folder / "README.md").write_text("hello")
        registry = backend.with_limits(Limits(max_files=2))
    error, message = INVALID[case]
    with pytest.raises(error, match=message):
        registry.push(folder, "refused")
    assert backend.blob_files() == set()
    assert backend.temp_files() == []
    assert backend.store.list() == []
    assert backend.store.log() == []


def test_concurrent_pushes_get_consecutive_versions(backend, make_adapter) -> None:
    folders = [str(make_adapter(seed=100 + i)) for i in range(8)]
    location = str(backend.root) if backend.kind == "local" else backend.server.url
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(folders))  # all eight push at once, however slow their start-up
    from registry_support import push_worker

    procs = [ctx.Process(target=push_worker, args=(location, f, "contended", start))
             for f in folders]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
        assert p.exitcode == 0
    versions = backend.registry.list(name="contended")
    assert sorted(v.version for v in versions) == list(range(1, 9))
    expected = {backend.store.resolve(f"contended@{v.version}").digest for v in versions}
    assert len(expected) == 8
    pushed = {adapter_digest(_entries(Path(f))) for f in folders}
    assert expected == pushed
    assert backend.registry.verify().ok
    assert len([e for e in backend.registry.log(name="contended") if e.action == "push"]) == 8


def _entries(folder: Path):
    from loramux.registry.digests import sha256_file
    from loramux.registry.manifest import FileEntry

    return [FileEntry(path=p.name, size=p.stat().st_size, sha256=sha256_file(p)[0])
            for p in folder.iterdir()]

"""Every version is also an OCI artifact (docs/oci-artifact.md), on a real CNCF distribution.

A generic OCI client (oras-py) that knows nothing of loramux pulls a version and PEFT loads it;
``loramux registry pull`` reads straight from the OCI registry with no loramux server at all;
foreign and garbled artifacts are refused with one clear line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import oci_registry as oci_support  # tests/support, on sys.path through conftest
import pytest
from oci_registry import fresh_repository
from registry_support import flip_byte, folder_bytes, write_adapter
from typer.testing import CliRunner

from loramux.registry import open as open_registry
from loramux.registry.cli import app
from loramux.registry.errors import BlobStoreUnavailable, IntegrityError, InvalidAdapter, NotFound
from loramux.registry.oci import artifact as oa
from loramux.registry.oci.client import OciClient
from loramux.registry.store import LocalRegistry

pytestmark = pytest.mark.timeout(180)
oci_registry = oci_support.oci_registry  # the session's registry fixture
runner = CliRunner()
BASE_FP = "sha256:" + "ab" * 32
LLAMA = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 64}


@pytest.fixture
def oci_store(oci_registry, tmp_path: Path):
    """A registry whose blobs (and so artifacts) live in a fresh OCI repository."""
    location = oci_registry.location(fresh_repository("loramux/art"))
    with LocalRegistry(tmp_path / "store", blobs=location, actor="tester") as store:
        yield location, store


def _raw(location: str, path: str) -> httpx.Response:
    """A plain HTTP GET on the distribution API, as any client would do it."""
    host, _, repository = location.removeprefix("oci://").partition("/")
    return httpx.get(f"http://{host}/v2/{repository}/{path}",
                     headers={"Accept": oa.MANIFEST_MEDIA_TYPE})


def test_any_oci_client_pulls_a_version_and_peft_loads_it(oci_store, tmp_path: Path) -> None:
    import oras.provider
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    location, store = oci_store
    source = write_adapter(tmp_path / "src", seed=5, hidden=32)
    (source / "README.md").write_text("# sql helper\n")
    pushed = store.push(source, "sql.helper", base_fingerprint=BASE_FP,
                        quantization="nf4+dq+bf16", description="turns questions into SQL")

    # the tag names the version; its manifest digest is what the index recorded
    response = _raw(location, "manifests/sql.helper..1")
    assert response.status_code == 200, response.text
    body = response.content
    assert store.index.oci_digest("sql.helper", 1) == "sha256:" + hashlib.sha256(body).hexdigest()

    host, _, repository = location.removeprefix("oci://").partition("/")
    oras = oras.provider.Registry(hostname=host, insecure=True)
    target = f"{host}/{repository}:sql.helper..1"
    manifest = oras.get_manifest(target)
    assert manifest["artifactType"] == "application/vnd.loramux.adapter.v1"
    assert manifest["config"]["mediaType"] == "application/vnd.loramux.adapter.manifest.v1+json"
    notes = manifest["annotations"]
    assert notes["io.loramux.base.fingerprint"] == BASE_FP
    assert notes["io.loramux.lora.rank"] == "4"
    assert json.loads(notes["io.loramux.lora.target-modules"]) == ["q_proj", "v_proj"]
    assert notes["io.loramux.quantization"] == "nf4+dq+bfloat16"
    assert notes["io.loramux.adapter.digest"] == pushed.digest
    assert (notes["io.loramux.adapter.name"], notes["io.loramux.adapter.version"]) == (
        "sql.helper", "1")
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer
              for layer in manifest["layers"]}
    assert set(titles) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert titles["adapter_model.safetensors"]["mediaType"] == oa.WEIGHTS_MEDIA_TYPE
    assert titles["adapter_config.json"]["mediaType"] == "application/json"

    pulled = tmp_path / "pulled"
    oras.pull(target=target, outdir=str(pulled))
    assert folder_bytes(pulled) == folder_bytes(source)

    torch.manual_seed(0)
    model = PeftModel.from_pretrained(LlamaForCausalLM(LlamaConfig(**LLAMA)), str(pulled))
    loaded = model.state_dict()
    written = load_file(source / "adapter_model.safetensors")
    for key, tensor in written.items():
        module, kind = key.rsplit(".lora_", 1)
        assert torch.equal(loaded[f"{module}.lora_{kind.replace('.weight', '.default.weight')}"],
                           tensor)


def test_a_version_commits_only_with_its_artifact(oci_store, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest PUT happens inside the index transaction: if it fails, no version."""
    location, store = oci_store
    source = write_adapter(tmp_path / "src", seed=6)

    def refuse(*args: object, **kwargs: object) -> str:
        raise BlobStoreUnavailable("OCI registry down (test)")

    with monkeypatch.context() as patch:
        patch.setattr(OciClient, "put_manifest", refuse)
        with pytest.raises(BlobStoreUnavailable):
            store.push(source, "atomic")
    with pytest.raises(NotFound):
        store.resolve("atomic")
    assert store.push(source, "atomic").version == 1
    assert store.index.oci_digest("atomic", 1) is not None
    assert _raw(location, "manifests/atomic..1").status_code == 200


def _cli(location: str, *args: str):
    return runner.invoke(app, ["--registry", location, *args], env={"LORAMUX_TOKEN": ""})


def test_registry_pull_reads_straight_from_oci(oci_store, tmp_path: Path) -> None:
    """No loramux registry server anywhere: ``--registry oci://…`` reads the artifacts."""
    location, store = oci_store
    one = write_adapter(tmp_path / "one", seed=7)
    two = write_adapter(tmp_path / "two", seed=8)
    first, second = store.push(one, "helper"), store.push(two, "helper")

    r = _cli(location, "pull", "helper@1", "--to", str(tmp_path / "v1"), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["digest"] == first.digest
    assert folder_bytes(tmp_path / "v1") == folder_bytes(one)
    r = _cli(location, "pull", "helper", "--to", str(tmp_path / "latest"))
    assert r.exit_code == 0, r.output
    assert folder_bytes(tmp_path / "latest") == folder_bytes(two)
    r = _cli(location, "pull", f"helper@{first.digest[:19]}", "--to", str(tmp_path / "d"))
    assert r.exit_code == 0 and folder_bytes(tmp_path / "d") == folder_bytes(one), r.output
    with open_registry(location) as mirror:
        assert mirror.resolve("helper") == second
        assert [v.version for v in mirror.list(name="helper")] == [2, 1]

    r = _cli(location, "push", str(one), "--name", "helper")
    assert r.exit_code == 5 and "read-only OCI mirror" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli(location, "pull", "helper:prod", "--to", str(tmp_path / "alias"))
    assert r.exit_code == 3 and "aliases live in the loramux index" in r.stderr, r.output
    r = _cli(location, "pull", "nobody@1", "--to", str(tmp_path / "none"))
    assert r.exit_code == 3, r.output


def test_gc_drops_a_deleted_versions_artifact_before_its_blobs(oci_store,
                                                              tmp_path: Path) -> None:
    """A deleted version's tag must not outlive the blobs gc removes: a mirror pull would then
    find an artifact pointing at nothing."""
    location, store = oci_store
    store.push(write_adapter(tmp_path / "one", seed=11), "gone")
    kept = store.push(write_adapter(tmp_path / "two", seed=12), "gone")
    store.delete("gone@1")
    assert store.index.oci_digest("gone", 1) is not None  # a yanked version: kept until gc
    report = store.gc()
    assert report.removed_artifacts == 1 and report.removed_blobs >= 1
    assert store.index.oci_digest("gone", 1) is None
    assert _raw(location, f"manifests/{oa.version_tag('gone', 1)}").status_code == 404
    with open_registry(location) as mirror:
        assert [v.version for v in mirror.list(name="gone")] == [2]
        assert mirror.resolve("gone") == kept
    assert store.gc().removed_artifacts == 0


def test_a_flipped_byte_in_the_oci_store_fails_the_pull(oci_registry, oci_store,
                                                        tmp_path: Path) -> None:
    location, store = oci_store
    pushed = store.push(write_adapter(tmp_path / "src", seed=9), "rot")
    weights = pushed.file("adapter_model.safetensors")
    flip_byte(oci_registry.blob_data(weights.sha256))
    r = _cli(location, "pull", "rot@1", "--to", str(tmp_path / "out"))
    assert r.exit_code == 6 and "corrupt" in r.stderr, r.output
    assert not (tmp_path / "out").exists()


def _put_artifact(client: OciClient, tag: str, config: bytes, document: dict) -> None:
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.push_blob(config, digest, len(config))
    document["config"].update(digest=digest, size=len(config))
    client.put_manifest(tag, json.dumps(document).encode())


def test_foreign_and_garbled_artifacts_are_refused(oci_store, tmp_path: Path) -> None:
    location, store = oci_store
    good = store.push(write_adapter(tmp_path / "src", seed=10), "good")
    client: OciClient = store.blobs.client  # type: ignore[attr-defined]
    built = json.loads(oa.build(good).body)

    foreign = {**built, "artifactType": "application/vnd.example.sbom.v1",
               "config": {"mediaType": "application/vnd.oci.empty.v1+json"}}
    _put_artifact(client, "other..1", b"{}", foreign)
    with open_registry(location) as mirror:
        with pytest.raises(InvalidAdapter, match=r"not a loramux adapter.*vnd\.example\.sbom"):
            mirror.resolve("other@1")

        _put_artifact(client, "garbled..1", b"not json", dict(built, config=dict(built["config"])))
        with pytest.raises(IntegrityError, match="config is not a loramux manifest"):
            mirror.resolve("garbled@1")

        swapped = json.loads(oa.build(good).body)
        swapped["layers"][0]["annotations"]["org.opencontainers.image.title"] = "../evil.json"
        _put_artifact(client, "good..2", oa.config_bytes(good.model_copy(update={"version": 2})),
                      swapped)
        with pytest.raises(IntegrityError, match="layers do not match"):
            mirror.resolve("good@2")

    r = _cli(location, "pull", "other@1", "--to", str(tmp_path / "x"))
    assert r.exit_code == 5 and "not a loramux adapter" in r.stderr, r.output
    assert not (tmp_path / "x").exists()


def test_tags_are_unambiguous_between_names() -> None:
    tags = ["a..1", "a..2", "a.b..3", "a..b..1", "a..prod", "a..01", "x", "a..3.v1"]
    assert oa.versions_in(tags, "a") == [1, 2]
    assert oa.versions_in(tags, "a.b") == [3]
    assert oa.names_in(tags) == ["a", "a.b"]
    assert oa.version_tag("sql-helper", 7) == "sql-helper..7"


def test_parse_refuses_what_is_not_an_image_manifest() -> None:
    with pytest.raises(InvalidAdapter, match="not JSON"):
        oa.parse_manifest(b"\xff", "here")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": []}
    with pytest.raises(InvalidAdapter, match=r"image\.index"):
        oa.parse_manifest(json.dumps(index).encode(), "here")
    with pytest.raises(InvalidAdapter, match="not a valid OCI image manifest: config"):
        oa.parse_manifest(json.dumps({"schemaVersion": 2, "layers": []}).encode(), "here")

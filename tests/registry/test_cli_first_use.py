"""What a new user meets first: naming the registry, typos, pushing without --base, 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_support import READ_TOKEN, WRITE_TOKEN, make_base, write_adapter
from typer.testing import CliRunner

from loramux.registry import LocalRegistry, RemoteRegistry
from loramux.registry.cli import app
from loramux.registry.fingerprint import base_fingerprint

pytestmark = pytest.mark.timeout(180)
runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={"LORAMUX_TOKEN": WRITE_TOKEN, **(env or {})})


def test_registry_option_after_every_verb(tmp_path: Path, adapters) -> None:
    """`--registry` after the verb wins over LORAMUX_REGISTRY; before the verb it still works."""
    store = str(tmp_path / "store")
    env = {"LORAMUX_REGISTRY": str(tmp_path / "elsewhere")}
    verbs = [
        ["push", str(adapters["a"]), "--name", "x"],
        ["push", str(adapters["b"]), "--name", "x", "--alias", "prod"],
        ["list", "--json"],
        ["show", "x:prod"],
        ["pull", "x@1", "--to", str(tmp_path / "pulled")],
        ["alias", "set", "x", "prod", "1"],
        ["log", "--name", "x"],
        ["alias", "rm", "x", "prod"],
        ["delete", "x@2"],
        ["gc"],
        ["verify"],
    ]
    for args in verbs:
        r = run(*args, "--registry", store, env=env)
        assert r.exit_code == 0, (args, r.output)
    assert not (tmp_path / "elsewhere").exists()
    with LocalRegistry(store) as reg:
        assert [(v.version, v.deleted) for v in reg.list(include_deleted=True)] == [
            (2, True), (1, False)]
        assert [e.action for e in reg.log(name="x")][:3] == ["delete", "alias_rm", "alias_set"]
    r = run("--registry", store, "list", "--json")  # the group-level form
    assert [v["version"] for v in json.loads(r.stdout)] == [1]
    r = run("list", "--json", "--registry", store, env={"LORAMUX_REGISTRY": str(tmp_path / "no")})
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 1


def test_token_after_the_verb(http_server, tmp_path: Path, adapters) -> None:
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    r = run("push", str(adapters["a"]), "-n", "tok", "--registry", http_server.url,
            "--token", READ_TOKEN)
    assert r.exit_code == 8 and "may not push" in r.stderr
    r = run("push", str(adapters["a"]), "-n", "tok", "--registry", http_server.url,
            "--token", WRITE_TOKEN, env={"LORAMUX_TOKEN": READ_TOKEN})
    assert r.exit_code == 0, r.output
    store.close()


def test_as_a_new_user_types_it(tmp_path: Path, adapters) -> None:
    """The installed entry point, verb first and --registry last, as the README shows."""
    store = tmp_path / "reg"
    r = subprocess.run(
        [sys.executable, "-m", "loramux.cli", "registry", "push", str(adapters["a"]),
         "--name", "first", "--registry", str(store)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LORAMUX_REGISTRY": str(tmp_path / "not-this-one")},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("first@1  sha256:")
    assert LocalRegistry(store).resolve("first").version == 1


@pytest.mark.parametrize("args", [
    ["list"], ["show", "x"], ["pull", "x", "--to", "OUT"], ["log"], ["verify"], ["gc"],
    ["alias", "set", "x", "prod", "1"], ["alias", "rm", "x", "prod"], ["delete", "x@1"],
])
def test_a_missing_registry_is_not_created(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "nonexistent" / "reg"
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    r = run(*args, "--registry", str(missing))
    assert r.exit_code == 3, r.output
    assert r.stderr == f"error: no registry at {missing}\n"
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "out").exists()


def test_default_registry_is_not_created_by_reading(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = run("list", env={"HOME": str(home), "LORAMUX_REGISTRY": ""})
    assert r.exit_code == 3 and r.stderr.startswith("error: no registry at ")
    assert not home.exists()


@pytest.mark.parametrize("location", ["htp://x", "file:///tmp/reg", "s3://bucket/reg"])
def test_unknown_url_schemes_are_refused(tmp_path: Path, location: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["list"], ["push", str(tmp_path), "--name", "x"]):
        r = run(*args, "--registry", location)
        assert r.exit_code == 5, r.output
        assert r.stderr.count("\n") == 1 and "unknown registry URL scheme" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_push_without_base_uses_the_recorded_base(kind: str, tmp_path: Path, http_server,
                                                   caplog) -> None:
    """The base adapter_config.json names is fingerprinted when it is a folder here."""
    base = make_base(tmp_path / "base")
    found = write_adapter(tmp_path / "found", base=str(base))
    lost = write_adapter(tmp_path / "lost", seed=1, base="org/some-hub-model")
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    registry = store if kind == "local" else RemoteRegistry(http_server.url, token=WRITE_TOKEN)
    with caplog.at_level("WARNING", logger="loramux.registry"):
        manifest = registry.push(found, "found")
    assert manifest.base_fingerprint == base_fingerprint(base)
    assert manifest.base_components is not None
    assert caplog.records == []
    with caplog.at_level("WARNING", logger="loramux.registry"):
        manifest = registry.push(lost, "lost")
    assert manifest.base_fingerprint is None
    [record] = caplog.records
    assert "lost@1 has no base fingerprint" in record.getMessage()
    assert "'org/some-hub-model' is not a local folder" in record.getMessage()
    registry.close()
    store.close()


def test_cli_warns_in_one_line_when_no_base_is_known(tmp_path: Path, adapters) -> None:
    r = run("push", str(adapters["a"]), "--name", "nobase", "--registry", str(tmp_path / "s"))
    assert r.exit_code == 0 and r.stdout.startswith("nobase@1  sha256:")
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("warning: nobase@1 has no base fingerprint")
    assert "--base" in r.stderr
    r = run("show", "nobase", "--registry", str(tmp_path / "s"))
    assert "none (push with --base" in r.stdout


LINEAGE = {
    "dataset": "sql-train.jsonl", "dataset_digest": "sha256:" + "d" * 64,
    "hyperparameters": {"epochs": 3.0, "learning_rate": 0.0002, "batch_size": 8, "r": 16,
                        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]},
    "metrics": {"train_loss": 0.41234, "eval_loss": 0.5, "steps": 120, "tokens_seen": 123456},
    "library_versions": {"torch": "2.11.0", "transformers": "4.56.0", "peft": "0.17.0"},
}


def test_list_and_show_fit_80_columns(tmp_path: Path) -> None:
    store = tmp_path / "s"
    base = make_base(tmp_path / "a-rather-long-folder-name-for-the-base-model" / "base")
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps(LINEAGE))
    long = "Answers questions about the orders database in SQL, " * 4
    folder = write_adapter(tmp_path / "a", base=str(base))
    r = run("push", str(folder), "--name", "sql-helper", "--alias", "production", "--description",
            long, "--label", "team=data-platform", "--label", "task=text-to-sql", "--lineage",
            str(lineage), "--quantization", "nf4+dq+bf16", "--registry", str(store))
    assert r.exit_code == 0, r.output
    digest = json.loads(run("show", "sql-helper", "--json", "--registry", str(store)).stdout)[
        "digest"]
    hex12 = digest.removeprefix("sha256:")[:12]
    env = {"COLUMNS": "80"}

    r = run("list", "--registry", str(store), env=env)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) <= 80, r.stdout
    assert len(lines) == 2  # the header and one row: nothing wrapped
    assert lines[1].split()[:4] == ["sql-helper", "1", "production", hex12]
    assert "Answers question" in lines[1] and lines[1].endswith("…")

    r = run("show", "sql-helper:production", "--registry", str(store), env=env)
    assert r.exit_code == 0, r.output
    assert max(map(len, r.stdout.splitlines())) <= 80, r.stdout
    facts = {line.split(maxsplit=1)[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert f"sha256:{hex12}" in facts["digest"] and digest not in r.stdout
    assert "sql-train.jsonl (sha256:dddddddddddd)" in facts["data"]
    assert "epochs=3 learning_rate=0.0002 batch_size=8" in facts["training"]
    assert "train_loss=0.4123 eval_loss=0.5 steps=120" in facts["metrics"]
    assert "--json" in facts["lineage"] and "torch" not in r.stdout
    shown = json.loads(run("show", "sql-helper", "--json", "--registry", str(store)).stdout)
    assert shown["lineage"]["library_versions"]["torch"] == "2.11.0"  # all of it, in --json

    r = run("log", "--registry", str(store), env=env)
    assert max(map(len, r.stdout.splitlines())) <= 80, r.stdout


def test_serve_help_documents_the_tokens_file() -> None:
    r = run("serve", "--help", env={"COLUMNS": "200"})
    assert "SECRET:read|write|admin[:NAME]" in r.stdout and "LORAMUX_REGISTRY_TOKENS" in r.stdout
    r = run("verify", "--help", env={"COLUMNS": "200"})
    assert "quarantine" in r.stdout and "admin token" in r.stdout


def test_labels_are_parsed_in_one_place(tmp_path: Path, http_server) -> None:
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    for location in (str(store.root), http_server.url):
        r = run("list", "--label", "team", "--registry", location)
        assert r.exit_code == 5 and r.stderr == "error: invalid label 'team': expected key=value\n"
    import httpx

    response = httpx.get(f"{http_server.url}/v2/adapters", params={"label": "=x"},
                         headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert response.status_code == 400 and "expected key=value" in response.text
    store.close()

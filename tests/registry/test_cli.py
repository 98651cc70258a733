"""``loramux registry …`` against a folder and a server, in-process and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from registry_support import ADMIN_TOKEN, WRITE_TOKEN, flip_byte, folder_bytes
from typer.testing import CliRunner

from loramux.registry.cli import app
from loramux.registry.store import LocalRegistry

pytestmark = pytest.mark.timeout(180)  # processes and servers: never hang CI

runner = CliRunner()


@pytest.fixture(params=["local", "remote"])
def target(request: pytest.FixtureRequest, tmp_path: Path):
    """(value for --registry, the store behind it)."""
    store = LocalRegistry(tmp_path / "store")
    if request.param == "local":
        yield str(store.root), store
    else:
        server = request.getfixturevalue("http_server")
        server.use(store)
        yield server.url, store
    store.close()


def cli(location: str, *args: str, token: str | None = WRITE_TOKEN):
    env = {"LORAMUX_TOKEN": token} if token else {"LORAMUX_TOKEN": ""}
    return runner.invoke(app, ["--registry", location, *args], env=env)


def test_cli_workflow(target, adapters, tmp_path: Path) -> None:
    location, _ = target
    r = cli(location, "push", str(adapters["a"]), "--name", "cli-demo", "--alias", "prod",
            "--label", "team=cx", "--description", "first", "--quantization", "nf4+dq+bf16",
            "--json")
    assert r.exit_code == 0, r.output
    pushed = json.loads(r.stdout)
    assert (pushed["name"], pushed["version"]) == ("cli-demo", 1)
    assert pushed["quantization"] == {"method": "nf4", "double_quant": True,
                                      "compute_dtype": "bfloat16"}
    assert cli(location, "push", str(adapters["b"]), "-n", "cli-demo").exit_code == 0

    r = cli(location, "list", "--json")
    assert [(v["version"], v["aliases"]) for v in json.loads(r.stdout)] == [(2, []),
                                                                             (1, ["prod"])]
    r = cli(location, "list", "--label", "team=cx")
    assert r.exit_code == 0 and "cli-demo" in r.stdout and "prod" in r.stdout

    r = cli(location, "show", "cli-demo:prod", "--json")
    shown = json.loads(r.stdout)
    assert (shown["name"], shown["version"], shown["digest"]) == ("cli-demo", 1,
                                                                 pushed["digest"])
    r = cli(location, "show", "cli-demo")
    assert r.exit_code == 0 and "cli-demo@2" in r.stdout and "adapter_model.safetensors" in r.stdout

    dest = tmp_path / "pulled"
    r = cli(location, "pull", "cli-demo:prod", "--to", str(dest))
    assert r.exit_code == 0, r.output
    assert folder_bytes(dest) == folder_bytes(adapters["a"])

    assert cli(location, "alias", "set", "cli-demo", "prod", "2").exit_code == 0
    assert json.loads(cli(location, "show", "cli-demo:prod", "--json").stdout)["version"] == 2
    r = cli(location, "log", "--name", "cli-demo", "--json")
    moves = [e for e in json.loads(r.stdout) if e["action"] == "alias_set"]
    assert [(e["old_version"], e["version"]) for e in moves] == [(1, 2), (None, 1)]
    r = cli(location, "log", "--name", "cli-demo", "--alias", "prod", "--at", "now", "--json")
    assert json.loads(r.stdout)["version"] == 2
    assert "alias_set" in cli(location, "log").stdout

    r = cli(location, "delete", "cli-demo@2")
    assert r.exit_code == 4 and r.stderr.startswith("error: ") and "prod" in r.stderr
    assert cli(location, "alias", "rm", "cli-demo", "prod").exit_code == 0
    assert cli(location, "delete", "cli-demo@2").exit_code == 0
    r = cli(location, "gc", "--json", token=ADMIN_TOKEN)
    assert json.loads(r.stdout)["removed_blobs"] == 1
    r = cli(location, "verify", token=ADMIN_TOKEN)
    assert r.exit_code == 0, r.output


def test_cli_errors_are_one_line_and_nonzero(target, make_adapter, tmp_path: Path) -> None:
    location, _ = target
    cases = [
        (["show", "nope"], 3, "no adapter named 'nope'"),
        (["show", "Bad Name"], 5, "invalid adapter name"),
        (["push", str(make_adapter(r=4, config_r=8)), "--name", "x"], 5, "r=8"),
        (["push", str(tmp_path / "absent"), "--name", "x"], 5, "is not a folder"),
    ]
    for args, code, message in cases:
        r = cli(location, *args)
        assert r.exit_code == code, (args, r.output)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
        assert message in r.stderr
        assert "Traceback" not in r.output
    # bad usage is click's job: exit 2
    assert cli(location, "log", "--since", "last tuesday").exit_code == 2


def test_cli_verify_reports_corruption(target, adapters) -> None:
    location, store = target
    manifest = store.push(adapters["a"], "rotting")
    flip_byte(store.blobs.path(manifest.file("adapter_model.safetensors").sha256))
    r = cli(location, "verify", token=ADMIN_TOKEN)
    assert r.exit_code == 6
    assert "CORRUPT" in r.stdout and "rotting@1" in r.stdout
    assert r.stderr.startswith("error: 1 blob(s) corrupt")


def test_cli_remote_needs_a_write_token(http_server, adapters, tmp_path: Path) -> None:
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    r = cli(http_server.url, "push", str(adapters["a"]), "--name", "x", token=None)
    assert r.exit_code == 8 and "LORAMUX_TOKEN" in r.stderr
    assert store.list() == []
    store.close()


def test_error_mapping_survives_mounting(tmp_path: Path) -> None:
    """The root CLI mounts this app as `loramux registry`; errors must still be one line."""
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        pass

    root.add_typer(app, name="registry")
    LocalRegistry(tmp_path / "s").close()
    r = runner.invoke(root, ["registry", "--registry", str(tmp_path / "s"), "show", "ghost"])
    assert r.exit_code == 3
    assert r.stderr == "error: no adapter named 'ghost'\n"


def test_cli_as_a_real_process_against_a_server(http_server, adapters, tmp_path: Path) -> None:
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    env = {**os.environ, "LORAMUX_TOKEN": WRITE_TOKEN}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loramux.registry.cli", "--registry", http_server.url, *args],
            capture_output=True, text=True, env=env, timeout=120,
        )

    r = run("push", str(adapters["c8"]), "--name", "proc", "--alias", "prod")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("proc@1  sha256:")
    r = run("show", "proc:prod", "--json")
    shown = json.loads(r.stdout)
    assert (shown["name"], shown["version"], shown["lora"]["r"]) == ("proc", 1, 8)
    r = run("pull", "proc@1", "--to", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert folder_bytes(tmp_path / "out") == folder_bytes(adapters["c8"])
    r = run("show", "proc@9")
    assert r.returncode == 3 and r.stderr.strip() == "error: proc@9 does not exist (latest is " \
                                                     "proc@1)"
    store.close()


def test_serve_command(tmp_path: Path, adapters) -> None:
    """`serve` as a real process: tokens from the environment, limits from --max-bytes."""
    from loramux.registry import RemoteRegistry, TooLarge
    from loramux.support.launch import RegistryProcess

    r = runner.invoke(app, ["serve", "--root", str(tmp_path / "x")],
                      env={"LORAMUX_REGISTRY_TOKENS": ""})
    assert r.exit_code == 1 and "no tokens configured" in r.stderr

    env = {"LORAMUX_REGISTRY_TOKENS": "sekrit-write-token:write:ci,peek-read-token:read"}
    server = RegistryProcess(tmp_path / "srv", tmp_path / "srv.log", env=env,
                             args=["--max-bytes", "4000", "--log-level", "warning"])
    try:
        url = server.start()
        with RemoteRegistry(url, token="sekrit-write-token") as client:
            with pytest.raises(TooLarge, match="4000"):
                client.push(adapters["a"], "served")
            assert client.whoami()["name"] == "ci"
        with RemoteRegistry(url, token="peek-read-token") as reader:
            assert reader.list() == []
    finally:
        server.stop()


def test_a_repush_never_drops_new_facts_silently(target, adapters, tmp_path: Path) -> None:
    """Pushing unchanged files again with a base fingerprint (what the warning advises), new
    lineage or a description: refused in one line naming what would be dropped, or recorded
    as a new version with --new-version; locally and over HTTP."""
    location, _ = target
    first = cli(location, "push", str(adapters["a"]), "-n", "nobase", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["base_fingerprint"] is None
    fingerprint = "sha256:" + "ab" * 32
    again = cli(location, "push", str(adapters["a"]), "-n", "nobase",
                "--base-fingerprint", fingerprint, "--description", "with its base")
    assert again.exit_code == 4, again.output
    line = again.stderr.strip()
    assert "\n" not in line and line.startswith("error: nobase@1 already holds these files")
    assert "--base, --description" in line and "--new-version" in line
    assert json.loads(cli(location, "show", "nobase", "--json").stdout)["version"] == 1
    recorded = cli(location, "push", str(adapters["a"]), "-n", "nobase", "--base-fingerprint",
                   fingerprint, "--new-version", "--json")
    assert recorded.exit_code == 0, recorded.output
    manifest = json.loads(recorded.stdout)
    assert (manifest["version"], manifest["base_fingerprint"]) == (2, fingerprint)
    assert manifest["digest"] == json.loads(first.stdout)["digest"]
    # The same files and the same facts again: a no-op, as before.
    same = cli(location, "push", str(adapters["a"]), "-n", "nobase", "--base-fingerprint",
               fingerprint, "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["version"] == 2


def test_serve_refuses_a_store_that_is_not_there_unless_create(tmp_path: Path) -> None:
    typo = tmp_path / "stroe"
    r = runner.invoke(app, ["serve", "--root", str(typo), "--anonymous-read"], env={})
    assert r.exit_code == 3, r.output
    assert r.stderr.strip() == (f"error: no registry at {typo}: check the path, or pass "
                                "--create to serve a new empty one there")
    assert not typo.exists()

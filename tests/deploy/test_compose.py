"""The one-machine stack (deploy/compose.yaml) and its monitoring config are valid and real.

No docker here: the compose file is validated against the Compose Specification's JSON schema
(vendored in deploy/schemas), every file it mounts must be in the repository (or made by the
README's Deploy commands), every loramux command must parse with the real CLI. Prometheus'
config passes `promtool check config`; every dashboard query parses as PromQL (`promtool check
rules`) and names only series the server exports. (tests/server/… runs the same queries against
a live Prometheus scraping a live server.)
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    cli_problem,
    deploy_section,
    image_runtime,
    known_env,
    require_tool,
)

COMPOSE_FILE = DEPLOY / "compose.yaml"
SCHEMA = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loramux.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def schema_problems(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def test_compose_file_follows_the_compose_spec() -> None:
    doc = compose()
    assert schema_problems(doc) == []
    assert {"registry", "server", "prometheus", "grafana"} <= set(doc["services"])


@pytest.mark.parametrize("mutation", ["misspelt key", "interval as a number", "unknown condition"])
def test_schema_check_refuses_a_broken_compose_file(mutation: str) -> None:
    doc = copy.deepcopy(compose())
    server = doc["services"]["server"]
    if mutation == "misspelt key":
        server["comand"] = server.pop("command")
    elif mutation == "interval as a number":
        doc["services"]["grafana"]["healthcheck"] = {"interval": 10}
    else:
        server["depends_on"] = {"registry": {"condition": "healthy"}}
    assert schema_problems(doc), mutation


def _mounts(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(service, host path) of every bind mount: `./x:/y[:ro]` or long syntax type=bind."""
    found = []
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = (volume.split(":", 1)[0] if isinstance(volume, str)
                      else volume.get("source", "") if volume.get("type") == "bind" else "")
            if source.startswith((".", "/", "$")):
                found.append((name, source))
    return found


def test_every_mounted_file_is_in_the_repository_or_made_by_the_readme() -> None:
    doc = compose()
    section = deploy_section()
    mounts = _mounts(doc)
    assert len(mounts) >= 4, mounts
    for service, source in mounts:
        if source.startswith("$"):  # the operator's: the README's commands set it
            var = re.match(r"\$\{(\w+)", source).group(1)
            assert f"export {var}=" in section, f"{service}: {var} is never set"
        else:
            assert (DEPLOY / source).exists(), f"{service}: {source} is not in deploy/"
    for name, secret in doc["secrets"].items():
        path = (DEPLOY / secret["file"]).resolve()
        assert path.parent == DEPLOY / "secrets", name
        assert f"> deploy/secrets/{path.name}" in section, f"README never writes {path.name}"
    for service in doc["services"].values():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_secret_files_are_never_committed() -> None:
    names = [Path(s["file"]).name for s in compose()["secrets"].values()]
    done = subprocess.run(["git", "check-ignore", *[f"deploy/secrets/{n}" for n in names]],
                          cwd=DEPLOY.parent, capture_output=True, text=True)
    assert done.stdout.split() == [f"deploy/secrets/{n}" for n in names], done.stderr


def test_loramux_services_use_real_flags_and_variables() -> None:
    doc = compose()
    commands = {n: s["command"] for n, s in doc["services"].items()
                if s.get("image", "").startswith("loramux:")}
    assert set(commands) == {"registry", "server"}
    for name, argv in commands.items():
        assert cli_problem(argv) is None, cli_problem(argv)
        env = doc["services"][name].get("environment", {})
        used = {k for k in env if k.startswith("LORAMUX_")}
        assert used <= known_env(), used - known_env()
    server = commands["server"]
    secret_path = server[server.index("--api-keys") + 1]
    assert secret_path == "/run/secrets/" + doc["services"]["server"]["secrets"][0]
    assert server[server.index("--registry") + 1] == "http://registry:{}".format(
        commands["registry"][commands["registry"].index("--port") + 1])


def test_flag_check_refuses_a_wrong_compose_command() -> None:
    argv = list(compose()["services"]["server"]["command"])
    argv[argv.index("--cache-dir")] = "--cache-folder"
    assert "No such option: --cache-folder" in (cli_problem(argv) or "")


def test_ports_are_published_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_containers_run_unprivileged_and_loramux_on_a_read_only_root() -> None:
    """security round 2, item 1: no capabilities and no privilege gain for any service; the
    loramux ones as the image's user on a read-only root, writing to volumes and tmpfs only."""
    doc = compose()
    _, _, home = image_runtime()
    for name, service in doc["services"].items():
        assert "ALL" in service.get("cap_drop", []) and not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged") and "user" not in service, name  # the image's
        if not service.get("image", "").startswith("loramux:"):
            continue
        assert service.get("read_only") is True, name
        argv = service["command"]
        writes = ["/tmp", home] + [argv[argv.index(f) + 1] for f in ("--cache-dir", "--root")
                                   if f in argv]
        env = service.get("environment", {})
        writes += [env[v] for v in ("HF_HOME", "TMPDIR") if env.get(v)]
        writable = list(service.get("tmpfs", [])) + [
            v.split(":")[1] for v in service.get("volumes", [])
            if isinstance(v, str) and not v.endswith(":ro")]
        for path in writes:
            assert any(Path(path).is_relative_to(m) for m in writable), (name, path)


# -- Prometheus and Grafana ------------------------------------------------------------------


def _promtool() -> str:
    return require_tool("promtool")


def test_prometheus_config_is_valid_and_scrapes_the_server(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "loramux"]
    # The server answers /metrics only to an operator key: the compose secret's, as a bearer.
    key_file = job["authorization"]["credentials_file"]
    secret = key_file.removeprefix("/run/secrets/")
    assert secret in compose()["services"]["prometheus"]["secrets"]
    assert compose()["secrets"][secret]["file"] == "./secrets/metrics-key"
    # promtool opens the credentials file: check a copy that points at a real one.
    (tmp_path / "key").write_text("sk-operator-key-for-promtool")
    checked = tmp_path / "prometheus.yml"
    checked.write_text(PROMETHEUS.read_text().replace(key_file, str(tmp_path / "key")))
    done = subprocess.run([_promtool(), "check", "config", str(checked)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    server = compose()["services"]["server"]["command"]
    target = f"server:{server[server.index('--port') + 1]}"
    assert [target] == [t for s in job["static_configs"] for t in s["targets"]]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    mounted = [v for v in compose()["services"]["prometheus"]["volumes"]
               if v.startswith("./prometheus/prometheus.yml:")]
    assert mounted


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    doc = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in doc["volumes"] if v.startswith("./"))
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "loramux.yml").read_text())["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning/datasources"].endswith("/provisioning/datasources")
    dashboard = json.loads(DASHBOARD.read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert used == {datasource["uid"]}


def _exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _promql_problems(exprs: list[str], tmp_path: Path) -> str:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_every_dashboard_query_is_promql(tmp_path: Path) -> None:
    assert _promql_problems(_exprs(), tmp_path) == ""
    broken = [_exprs()[0].replace("sum by (adapter, le)", "sum by adapter, le")]
    assert _promql_problems(broken, tmp_path), "promtool accepted a broken query"


def _exported_series() -> set[str]:
    """Every series name the server's /metrics can carry (histograms as their three parts)."""
    from loramux.server.gateway_metrics import PROTOCOL
    from loramux.server.metrics import Metrics

    names = {s.name for s in PROTOCOL}
    for metric in Metrics().registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
        names |= {metric.name + s for s in suffixes.get(metric.type, ("",))}
    return names


def test_dashboard_shows_what_the_issue_asks_with_real_series() -> None:
    used = {m for e in _exprs() for m in re.findall(r"\b(?:loramux_|vllm:)[\w:]+", e)}
    assert used <= _exported_series(), used - _exported_series()
    assert {"loramux_time_to_first_token_seconds_bucket", "loramux_completion_tokens_total",
            "loramux_adapter_cache_hits_total", "loramux_adapter_cache_misses_total",
            "loramux_adapter_loads_total", "vllm:num_requests_waiting",
            "loramux_requests_total"} <= used
    assert any('status="429"' in e for e in _exprs())
    per_adapter = [e for e in _exprs() if "by (adapter" in e]
    assert len(per_adapter) >= 4, "first-token latency, tokens/s, loads and 429s per adapter"

"""The Kubernetes kit (deploy/k8s) renders, validates and is wired together (issue 14, item 2).

Each overlay, with and without the registry-postgres-oci component, is rendered by
`kubectl kustomize`; every object is validated against the Kubernetes JSON schemas
(kubernetes-validate, strict: an unknown field is an error), and the Gateway API and
InferencePool objects against their CRDs' openAPIV3Schema (vendored in deploy/k8s/crds, made
strict the same way). Then the references between objects are followed: pool → servers and
picker, route → pool, autoscaler → the queue metric the servers expose, secrets → the README's
commands, container args → the real CLI.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
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

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.32.0"  # a version kubernetes-validate ships; GRPC probes, HPA v2, PDB v1 are GA
COMPONENT = K8S / "components" / "registry-postgres-oci"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
VARIANTS = [(o, c) for o in OVERLAYS for c in (None, COMPONENT.name)]


def render(overlay: str, component: str | None, tmp: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    target = K8S / "overlays" / overlay
    if component:  # the way an operator adds it: an overlay that lists the component
        target = tmp / f"{overlay}-{component}"
        target.mkdir()
        (target / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": "loramux",  # as README, Deploy writes it
            "resources": [os.path.relpath(K8S / "overlays" / overlay, target)],
            "components": [os.path.relpath(K8S / "components" / component, target)]}))
    done = subprocess.run([kubectl, "kustomize", str(target)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("kustomize")
    return {f"{o}+{c}" if c else o: render(o, c, tmp) for o, c in VARIANTS}


# -- schemas ---------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd_schemas() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) → validator, for every served version of every vendored CRD."""
    validators = {}
    for path in sorted((K8S / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = (
                    jsonschema.Draft7Validator(schema))
    return validators


CRDS = _crd_schemas()


def problems(obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse `obj`: schema errors, each with its path."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    crd = CRDS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is not None:
        return [f"{where} {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{where} {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def test_crds_are_vendored_with_their_source() -> None:
    assert set(CRDS) >= {("inference.networking.k8s.io/v1", "InferencePool"),
                         ("gateway.networking.k8s.io/v1", "HTTPRoute")}
    readme = (K8S / "crds" / "README.md").read_text()
    for path in (K8S / "crds").glob("*.yaml"):
        assert path.name in readme and re.search(r"\b[0-9a-f]{40}\b", readme), path.name


def test_every_overlay_and_component_is_rendered() -> None:
    assert set(OVERLAYS) == {"cpu", "gpu"}
    assert {p.name for p in (K8S / "components").iterdir()} == {COMPONENT.name}


@pytest.mark.parametrize("variant", [f"{o}+{c}" if c else o for o, c in VARIANTS])
def test_every_object_validates(rendered, variant: str) -> None:
    objects = rendered[variant]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "InferencePool", "HTTPRoute", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert [p for o in objects for p in problems(o)] == []
    assert all(o["metadata"].get("namespace") == "loramux" for o in objects)


# Each mutation is a mistake an edit could make; the validation must refuse every one.
MUTATIONS = {
    "misspelt probe": ("Deployment", "loramux-server", lambda o: _rename(
        o["spec"]["template"]["spec"]["containers"][0], "readinessProbe", "readinesProbe")),
    "string replicas": ("Deployment", "loramux-server",
                        lambda o: o["spec"].__setitem__("replicas", "two")),
    "hpa without target": ("HorizontalPodAutoscaler", "loramux-server",
                           lambda o: o["spec"]["metrics"][0]["pods"].pop("target")),
    "pool targetPort": ("InferencePool", "loramux",
                        lambda o: _rename(o["spec"], "targetPorts", "targetPort")),
    "pool port as text": ("InferencePool", "loramux",
                          lambda o: o["spec"]["targetPorts"][0].__setitem__("number", "8000")),
    "pool bad failure mode": ("InferencePool", "loramux", lambda o: o["spec"][
        "endpointPickerRef"].__setitem__("failureMode", "Open")),
    "route backendRef": ("HTTPRoute", "loramux",
                         lambda o: _rename(o["spec"]["rules"][0], "backendRefs", "backendRef")),
    "route bad path type": ("HTTPRoute", "loramux", lambda o: o["spec"]["rules"][0][
        "matches"][0]["path"].__setitem__("type", "Prefix")),
}


def _rename(d: dict[str, Any], old: str, new: str) -> None:
    d[new] = d.pop(old)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_validation_refuses_a_broken_object(rendered, mutation: str) -> None:
    kind, name, break_it = MUTATIONS[mutation]
    (obj,) = [copy.deepcopy(o) for o in rendered["cpu"]
              if o["kind"] == kind and o["metadata"]["name"] == name]
    assert problems(obj) == []
    break_it(obj)
    assert problems(obj), f"{mutation}: still valid"


# -- wiring ----------------------------------------------------------------------------------


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _ports(deployment: dict[str, Any]) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"]
            for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_gateway_reaches_the_servers_through_the_picker(rendered, variant: str) -> None:
    objects = rendered[variant]
    server = _one(objects, "Deployment", "loramux-server")
    pool = _one(objects, "InferencePool", "loramux")
    pod_labels = server["spec"]["template"]["metadata"]["labels"]
    assert _selects(pool["spec"]["selector"]["matchLabels"], pod_labels)
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [_ports(server)["http"]]
    args = _container(server)["args"]
    assert args[args.index("--port") + 1] == str(_ports(server)["http"])

    ref = pool["spec"]["endpointPickerRef"]
    service = _one(objects, "Service", ref["name"])
    assert ref["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]
    epp = _one(objects, "Deployment", ref["name"])
    assert _selects(service["spec"]["selector"], epp["spec"]["template"]["metadata"]["labels"])
    epp_args = _container(epp)["args"]
    assert epp_args[epp_args.index("--pool-name") + 1] == pool["metadata"]["name"]
    config = yaml.safe_load(_one(objects, "ConfigMap", "loramux-epp")["data"][
        Path(epp_args[epp_args.index("--config-file") + 1]).name])
    declared = {p["type"] for p in config["plugins"]}
    profile = {p["pluginRef"] for p in config["schedulingProfiles"][0]["plugins"]}
    assert "lora-affinity-scorer" in profile and profile <= declared
    # bench affinity measures this profile: its harness must use the weights shipped here
    from loramux.bench.affinity_router import WEIGHTS

    shipped = {p["pluginRef"].removesuffix("-scorer").removesuffix("-utilization"): p["weight"]
               for p in config["schedulingProfiles"][0]["plugins"]}
    assert {k: shipped[k] for k in WEIGHTS} == WEIGHTS

    (rule,) = _one(objects, "HTTPRoute", "loramux")["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io",
                                    "kind": "InferencePool", "name": "loramux"}]
    role = _one(objects, "Role", "loramux-epp")
    assert any("inferencepools" in r["resources"] for r in role["rules"])
    assert _one(objects, "RoleBinding", "loramux-epp")["subjects"] == [
        {"kind": "ServiceAccount", "name": "loramux-epp", "namespace": "loramux"}]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_autoscaler_scales_the_servers_on_the_queue_metric_they_expose(rendered,
                                                                       variant: str) -> None:
    from loramux.server.gateway_metrics import QUEUED

    objects = rendered[variant]
    hpa = _one(objects, "HorizontalPodAutoscaler", "loramux-server")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "loramux-server"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUED.name
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    server = _one(objects, "Deployment", "loramux-server")
    labels = server["spec"]["template"]["metadata"]["labels"]
    pdb = _one(objects, "PodDisruptionBudget", "loramux-server")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")


@pytest.mark.parametrize("variant", [f"{o}+{c}" if c else o for o, c in VARIANTS])
def test_every_workload_is_probed_sized_and_fenced(rendered, variant: str) -> None:
    objects = rendered[variant]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(kind, {})), (name, kind)
        fences = [p for p in policies if _selects(p["spec"]["podSelector"]["matchLabels"],
                                                  labels)]
        assert fences, f"{name}: no NetworkPolicy"
        allowed = {p["port"] for f in fences for rule in f["spec"]["ingress"]
                   for p in rule["ports"]}
        service_ports = {p["targetPort"] if isinstance(p["targetPort"], int)
                         else _ports(deployment)[p["targetPort"]]
                         for s in objects if s["kind"] == "Service"
                         and _selects(s["spec"]["selector"], labels) for p in s["spec"]["ports"]}
        assert service_ports <= allowed, name

    server = _container(_one(objects, "Deployment", "loramux-server"))
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    args = server["args"]
    cache_dir = Path(args[args.index("--cache-dir") + 1])
    pod = _one(objects, "Deployment", "loramux-server")["spec"]["template"]["spec"]
    (mount,) = [m for m in server["volumeMounts"] if cache_dir.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    size = volume["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi") and int(args[args.index("--max-cache-bytes") + 1]) < int(
        size[:-2]) * 2**30, "the adapter cache must fit its volume"
    gpus = server["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == variant.startswith("gpu"), gpus


def test_postgres_oci_component_makes_the_registry_stateless(rendered) -> None:
    objects = rendered[f"cpu+{COMPONENT.name}"]
    registry = _one(objects, "Deployment", "loramux-registry")
    env = {e["name"] for e in _container(registry)["env"]}
    from loramux.registry import ENV_BLOBS, ENV_INDEX
    from loramux.registry.oci.auth import ENV_OCI_PASSWORD, ENV_OCI_USERNAME

    assert {ENV_INDEX, ENV_BLOBS, ENV_OCI_USERNAME, ENV_OCI_PASSWORD} <= env
    assert registry["spec"]["replicas"] >= 2
    assert not any("persistentVolumeClaim" in v
                   for v in registry["spec"]["template"]["spec"]["volumes"])
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"
                and o["metadata"]["name"] == "loramux-registry"]
    _one(objects, "PodDisruptionBudget", "loramux-registry")


# -- least privilege (security round 2, item 1) ---------------------------------------------


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("variant", [f"{o}+{c}" if c else o for o, c in VARIANTS])
def test_every_pod_runs_unprivileged_on_a_read_only_root(rendered, variant: str) -> None:
    for d in (o for o in rendered[variant] if o["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            where = f"{d['metadata']['name']}/{c['name']}"
            own = c.get("securityContext", {})
            assert _effective(pod, c, "runAsNonRoot") is True, where
            uid = _effective(pod, c, "runAsUser")
            assert isinstance(uid, int) and uid > 0, f"{where}: a numeric non-root runAsUser"
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert not own.get("privileged"), where
            caps = own.get("capabilities", {})
            assert "ALL" in caps.get("drop", []) and not caps.get("add"), where
            assert (_effective(pod, c, "seccompProfile") or {}).get("type") == "RuntimeDefault"
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"))


@pytest.mark.parametrize("variant", [f"{o}+{c}" if c else o for o, c in VARIANTS])
def test_loramux_containers_write_only_to_their_volumes(rendered, variant: str) -> None:
    """The image's user, and every folder it writes on a writable volume: the cache and the
    registry's root, Hugging Face's cache, /tmp and its home (vLLM's caches)."""
    uid, gid, home = image_runtime()
    checked = 0
    for d in (o for o in rendered[variant] if o["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"]:
            if not c["image"].startswith("loramux:"):
                continue
            checked += 1
            assert _effective(pod, c, "runAsUser") == uid
            assert pod["securityContext"].get("fsGroup") == gid, "its volumes writable by it"
            args, env = c["args"], {e["name"]: e.get("value") for e in c.get("env", [])}
            writes = ["/tmp", home] + [args[args.index(f) + 1] for f in ("--cache-dir", "--root")
                                       if f in args]
            writes += [env[v] for v in ("HF_HOME", "TMPDIR") if env.get(v)]
            writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
            for path in writes:
                assert any(Path(path).is_relative_to(m) for m in writable), (
                    f"{d['metadata']['name']}: {path} is on the read-only root")
    assert checked == 2


# -- secrets and the CLI ---------------------------------------------------------------------


def _secret_names(objects: list[dict[str, Any]]) -> set[str]:
    names = set()
    for d in (o for o in objects if o["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for c in pod["containers"]
                  for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def test_every_secret_is_created_by_the_readme(rendered) -> None:
    created = set(re.findall(r"kubectl -n loramux create secret generic ([\w-]+)",
                             deploy_section().replace("\\\n", " ")))
    for variant, objects in rendered.items():
        assert _secret_names(objects) <= created, (variant, _secret_names(objects) - created)


def test_readme_names_deploy_paths_that_exist() -> None:
    section = deploy_section()
    named = set(re.findall(r"deploy/[\w./-]*\w", section))
    assert {"deploy/k8s/overlays/cpu", "deploy/k8s/overlays/gpu", "deploy/compose.yaml",
            "deploy/k8s/components/registry-postgres-oci"} <= named
    assert "namespace: loramux\\n" in section, "the component's own objects need it too"
    made = {p for p in named if p.startswith("deploy/secrets")}
    assert "mkdir -p deploy/secrets" in section and made
    missing = [p for p in named - made if not (DEPLOY.parent / p).exists()]
    assert not missing, missing


@pytest.mark.parametrize("variant", [f"{o}+{c}" if c else o for o, c in VARIANTS])
def test_loramux_containers_use_real_flags_and_variables(rendered, variant: str) -> None:
    env_names = known_env()
    for d in (o for o in rendered[variant] if o["kind"] == "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith("loramux:"):
                continue
            assert cli_problem(c["args"]) is None, cli_problem(c["args"])
            used = {e["name"] for e in c.get("env", []) if e["name"].startswith("LORAMUX_")}
            assert used <= env_names, used - env_names


def test_flag_check_refuses_a_wrong_flag() -> None:
    assert "No such option: --api-key" in (cli_problem(["serve", "--base", "b", "--api-key",
                                                        "k"]) or "")
    assert cli_problem(["registry", "serve", "--root", "r", "--token", "t"])
    assert cli_problem(["serve", "--base", "b", "--max-pending"])


def test_server_reads_keys_from_a_required_secret_volume(rendered) -> None:
    """issue 12: the pod must not start without keys, and rotation must reach the file."""
    for variant, objects in rendered.items():
        pod = _one(objects, "Deployment", "loramux-server")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        args = container["args"]
        keys = env.get("LORAMUX_API_KEYS") or args[args.index("--api-keys") + 1]
        secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        mounts = [m for m in container["volumeMounts"] if m["name"] in secrets
                  and keys.startswith(m["mountPath"].rstrip("/") + "/") and "subPath" not in m]
        assert mounts, f"{variant}: {keys} is not on a secret volume (without subPath)"
        assert not secrets[mounts[0]["name"]].get("optional"), "must not start without it"
        assert "--insecure-no-auth" not in args and "LORAMUX_INSECURE_NO_AUTH" not in env

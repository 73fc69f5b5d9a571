"""Static checks of the Kubernetes manifests in deploy/k8s and of the Grafana dashboard.

No cluster needed. YAML checks need PyYAML (skipped without it); the dashboard's metric
names are checked without it. When `kustomize` or `kubectl` is on PATH the overlays are
also rendered and checked as a whole.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
DASHBOARD = K8S / "dashboards" / "visearch.json"
SERVICES_SRC = ROOT / "services"

VISEARCH_SERVICES = ("gateway", "embedder", "indexer", "verifier")
WORKLOAD_KINDS = {
    "gateway": "Deployment",
    "embedder": "Deployment",
    "indexer": "StatefulSet",
    "verifier": "Deployment",
}
GRPC_PORTS = {"gateway": 50051, "embedder": 50052, "indexer": 50061, "verifier": 50071}
METRICS_PORT = 9100


# --------------------------------------------------------------------------- helpers


def yaml_module() -> Any:
    return pytest.importorskip("yaml")


def yaml_files() -> list[Path]:
    return sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])


def load_docs(path: Path) -> list[dict[str, Any]]:
    yaml = yaml_module()
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def base_resources() -> list[dict[str, Any]]:
    kustomization = load_docs(BASE / "kustomization.yaml")[0]
    docs: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = BASE / entry
        if path.is_file():
            docs.extend(load_docs(path))
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def visearch_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    ours = [c for c in containers if c.get("command", [])[:2] == ["python", "-m"]]
    assert len(ours) == 1, f"{workload['metadata']['name']}: expected one visearch container"
    return ours[0]


def env_list_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return item
    return None


def shared_config_literals() -> dict[str, str]:
    kustomization = load_docs(BASE / "kustomization.yaml")[0]
    generators = [g for g in kustomization["configMapGenerator"] if g["name"] == "visearch-config"]
    assert len(generators) == 1
    return dict(literal.split("=", 1) for literal in generators[0]["literals"])


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with (downward-API values stood in for)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "visearch-config"
            env.update(shared_config_literals())
        if "secretRef" in source:
            secret = find(docs, "Secret", source["secretRef"]["name"])
            env.update({k: str(v) for k, v in secret["stringData"].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = "1"  # e.g. the pod-index label of indexer-1
        elif "resourceFieldRef" in item["valueFrom"]:
            env[item["name"]] = "2"  # limits.cpu rounded up to whole cores
    return env


# --------------------------------------------------------------------------- YAML files


def test_every_yaml_file_parses_into_kubernetes_objects():
    files = yaml_files()
    assert files, "no YAML under deploy/k8s"
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} has no name"


@pytest.mark.parametrize(
    "kustomization", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S))
)
def test_kustomization_references_exist(kustomization: Path):
    spec = load_docs(kustomization)[0]
    folder = kustomization.parent
    referenced: set[Path] = set()
    for entry in [*spec.get("resources", []), *spec.get("components", [])]:
        path = (folder / entry).resolve()
        assert path.exists(), f"{kustomization}: resource {entry} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{entry} has no kustomization.yaml"
        referenced.add(path)
    for patch in spec.get("patches", []):
        if "path" in patch:
            path = (folder / patch["path"]).resolve()
            assert path.is_file(), f"{kustomization}: patch {patch['path']} does not exist"
            referenced.add(path)
    for entry in spec.get("patchesStrategicMerge", []):
        path = (folder / entry).resolve()
        assert path.is_file(), f"{kustomization}: patch {entry} does not exist"
        referenced.add(path)
    for generator in [*spec.get("configMapGenerator", []), *spec.get("secretGenerator", [])]:
        for entry in [*generator.get("files", []), *generator.get("envs", [])]:
            path = (folder / entry.split("=", 1)[-1]).resolve()
            assert path.is_file(), f"{kustomization}: generator file {entry} does not exist"
            # kustomize only reads generator files inside the kustomization's folder.
            assert folder.resolve() in path.parents, f"{entry} is outside {folder}"
    # No manifest lying next to a kustomization without being part of it.
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            assert path.resolve() in referenced, f"{path} is not listed in {kustomization}"


def test_overlays_build_on_the_base():
    for overlay in ("cpu", "gpu"):
        spec = load_docs(OVERLAYS / overlay / "kustomization.yaml")[0]
        assert "../../base" in spec["resources"]


# --------------------------------------------------------------------------- workloads


def test_every_service_has_its_workload_with_the_shared_image():
    docs = base_resources()
    for service, kind in WORKLOAD_KINDS.items():
        workload = find(docs, kind, service)
        container = visearch_container(workload)
        assert container["command"] == ["python", "-m", f"services.{service}.main"]
        assert container["image"] == "visearch"
        assert env_list_value(container, "VISEARCH_GRPC_PORT")["value"] == str(GRPC_PORTS[service])


@pytest.mark.parametrize("service", VISEARCH_SERVICES)
def test_visearch_containers_are_probed_limited_and_locked_down(service: str):
    docs = base_resources()
    workload = find(docs, WORKLOAD_KINDS[service], service)
    pod = workload["spec"]["template"]["spec"]
    container = visearch_container(workload)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORTS[service], "metrics": METRICS_PORT}

    # Native gRPC probes (grpc.health.v1) on the service's own port.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORTS[service], f"{service} {probe}"

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{service} {kind}"

    pod_security = pod.get("securityContext", {})
    security = container["securityContext"]
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod_security.get("runAsUser", 0) != 0

    # A read-only root needs a writable /tmp (and the embedder its model cache).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    if service == "embedder":
        env = {e["name"]: e.get("value") for e in container["env"]}
        cache = env["VISEARCH_MODEL_CACHE"]
        assert "emptyDir" in volumes[mounts[cache]]

    # The kubelet waits long enough for preStop plus the server's own graceful stop.
    grace = float(shared_config_literals().get("VISEARCH_GRACE_SECONDS", "5"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    sleep = float(pre_stop["command"][1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
    assert pod["terminationGracePeriodSeconds"] > grace + sleep


@pytest.mark.parametrize("service", VISEARCH_SERVICES)
def test_services_expose_grpc_and_a_port_named_metrics(service: str):
    docs = base_resources()
    svc = find(docs, "Service", service)
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"grpc": GRPC_PORTS[service], "metrics": METRICS_PORT}
    workload = find(docs, WORKLOAD_KINDS[service], service)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    if service == "indexer":
        assert svc["spec"]["clusterIP"] == "None"
        assert workload["spec"]["serviceName"] == "indexer"


def test_servicemonitor_scrapes_every_visearch_service():
    docs = base_resources()
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    spec = monitors[0]["spec"]
    assert [e["port"] for e in spec["endpoints"]] == ["metrics"]
    for service in VISEARCH_SERVICES:
        labels = find(docs, "Service", service)["metadata"]["labels"]
        for expression in spec["selector"].get("matchExpressions", []):
            assert expression["operator"] == "In"
            assert labels.get(expression["key"]) in expression["values"], service
        assert spec["selector"].get("matchLabels", {}).items() <= labels.items()


@pytest.mark.parametrize("service", VISEARCH_SERVICES)
def test_pod_disruption_budget_covers_each_service(service: str):
    docs = base_resources()
    pdb = find(docs, "PodDisruptionBudget", service)
    workload = find(docs, WORKLOAD_KINDS[service], service)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def test_gateway_shard_addresses_match_the_indexer_statefulset():
    docs = base_resources()
    indexer = find(docs, "StatefulSet", "indexer")
    gateway = visearch_container(find(docs, "Deployment", "gateway"))
    addresses = env_list_value(gateway, "VISEARCH_SHARD_ADDRS")["value"].split(",")
    replicas = indexer["spec"]["replicas"]
    assert addresses == [f"indexer-{i}.indexer:{GRPC_PORTS['indexer']}" for i in range(replicas)]
    shard_id = env_list_value(visearch_container(indexer), "VISEARCH_SHARD_ID")
    assert shard_id["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )


def test_embedder_autoscales_on_queue_time_with_cpu_fallback():
    docs = base_resources()
    hpa = find(docs, "HorizontalPodAutoscaler", "embedder")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "embedder",
    }
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"].startswith("visearch_embedder_queue")
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    # The HPA owns the replica count.
    assert "replicas" not in find(docs, "Deployment", "embedder")["spec"]
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert metrics["Pods"]["pods"]["metric"]["name"] in readme  # the prometheus-adapter rule
    assert "visearch_embedder_queue_duration_seconds_bucket" in readme


def test_embedder_model_version_is_the_one_the_build_writes():
    from services.models.build import DEFAULT_INPUT_SIZE, version_for

    embedder = visearch_container(find(base_resources(), "Deployment", "embedder"))
    version = env_list_value(embedder, "VISEARCH_MODEL_VERSION")["value"]
    assert version == version_for(DEFAULT_INPUT_SIZE)


def test_embedder_local_model_version_is_the_one_the_build_writes():
    from services.models.delf_build import VERSION

    embedder = visearch_container(find(base_resources(), "Deployment", "embedder"))
    assert env_list_value(embedder, "VISEARCH_LOCAL_MODEL_VERSION")["value"] == VERSION
    assert VERSION in (K8S / "README.md").read_text(encoding="utf-8")  # the publish steps


def test_service_configs_accept_the_manifest_environment():
    """Each service's own from_env() parses what the manifests give it."""
    from services.embedder.main import EmbedderConfig
    from services.gateway.main import GatewayConfig
    from services.indexer.main import IndexerConfig
    from services.verifier.main import VerifierConfig

    docs = base_resources()
    configs = {
        "gateway": GatewayConfig,
        "embedder": EmbedderConfig,
        "indexer": IndexerConfig,
        "verifier": VerifierConfig,
    }
    for service, config_class in configs.items():
        container = visearch_container(find(docs, WORKLOAD_KINDS[service], service))
        config = config_class.from_env(container_env(docs, container))
        assert config.server.grpc_port == GRPC_PORTS[service]
        assert config.server.metrics_port == METRICS_PORT
        assert config.server.host == "0.0.0.0"


def test_every_visearch_variable_in_the_manifests_is_read_by_the_services():
    """A misspelt VISEARCH_* variable would be silently ignored: catch it here."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in SERVICES_SRC.rglob("*.py"))
    known = set(re.findall(r'"(VISEARCH_[A-Z0-9_]+)"', source))
    used: set[str] = set()
    for path in yaml_files():
        used |= set(re.findall(r"\b(VISEARCH_[A-Z0-9_]+)\b", path.read_text(encoding="utf-8")))
    assert used, "no VISEARCH_ variables found in deploy/k8s"
    assert used <= known, f"not read by any service: {sorted(used - known)}"


# --------------------------------------------------------------------------- overlays


def overlay_embedder_patch(overlay: str) -> dict[str, Any]:
    spec = load_docs(OVERLAYS / overlay / "kustomization.yaml")[0]
    for patch in spec.get("patches", []):
        for doc in load_docs(OVERLAYS / overlay / patch["path"]):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "embedder":
                return doc
    raise AssertionError(f"overlay {overlay} does not patch the embedder")


def patched_container(patch: dict[str, Any]) -> dict[str, Any]:
    containers = patch["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "embedder")


def test_cpu_overlay_runs_the_cpu_provider():
    container = patched_container(overlay_embedder_patch("cpu"))
    providers = env_list_value(container, "VISEARCH_ORT_PROVIDERS")["value"]
    assert providers == "CPUExecutionProvider"


def test_gpu_overlay_gives_the_embedder_a_gpu():
    patch = overlay_embedder_patch("gpu")
    container = patched_container(patch)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    providers = env_list_value(container, "VISEARCH_ORT_PROVIDERS")["value"].split(",")
    assert providers[0] == "CUDAExecutionProvider"
    assert "CPUExecutionProvider" in providers
    tolerations = patch["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_renders_with_kustomize(overlay: str):
    yaml = yaml_module()
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl on PATH")
    result = subprocess.run(
        [*command, str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "visearch", doc["metadata"]["name"]
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    dashboards = [c for c in configmaps if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == 1
    assert json.loads(dashboards[0]["data"]["visearch.json"]) == json.loads(
        DASHBOARD.read_text(encoding="utf-8")
    )
    for service, kind in WORKLOAD_KINDS.items():
        container = visearch_container(find(docs, kind, service))
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        wants_gpu = overlay == "gpu" and service == "embedder"
        assert (gpus == 1) == wants_gpu, f"{overlay}: {service} nvidia.com/gpu={gpus}"
        # The generated (hash-suffixed) shared ConfigMap is what the pods reference.
        refs = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
        assert refs and all(r in {c["metadata"]["name"] for c in configmaps} for r in refs)
        if service == "embedder":
            env = {e["name"]: e.get("value") for e in container["env"]}
            expected = "CUDAExecutionProvider" if overlay == "gpu" else "CPUExecutionProvider"
            assert env["VISEARCH_ORT_PROVIDERS"].split(",")[0] == expected


# --------------------------------------------------------------------------- dashboard

METRIC_FACTORY_CALL = re.compile(r"\.(counter|gauge|histogram)\(\s*\"([a-z0-9_]+)\"")


def exported_metrics() -> tuple[set[str], set[str]]:
    """(series names, metric family names) the services export, found in their source.

    `<anything>.counter("thing", ...)` in services/<service>/ exports
    visearch_<service>_thing_total; gauges export the name itself; histograms
    _bucket/_sum/_count. Calls in services/common/ (the base metrics of
    ServiceMetrics: requests, request_duration_seconds, ready) belong to every service.
    """
    series: set[str] = set()
    families: set[str] = set()
    for path in sorted(SERVICES_SRC.rglob("*.py")):
        folder = path.relative_to(SERVICES_SRC).parts[0]
        if folder == "common":
            owners: tuple[str, ...] = VISEARCH_SERVICES
        elif folder in VISEARCH_SERVICES:
            owners = (folder,)
        else:
            continue
        for kind, thing in METRIC_FACTORY_CALL.findall(path.read_text(encoding="utf-8")):
            for service in owners:
                family = f"visearch_{service}_{thing}"
                if kind == "counter":
                    family = family.removesuffix("_total")
                    series.add(f"{family}_total")
                elif kind == "gauge":
                    series.add(family)
                else:
                    series |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
                families.add(family)
    return series, families


def dashboard_text() -> str:
    return DASHBOARD.read_text(encoding="utf-8")


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(dashboard_text()))
    return exprs


def test_exported_metric_scan_finds_the_known_metrics():
    series, families = exported_metrics()
    for name in (
        "visearch_gateway_requests_total",
        "visearch_indexer_request_duration_seconds_bucket",
        "visearch_verifier_ready",
        "visearch_embedder_queue_duration_seconds_bucket",
        "visearch_embedder_provider_info",
        "visearch_indexer_index_size_vectors",
        "visearch_verifier_inliers_count",
    ):
        assert name in series
    assert "visearch_embedder_batch_size_images" in families


def test_every_dashboard_metric_is_exported_by_the_services():
    series, families = exported_metrics()
    # Anywhere in the JSON (titles and descriptions too): a known family or series.
    mentioned = set(re.findall(r"visearch_[a-z_]+", dashboard_text()))
    unknown = {name for name in mentioned if name not in series | families}
    assert not unknown, f"dashboard names metrics no service exports: {sorted(unknown)}"
    # In queries: exactly a series Prometheus will have (no bare histogram names).
    used: set[str] = set()
    for expr in dashboard_exprs():
        assert "__name__" not in expr, f"metric names must be literal to be checked: {expr}"
        used |= set(re.findall(r"visearch_[a-z_]+", expr))
    assert not used - series, f"queries use series that are not exported: {sorted(used - series)}"
    # Every service-specific metric has a panel.
    for name in (
        "visearch_embedder_batch_size_images_bucket",
        "visearch_embedder_queue_duration_seconds_bucket",
        "visearch_embedder_provider_info",
        "visearch_indexer_index_size_vectors",
        "visearch_indexer_search_duration_seconds_bucket",
        "visearch_verifier_inliers_bucket",
    ):
        assert name in used, f"no panel uses {name}"
    for service in VISEARCH_SERVICES:
        for suffix in ("requests_total", "request_duration_seconds_bucket", "ready"):
            assert f"visearch_{service}_{suffix}" in used


def test_dashboard_is_grafana_json_on_a_prometheus_datasource_variable():
    dashboard = json.loads(dashboard_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_dashboard_ships_as_a_grafana_sidecar_configmap():
    spec = load_docs(K8S / "dashboards" / "kustomization.yaml")[0]
    assert spec["generatorOptions"]["labels"]["grafana_dashboard"] == "1"
    files = [f for g in spec["configMapGenerator"] for f in g["files"]]
    assert files == ["visearch.json"]
    base = load_docs(BASE / "kustomization.yaml")[0]
    assert "../dashboards" in base["resources"]


# --------------------------------------------------------------------------- TLS component

TLS_COMPONENT = K8S / "components" / "tls"
HEALTH_PORT = 8086


def test_tls_component_mounts_the_secret_and_probes_the_plaintext_health_port(tmp_path):
    """cpu overlay + components/tls: every service gets the Secret's files and its config
    parses (internal services require client certificates, the gateway does not)."""
    import os

    from services.common.config import ServerConfig

    yaml = yaml_module()
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl on PATH")
    rel = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel / 'overlays' / 'cpu'}\n"
        f"components:\n  - {rel / 'components' / 'tls'}\n",
        encoding="utf-8",
    )
    result = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    shared = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("visearch-config")
    )["data"]
    # The Secret's files, as test files (the services check that they exist).
    files = {}
    for name in ("tls.crt", "tls.key", "ca.crt"):
        files[f"/etc/visearch/tls/{name}"] = str(tmp_path / name)
        (tmp_path / name).write_text("PEM", encoding="utf-8")
    for service, kind in WORKLOAD_KINDS.items():
        workload = find(docs, kind, service)
        container = visearch_container(workload)
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "visearch-tls"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
        assert mount["mountPath"] == "/etc/visearch/tls" and mount["readOnly"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORT, (service, probe)
        env = {k: files.get(v, v) for k, v in shared.items()}
        env.update({e["name"]: str(e["value"]) for e in container["env"] if "value" in e})
        config = ServerConfig.from_env(env, service, 0)
        assert config.health_port == HEALTH_PORT
        assert config.tls is not None
        assert config.tls.cert == str(tmp_path / "tls.crt")
        assert config.tls.require_client_cert == (service != "gateway")


def test_valkey_needs_the_secrets_password_and_the_services_send_it():
    """Valkey's default user is off and its ACL user comes from the visearch-redis Secret;
    the services that use Redis get the same Secret and add it to VISEARCH_REDIS_URL."""
    from urllib.parse import urlsplit

    from services.common.config import redis_url_from_env

    docs = base_resources()
    redis = find(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    default = args.index("default")
    assert args[default - 1 : default + 2] == ["--user", "default", "off"]
    assert ">$(VISEARCH_REDIS_PASSWORD)" in args and "-@admin" in args
    assert {"secretRef": {"name": "visearch-redis"}} in redis["envFrom"]
    assert "--appendfsync" in args
    for service in ("gateway", "indexer"):
        container = visearch_container(find(docs, WORKLOAD_KINDS[service], service))
        url = urlsplit(redis_url_from_env(container_env(docs, container)))
        secret = find(docs, "Secret", "visearch-redis")["stringData"]
        assert (url.username, url.password) == (
            secret["VISEARCH_REDIS_USERNAME"],
            secret["VISEARCH_REDIS_PASSWORD"],
        ), service


def test_the_gateway_requires_api_keys_with_an_optional_bootstrap_secret():
    docs = base_resources()
    gateway = visearch_container(find(docs, "Deployment", "gateway"))
    env = {item["name"]: item for item in gateway["env"]}
    assert env["VISEARCH_AUTH"]["value"] == "required"
    ref = env["VISEARCH_BOOTSTRAP_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "visearch-api-key", "key": "VISEARCH_API_KEY", "optional": True}
    # No known admin key ships with the manifests.
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]

"""The Helm chart (helm/matchmaking), rendered offline with the Helm v4 SDK (helm-python-sdk).

Default and production values: strict lint, every manifest valid against the Kubernetes schemas
(kubernetes-validate, strict), and the fields that matter in a cluster: probes, security
context, resources, rolling update, checksum-driven rollouts, tracking URI wiring, Secret
references, HPA/PDB targets. The schema rejects wrong types and unknown keys.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from matchmaking.orchestration.config import PipelineConfig
from serving.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "matchmaking"
PRODUCTION = CHART / "values-production.yaml"
AIRFLOW_VALUES = ROOT / "helm" / "examples" / "airflow-values.yaml"
AIRFLOW_CELERY_VALUES = ROOT / "helm" / "examples" / "airflow-celery-values.yaml"
KUBE_VERSION = "1.37.0"  # the newest schemas kubernetes-validate ships
RELEASE, NAMESPACE = "matchmaking", "matchmaking"
SCORING, MLFLOW = "matchmaking-scoring", "matchmaking-mlflow"

Manifest = dict[str, Any]


# -- helpers ----------------------------------------------------------------------------------


def load_values(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    return loaded


def merge(base: dict[str, Any] | None, override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (what repeated -f/--set do)."""
    out = copy.deepcopy(base or {})
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render_files(values: dict[str, Any] | None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def render(values: dict[str, Any] | None) -> list[Manifest]:
    """Every manifest the chart renders for ``values`` (NOTES.txt left out)."""
    docs: list[Manifest] = []
    for path, text in render_files(values).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, got {len(matches)}"
    return matches[0]


def kinds(docs: list[Manifest]) -> set[str]:
    return {f"{d['kind']}/{d['metadata']['name']}" for d in docs}


def container(deployment: Manifest, name: str) -> dict[str, Any]:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def secret_ref(c: dict[str, Any], var: str) -> tuple[str, str]:
    entry = env_of(c)[var]
    assert "value" not in entry, f"{var} must come from a Secret, not a literal"
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def walk_schema(values: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Yield every values.yaml key the schema does not describe (type or description)."""
    if not isinstance(values, dict):
        return
    props = schema.get("properties", {})
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in props:
            if schema.get("additionalProperties") is False:
                yield f"{where}: not in the schema"
            continue
        sub = props[key]
        if "description" not in sub:
            yield f"{where}: no description"
        if sub.get("additionalProperties") is False:  # a closed object the chart defines
            yield from walk_schema(value, sub, where)


# -- fixtures ---------------------------------------------------------------------------------

VALUE_SETS = ["default", "production"]


@pytest.fixture(scope="module")
def production_values() -> dict[str, Any]:
    return load_values(PRODUCTION)


@pytest.fixture(scope="module", params=VALUE_SETS)
def values(request: pytest.FixtureRequest, production_values: dict[str, Any]) -> dict[str, Any]:
    return {} if request.param == "default" else production_values


@pytest.fixture(scope="module")
def docs(values: dict[str, Any]) -> list[Manifest]:
    return render(values)


# -- lint and Kubernetes schemas --------------------------------------------------------------


def test_lint_strict(values: dict[str, Any]) -> None:
    report = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


def test_every_manifest_is_valid_kubernetes(docs: list[Manifest]) -> None:
    expected = {
        f"Deployment/{SCORING}",
        f"Service/{SCORING}",
        f"ConfigMap/{SCORING}",
        f"HorizontalPodAutoscaler/{SCORING}",
        f"PodDisruptionBudget/{SCORING}",
        f"ServiceAccount/{SCORING}",
        f"Deployment/{MLFLOW}",
        f"Service/{MLFLOW}",
        f"ServiceAccount/{MLFLOW}",
    }
    assert expected <= kinds(docs)
    for doc in docs:
        # SchemaNotFoundError (an unknown kind/apiVersion) fails the test too.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE


# -- scoring service --------------------------------------------------------------------------


def test_scoring_probes_and_ports(docs: list[Manifest]) -> None:
    dep = find(docs, "Deployment", SCORING)
    c = container(dep, "scoring")
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = find(docs, "Service", SCORING)
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    cm = find(docs, "ConfigMap", SCORING)["data"]
    assert cm["MATCHMAKING_SERVE_HOST"] == "0.0.0.0" and cm["MATCHMAKING_SERVE_PORT"] == "8000"


@pytest.mark.parametrize("name,component", [(SCORING, "scoring"), (MLFLOW, "mlflow")])
def test_non_root_read_only_containers(docs: list[Manifest], name: str, component: str) -> None:
    pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    c = container(find(docs, "Deployment", name), component)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]


def test_compile_cache_is_a_writable_emptydir(docs: list[Manifest]) -> None:
    """The service writes compiled forests to MATCHMAKING_SERVE_COMPILE_CACHE_DIR."""
    dep = find(docs, "Deployment", SCORING)
    cache = find(docs, "ConfigMap", SCORING)["data"]["MATCHMAKING_SERVE_COMPILE_CACHE_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container(dep, "scoring")["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[cache]]


def test_rolling_update_never_drops_below_desired(docs: list[Manifest]) -> None:
    strategy = find(docs, "Deployment", SCORING)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_configmap_holds_exactly_the_service_settings(
    docs: list[Manifest], monkeypatch: pytest.MonkeyPatch, values: dict[str, Any]
) -> None:
    """Every MATCHMAKING_SERVE_* key is a ServeSettings field, and the service parses them."""
    data = find(docs, "ConfigMap", SCORING)["data"]
    fields = {f"MATCHMAKING_SERVE_{name.upper()}" for name in ServeSettings.model_fields}
    serve_keys = {k for k in data if k.startswith("MATCHMAKING_SERVE_")}
    assert serve_keys <= fields, serve_keys - fields
    assert "MATCHMAKING_SERVE_AUTH_TOKEN" not in data, "the token belongs in a Secret"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = ServeSettings()
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert settings.hot_cities == values.get("config", {}).get("hotCities", [])
    assert str(settings.compile_cache_dir) == "/var/cache/matchmaking"


def test_checksum_annotation_follows_the_config(values: dict[str, Any]) -> None:
    def checksum(vals: dict[str, Any]) -> str:
        dep = find(render(vals), "Deployment", SCORING)
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    before = checksum(values)
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    assert checksum(values) == before, "same values, same checksum (no needless rollouts)"
    changed = merge(values, {"config": {"pollIntervalS": 7}})
    assert checksum(changed) != before
    assert checksum(merge(values, {"config": {"hotCities": ["hanoi"]}})) != before


def test_tracking_uri_defaults_to_the_in_chart_server(docs: list[Manifest]) -> None:
    uri = find(docs, "ConfigMap", SCORING)["data"]["MATCHMAKING_SERVE_TRACKING_URI"]
    svc = find(docs, "Service", MLFLOW)
    port = svc["spec"]["ports"][0]["port"]
    assert uri == f"http://{MLFLOW}.{NAMESPACE}.svc.cluster.local:{port}"
    dep = find(docs, "Deployment", SCORING)
    env_from = container(dep, "scoring")["envFrom"]
    assert {"configMapRef": {"name": SCORING}} in env_from
    # The tracking server accepts that Host header (MLflow's DNS-rebinding protection).
    allowed = env_of(container(find(docs, "Deployment", MLFLOW), "mlflow"))
    hosts = allowed["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert f"{MLFLOW}.{NAMESPACE}.svc.cluster.local:*" in hosts


def test_tracking_uri_external_when_the_server_is_off() -> None:
    external = "https://mlflow.example.com"
    docs = render({"mlflow": {"enabled": False}, "config": {"trackingUri": external}})
    assert find(docs, "ConfigMap", SCORING)["data"]["MATCHMAKING_SERVE_TRACKING_URI"] == external
    assert not any(d["metadata"]["name"].startswith(MLFLOW) for d in docs)
    with pytest.raises(helm.HelmRenderError, match=r"config\.trackingUri is required"):
        render({"mlflow": {"enabled": False}})


def test_explicit_tracking_uri_wins_over_the_in_chart_server() -> None:
    docs = render({"config": {"trackingUri": "http://other:5000"}})
    assert find(docs, "ConfigMap", SCORING)["data"]["MATCHMAKING_SERVE_TRACKING_URI"] == (
        "http://other:5000"
    )


def test_auth_token_is_a_secret_reference(docs: list[Manifest], values: dict[str, Any]) -> None:
    c = container(find(docs, "Deployment", SCORING), "scoring")
    expected = values.get("auth", {}).get("existingSecret", "matchmaking-scoring-auth")
    assert secret_ref(c, "MATCHMAKING_SERVE_AUTH_TOKEN") == (expected, "token")


def test_auth_off_sets_no_token() -> None:
    c = container(find(render({"auth": {"enabled": False}}), "Deployment", SCORING), "scoring")
    assert "MATCHMAKING_SERVE_AUTH_TOKEN" not in env_of(c)


def test_hpa_and_pdb_target_the_scoring_pods(docs: list[Manifest], values: dict[str, Any]) -> None:
    dep = find(docs, "Deployment", SCORING)
    hpa = find(docs, "HorizontalPodAutoscaler", SCORING)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": SCORING,
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    pdb = find(docs, "PodDisruptionBudget", SCORING)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be possible"


def test_without_autoscaling_the_deployment_sets_replicas() -> None:
    docs = render({"autoscaling": {"enabled": False}, "replicaCount": 3})
    assert find(docs, "Deployment", SCORING)["spec"]["replicas"] == 3
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)


# -- MLflow tracking server -------------------------------------------------------------------


def test_tracking_server(docs: list[Manifest], values: dict[str, Any]) -> None:
    dep = find(docs, "Deployment", MLFLOW)
    c = container(dep, "mlflow")
    assert c["command"] == ["mlflow", "server"]
    assert "--serve-artifacts" in c["args"]
    assert secret_ref(c, "MLFLOW_BACKEND_STORE_URI") == ("matchmaking-mlflow-db", "uri")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    art = values.get("mlflow", {}).get("artifacts", {}).get("type", "pvc")
    if art == "pvc":
        assert "--artifacts-destination=/mlartifacts" in c["args"]
        pvc = find(docs, "PersistentVolumeClaim", f"{MLFLOW}-artifacts")
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert {
            "name": "artifacts",
            "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]},
        } in volumes
        assert dep["spec"]["strategy"] == {"type": "Recreate"}
    else:
        s3 = values["mlflow"]["artifacts"]["s3"]
        assert f"--artifacts-destination={s3['destination']}" in c["args"]
        assert not any(d["kind"] == "PersistentVolumeClaim" for d in docs)
        assert secret_ref(c, "AWS_ACCESS_KEY_ID")[0] == s3["existingSecret"]
        assert secret_ref(c, "AWS_SECRET_ACCESS_KEY")[0] == s3["existingSecret"]
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_tracking_server_basic_auth(production_values: dict[str, Any]) -> None:
    docs = render(production_values)
    dep = find(docs, "Deployment", MLFLOW)
    c = container(dep, "mlflow")
    assert "--app-name=basic-auth" in c["args"]
    path = env_of(c)["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["secret"]["secretName"] == production_values["mlflow"]["auth"]["existingSecret"]
    scoring = container(find(docs, "Deployment", SCORING), "scoring")
    creds = production_values["trackingCredentials"]["existingSecret"]
    assert secret_ref(scoring, "MLFLOW_TRACKING_USERNAME") == (creds, "username")
    assert secret_ref(scoring, "MLFLOW_TRACKING_PASSWORD") == (creds, "password")
    default_env = env_of(container(find(render({}), "Deployment", MLFLOW), "mlflow"))
    assert "MLFLOW_AUTH_CONFIG_PATH" not in default_env


# -- values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,field",
    [
        ({"replicaCount": "three"}, "replicaCount"),
        ({"replicas": 3}, "replicas"),
        ({"config": {"maxModels": "many"}}, "maxModels"),
        ({"mlflow": {"artifacts": {"type": "gcs"}}}, "type"),
        ({"updateStrategy": {"maxUnavailable": 1}}, "maxUnavailable"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
    ],
)
def test_schema_rejects_bad_values(tmp_path: Path, override: dict[str, Any], field: str) -> None:
    bad_file = tmp_path / "bad-values.yaml"
    bad_file.write_text(yaml.safe_dump(override))
    bad = load_values(bad_file)
    with pytest.raises(helm.HelmValuesError, match=field):
        render(bad)
    report = helm.lint(CHART, bad, strict=True, namespace=NAMESPACE)
    assert report["errors"] and any(field in e for e in report["errors"]), report


def test_every_value_is_in_the_schema_with_a_description() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    for path in (CHART / "values.yaml", PRODUCTION):
        assert list(walk_schema(load_values(path), schema)) == [], path


def test_notes_explain_how_to_reach_the_service() -> None:
    notes = render_files({})[f"{CHART.name}/templates/NOTES.txt"]
    assert f"port-forward svc/{SCORING}" in notes and "/readyz" in notes


# -- Airflow example values -------------------------------------------------------------------


def test_airflow_example_values() -> None:
    values = load_values(AIRFLOW_VALUES)
    assert values["executor"] in {"CeleryExecutor", "KubernetesExecutor"}
    git_sync = values["dags"]["gitSync"]
    assert git_sync["enabled"] is True and git_sync["subPath"] == "dags"
    assert values["images"]["airflow"]["repository"].endswith("/pipeline")
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{MLFLOW}.")
    mounts = {m["mountPath"] for m in values["volumeMounts"]}
    assert env["MATCHMAKING_DATA_DIR"] in mounts
    # The DAGs' configuration it ships is valid and keeps the lake on the shared volume.
    config_path = Path(env["MATCHMAKING_PIPELINE_CONFIG"])
    assert str(config_path.parent) in mounts
    config_map = values["extraConfigMaps"]["matchmaking-pipeline-config"]
    files = yaml.safe_load(config_map["data"])
    cfg = PipelineConfig.model_validate(yaml.safe_load(files[config_path.name]))
    assert cfg.data_dir() == Path(env["MATCHMAKING_DATA_DIR"])


def _example_pipeline_config(values: dict[str, Any]) -> PipelineConfig:
    env = {e["name"]: e["value"] for e in values["env"]}
    config_path = Path(env["MATCHMAKING_PIPELINE_CONFIG"])
    files = yaml.safe_load(values["extraConfigMaps"]["matchmaking-pipeline-config"]["data"])
    return PipelineConfig.model_validate(yaml.safe_load(files[config_path.name]))


def _memory_gi(quantity: str) -> float:
    assert quantity.endswith("Gi"), quantity
    return float(quantity[:-2])


def test_airflow_kubernetes_example_gives_each_queue_a_valid_pod_template() -> None:
    values = load_values(AIRFLOW_VALUES)
    assert values["executor"] == "KubernetesExecutor"
    cfg = _example_pipeline_config(values)
    assert set(cfg.cities_by_queue()) == {"default", "heavy"}
    templates = yaml.safe_load(values["extraConfigMaps"]["matchmaking-pod-templates"]["data"])
    mounts = {m["name"]: m["mountPath"] for m in values["volumeMounts"]}
    default = values["workers"]["resources"]
    for queue in set(cfg.cities_by_queue()) - {cfg.default_queue}:
        path = Path(cfg.executor_config(queue)["pod_template_file"])
        assert str(path.parent) == mounts["pod-templates"]
        pod = yaml.safe_load(templates[path.name])
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
        limits, requests = base["resources"]["limits"], base["resources"]["requests"]
        assert _memory_gi(limits["memory"]) > _memory_gi(default["limits"]["memory"])
        assert _memory_gi(requests["memory"]) > _memory_gi(default["requests"]["memory"])
        # The pod sees what every task pod sees: the lake, the config, the tracking server.
        env = {e["name"]: e["value"] for e in base["env"]}
        shared = {e["name"]: e["value"] for e in values["env"]}
        assert {k: shared[k] for k in env if k in shared} == {
            k: env[k] for k in ("MLFLOW_TRACKING_URI", "MATCHMAKING_DATA_DIR",
                                "MATCHMAKING_PIPELINE_CONFIG", "MATCHMAKING_MODEL_NAME_PREFIX")
        }  # fmt: skip
        assert {m["mountPath"] for m in base["volumeMounts"]} == {
            mounts["lake"],
            mounts["pipeline-config"],
        }


def test_airflow_celery_example_runs_a_worker_set_per_queue() -> None:
    values = merge(load_values(AIRFLOW_VALUES), load_values(AIRFLOW_CELERY_VALUES))
    assert values["executor"] == "CeleryExecutor"
    assert values["redis"]["enabled"] is False and values["data"]["brokerUrlSecretName"]
    celery = values["workers"]["celery"]
    listening = {celery["queue"]: celery} if celery["enableDefault"] else {}
    listening |= {s["queue"]: s for s in celery["sets"]}
    cfg = _example_pipeline_config(values)
    # Every queue the DAGs route to has workers listening, with resources of their own.
    assert set(cfg.cities_by_queue()) <= set(listening)
    assert listening["heavy"]["replicas"] >= 1
    heavy, default = listening["heavy"]["resources"], listening[cfg.default_queue]["resources"]
    assert _memory_gi(heavy["limits"]["memory"]) > _memory_gi(default["limits"]["memory"])
    assert json.loads(values["config"]["celery"]["extra_celery_config"]) == {
        "result_extended": True
    }


# -- markets ----------------------------------------------------------------------------------

MANILA = ROOT / "tests" / "markets" / "manila.yaml"


def test_markets_file_is_mounted_and_named_by_the_env(tmp_path: Path) -> None:
    """`markets` values become a mounted markets file the service loads as MATCHMAKING_MARKETS."""
    from matchmaking.markets import load_catalogue

    manila = load_values(MANILA)
    docs = render({"markets": manila})
    dep = find(docs, "Deployment", SCORING)
    path = find(docs, "ConfigMap", SCORING)["data"]["MATCHMAKING_MARKETS"]
    mounts = {m["name"]: m for m in container(dep, "scoring")["volumeMounts"]}
    assert mounts["markets"]["readOnly"] is True
    assert path == f"{mounts['markets']['mountPath']}/markets.yaml"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    markets_map = find(docs, "ConfigMap", volumes["markets"]["configMap"]["name"])
    rendered = tmp_path / "markets.yaml"
    rendered.write_text(markets_map["data"]["markets.yaml"])
    manila_market = load_catalogue([rendered]).get("manila")
    assert (manila_market.currency, manila_market.tz) == ("PHP", "Asia/Manila")
    for manifest in docs:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)

    def checksum(vals: dict[str, Any]) -> str:
        annotations = find(render(vals), "Deployment", SCORING)["spec"]["template"]["metadata"]
        return str(annotations["annotations"]["checksum/markets"])

    moved = merge({"markets": manila}, {})
    moved["markets"]["markets"][0]["radius_km"] = 25.0
    assert checksum({"markets": manila}) != checksum(moved), "a markets change rolls the pods"


def test_without_markets_nothing_is_mounted(docs: list[Manifest]) -> None:
    assert "MATCHMAKING_MARKETS" not in find(docs, "ConfigMap", SCORING)["data"]
    mounts = container(find(docs, "Deployment", SCORING), "scoring")["volumeMounts"]
    assert "markets" not in {m["name"] for m in mounts}
    assert not [d for d in docs if d["metadata"]["name"].endswith("-markets")]


def test_schema_rejects_a_bad_market_country(tmp_path: Path) -> None:
    bad = {"markets": {"countries": {"Philippines": {"currency": "PHP", "time_zone": "x"}}}}
    with pytest.raises(helm.HelmValuesError, match=r"Philippines|countries"):
        render(bad)


# -- scoring pools (shards) -------------------------------------------------------------------

SHARDS = CHART / "values-shards.yaml"


@pytest.fixture(scope="module")
def shard_values(production_values: dict[str, Any]) -> dict[str, Any]:
    """values-production.yaml then values-shards.yaml, as the sharded deployment applies them."""
    return merge(production_values, load_values(SHARDS))


@pytest.fixture(scope="module")
def shard_docs(shard_values: dict[str, Any]) -> list[Manifest]:
    return render(shard_values)


def pool_settings(
    docs: list[Manifest], name: str, monkeypatch: pytest.MonkeyPatch
) -> ServeSettings:
    """The settings a pool's service reads from its ConfigMap (validated as at startup)."""
    for key, value in find(docs, "ConfigMap", name)["data"].items():
        monkeypatch.setenv(key, value)
    return ServeSettings()


def test_shard_values_lint_and_validate(
    shard_values: dict[str, Any], shard_docs: list[Manifest]
) -> None:
    report = helm.lint(
        CHART, shard_values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    for doc in shard_docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert (
        list(
            walk_schema(load_values(SHARDS), json.loads((CHART / "values.schema.json").read_text()))
        )
        == []
    )


def test_each_pool_is_its_own_deployment_sized_to_its_cities(
    shard_values: dict[str, Any], shard_docs: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = shard_values["shards"]
    owners: dict[str, str] = {}
    for shard in shards:
        name = f"{SCORING}-{shard['name']}"
        for kind in (
            "Deployment",
            "Service",
            "ConfigMap",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
        ):
            find(shard_docs, kind, name)
        with monkeypatch.context() as m:
            settings = pool_settings(shard_docs, name, m)
        assert settings.shard == shard["name"]
        assert settings.shards == {s["name"]: s["cities"] for s in shards}
        hot = shard.get("hotCities") or [c for c in shard["cities"] if c != "*"]
        assert settings.hot_cities == hot
        assert settings.max_models >= len(hot), "the pool's cache must hold its hot cities"
        if "*" in shard["cities"]:
            assert settings.max_models == shard["maxModels"]
        else:
            assert settings.max_models == len(shard["cities"])
        for city in shard["cities"]:
            owners[city] = name
        # The pool's Service selects its own pods and no other pool's.
        svc = find(shard_docs, "Service", name)["spec"]["selector"]
        for other in shards:
            labels = find(shard_docs, "Deployment", f"{SCORING}-{other['name']}")["spec"][
                "template"
            ]["metadata"]["labels"]
            assert (svc.items() <= labels.items()) == (other is shard), (
                shard["name"],
                other["name"],
            )
        hpa = find(shard_docs, "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["minReplicas"] == shard.get(
            "minReplicas", shard_values["autoscaling"]["minReplicas"]
        )
    assert not [
        d for d in shard_docs if d["metadata"]["name"] == SCORING and d["kind"] == "Deployment"
    ]


def test_the_ingress_routes_each_city_to_its_pool(
    shard_values: dict[str, Any], shard_docs: list[Manifest]
) -> None:
    ingress = find(shard_docs, "Ingress", SCORING)
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == shard_values["ingress"]["host"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    services = {d["metadata"]["name"] for d in shard_docs if d["kind"] == "Service"}
    for shard in shard_values["shards"]:
        for city in shard["cities"]:
            if city != "*":
                assert routes[f"/v1/cities/{city}/"] == f"{SCORING}-{shard['name']}"
    assert routes["/"] == f"{SCORING}-rest", "the body-only route goes to the catch-all pool"
    assert set(routes.values()) <= services
    assert all(p["pathType"] == "Prefix" for p in rule["http"]["paths"])


@pytest.mark.parametrize(
    "values,message",
    [
        (
            {"shards": [{"name": "a", "cities": ["jakarta", "bandung"], "maxModels": 1}]},
            r"shards\[a\]\.maxModels is 1 but the pool has 2 hot cities",
        ),
        (
            {"config": {"hotCities": ["jakarta", "bangkok", "hanoi"], "maxModels": 2}},
            r"config\.maxModels is 2 but config\.hotCities names 3 cities",
        ),
    ],
)
def test_a_cache_smaller_than_the_hot_set_fails_the_render(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


def test_production_values_hold_their_hot_set(production_values: dict[str, Any]) -> None:
    config = production_values["config"]
    assert config["maxModels"] >= len(config["hotCities"])
    from matchmaking.markets import catalogue

    assert config["maxModels"] >= len(catalogue()), "round-robin over the catalogue stays warm"

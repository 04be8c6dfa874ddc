"""Policies changed through the admin API: applied whole or not at all, versioned, rolled back, kept."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import RunningGateway, openai_deployment, split_config

Gateway = Callable[..., RunningGateway]
FRONTIER_FIRST = (
    "routes:\n  frontier: {deployments: [big]}\n  local: {deployments: [small]}\ndefault_route: frontier\n"
)
LOCAL_FIRST = FRONTIER_FIRST.replace("default_route: frontier", "default_route: local")


def files(tmp_path: Path, upstreams: Callable[..., FakeOpenAIUpstream]) -> dict[str, Any]:
    spec = {"deployments": {"big": openai_deployment(upstreams()), "small": openai_deployment(upstreams())}}
    config, policy = tmp_path / "deployments.yaml", tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(split_config(spec)[0]))
    policy.write_text(FRONTIER_FIRST)
    return {"config": config, "policy": policy, "state_dir": tmp_path / "state"}


def route_of(gw: RunningGateway) -> str:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body).headers["x-gateway-route"]


def test_apply_version_roll_back_and_keep_across_a_restart(
    tmp_path: Path, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    setup = files(tmp_path, upstreams)
    gw = gateway(**setup)
    admin = f"{gw.url}/admin/policies/policy"
    assert route_of(gw) == "frontier"

    applied = httpx.put(admin, content=LOCAL_FIRST)
    assert applied.json() == {"name": "policy", "version": 2}
    assert route_of(gw) == "local"
    assert setup["policy"].read_text() == LOCAL_FIRST  # the file says what runs

    broken = httpx.put(admin, content="routes: {local: {deployments: [small]}}\ndefault_route: nowhere\n")
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert (
        error["code"] == "invalid_policy"
        and "policy.yaml:2: default_route: unknown route 'nowhere'" in error["message"]
    )
    bomb = httpx.put(admin, content="a: &a [x, x]\nb: [*a, *a]\n")
    assert bomb.status_code == 400 and "anchors and aliases" in bomb.json()["error"]["message"]
    assert route_of(gw) == "local" and setup["policy"].read_text() == LOCAL_FIRST

    versions = httpx.get(f"{admin}/versions").json()
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert "-default_route: frontier\n+default_route: local" in versions["versions"][1]["diff"]
    assert versions["versions"][0]["author"] == "file"

    rolled = httpx.post(f"{admin}/rollback/1").json()
    assert rolled == {"name": "policy", "version": 3, "rolled_back_to": 1}
    assert route_of(gw) == "frontier"
    assert httpx.post(f"{admin}/rollback/9").status_code == 404
    assert httpx.put(f"{gw.url}/admin/policies/other", content=LOCAL_FIRST).status_code == 404

    again = gateway(**setup)  # a restart on the same files and state
    kept = httpx.get(f"{again.url}/admin/policies/policy/versions").json()
    assert [v["version"] for v in kept["versions"]] == [1, 2, 3] and kept["live_version"] == 3
    assert route_of(again) == "frontier"


def test_only_admin_keys_change_policies(
    tmp_path: Path, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    setup = files(tmp_path, upstreams)
    guarded = gateway(**setup, api_keys="sk-client", admin_keys="sk-admin")
    admin = f"{guarded.url}/admin/policies/policy"
    assert httpx.put(admin, content=LOCAL_FIRST).status_code == 401
    assert (
        httpx.put(admin, content=LOCAL_FIRST, headers={"authorization": "Bearer sk-wrong"}).status_code == 401
    )
    refused = httpx.put(admin, content=LOCAL_FIRST, headers={"authorization": "Bearer sk-client"})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert route_of_with(guarded, "sk-client") == "frontier"  # nothing changed
    as_admin = {"authorization": "Bearer sk-admin"}
    assert httpx.put(admin, content=LOCAL_FIRST, headers=as_admin).status_code == 200
    latest = httpx.get(f"{admin}/versions", headers=as_admin).json()["versions"][-1]
    assert latest["author"].startswith("key env-")


def route_of_with(gw: RunningGateway, key: str) -> str:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers).headers[
        "x-gateway-route"
    ]


def configmap_volume(directory: Path, files: dict[str, str], generation: str) -> None:
    """Lay `files` out as the kubelet mounts a ConfigMap: each name a symlink through `..data` to a
    timestamped directory; an update writes a new directory and swaps `..data` in one rename."""
    data = directory / f"..{generation}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    (directory / "..data_tmp").symlink_to(data.name)
    (directory / "..data_tmp").replace(directory / "..data")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """No file can be created in `directory`, even by root (as on a ConfigMap's read-only mount)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        undo = ["chmod", "755", str(directory)]
    else:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        undo = ["chattr", "-i", str(directory)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_policy_mounted_from_a_configmap_reloads_and_refuses_api_edits_clearly(
    tmp_path: Path, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    setup = files(tmp_path, upstreams)
    mount = tmp_path / "policies"
    mount.mkdir()
    configmap_volume(mount, {"policy.yaml": FRONTIER_FIRST}, "2026_11_26_1")
    gw = gateway(**{**setup, "policy": mount / "policy.yaml"}, policy_reload_interval=0.2)
    admin = f"{gw.url}/admin/policies/policy"
    assert route_of(gw) == "frontier"

    with read_only(mount):
        refused = httpx.put(admin, content=LOCAL_FIRST)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "policy_read_only" and "ConfigMap" in error["message"]
    assert route_of(gw) == "frontier"
    assert [v["version"] for v in httpx.get(f"{admin}/versions").json()["versions"]] == [1]
    assert sorted(path.name for path in mount.iterdir()) == ["..2026_11_26_1", "..data", "policy.yaml"]

    configmap_volume(mount, {"policy.yaml": LOCAL_FIRST}, "2026_11_26_2")  # `helm upgrade`
    deadline = time.monotonic() + 5
    while route_of(gw) != "local":
        assert time.monotonic() < deadline, "the swapped ConfigMap was not picked up"
        time.sleep(0.1)
    latest = httpx.get(f"{admin}/versions").json()["versions"][-1]
    assert (latest["version"], latest["author"]) == (2, "file")

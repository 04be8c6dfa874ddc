from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, GatewayConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_the_shipped_configuration_is_valid() -> None:
    config = load_config(REPO / "policies" / "deployments.yaml")
    assert set(config.deployments) == {"gpt-4o", "claude-sonnet", "smollm2", "minilm"}
    assert config.deployments["smollm2"].provider == "managed-local"
    assert config.deployments["minilm"].provider == "local-embedder"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("deployments: {a: {provider: openai, model: m, api_key: sk-1}}\n",
         "deployments.a.api_key: Extra inputs are not permitted"),
        ("deployments: {a: {provider: magic, model: m}}\n", "deployments.a.provider"),
        ("deployments: {a: {provider: openai}}\n", "'model' is required"),
        ("deployments: {a: {provider: openai, model: m}}\nroutes: {r: [a]}\n",
         "routes: Extra inputs are not permitted"),
        ("deployments: [\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_invalid_configuration_is_reported_with_where(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert complaint in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(REPO / "policies" / "deployments.yaml")]) == 0
    bad = write(tmp_path, "deployments: {a: {provider: openai}}\n")
    assert main(["check-config", str(bad)]) == 1
    assert "'model' is required" in capsys.readouterr().err


def test_an_open_gateway_refuses_to_listen_beyond_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_KEYS", raising=False)
    config = str(REPO / "policies" / "deployments.yaml")
    assert main(["serve", "--config", config, "--host", "0.0.0.0", "--port", "1"]) == 1
    assert "without API keys" in capsys.readouterr().err


def test_only_an_openai_compatible_deployment_may_say_it_has_a_batch_api() -> None:
    with pytest.raises(ValueError, match="batch_api needs an OpenAI-compatible upstream"):
        GatewayConfig.model_validate(
            {
                "deployments": {
                    "claude": {"provider": "anthropic", "model": "claude-haiku-4-5", "batch_api": True}
                }
            }
        )

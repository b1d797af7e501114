"""The operator's one settings object, read from the environment."""

import pytest

from saga_operator.config import Settings


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGA_KUBE_PROXY_FROM_ENV", "SAGA_NAMESPACE", "SAGA_TOPIC_PARTITIONS", "SAGA_PARTICIPANTS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.kube_proxy_from_env is False
    assert settings.namespace == ""
    assert settings.topic_partitions == 6
    assert settings.participants == ()


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("1", True), ("Yes", True), ("false", False), ("0", False)]
)
def test_proxy_from_env_switch(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("SAGA_KUBE_PROXY_FROM_ENV", raw)
    assert Settings.from_env().kube_proxy_from_env is expected


def test_a_misspelt_switch_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_KUBE_PROXY_FROM_ENV", "ture")
    with pytest.raises(ValueError, match="SAGA_KUBE_PROXY_FROM_ENV='ture'"):
        Settings.from_env()


def test_participants_and_numbers_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_PARTICIPANTS", "videos,users,,agents")
    monkeypatch.setenv("SAGA_TOPIC_PARTITIONS", "12")
    settings = Settings.from_env()
    assert settings.participants == ("videos", "users", "agents")
    assert settings.topic_partitions == 12

from __future__ import annotations

from pathlib import Path

import pytest

from codegen_ray.config import Limits, Settings
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.session import effective_limits


def test_codegen_mcp_names_are_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "6000")
    monkeypatch.setenv("MAX_SESSIONS", "9")
    monkeypatch.setenv("WORKER_ID", "w1")
    monkeypatch.setenv("BASE_WORKSPACE", "/srv/ws")
    monkeypatch.setenv("COORDINATOR_ADDR", "head:6379")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.grpc_port == 6000
    assert settings.max_sessions == 9
    assert settings.node_worker_id() == "w1"
    assert settings.base_workspace == Path("/srv/ws")
    assert settings.coordinator_addr == "head:6379"
    assert settings.log_level == "debug"


def test_nested_settings_use_prefix_and_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEGEN_LIMITS__TIMEOUT_SECONDS", "7.5")
    monkeypatch.setenv("CODEGEN_SESSION__IDLE_TIMEOUT_SECONDS", "60")
    settings = Settings()
    assert settings.limits.timeout_seconds == 7.5
    assert settings.session.idle_timeout_seconds == 60


def test_explicit_values_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "6000")
    assert Settings(grpc_port=7000).grpc_port == 7000


def test_bad_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_SESSIONS", "0")
    with pytest.raises(ValueError, match="max_sessions|MAX_SESSIONS"):
        Settings()


def test_session_limits_may_tighten_but_never_loosen() -> None:
    ceiling = Limits()
    assert effective_limits(ceiling, {"timeout_seconds": 5}).timeout_seconds == 5
    with pytest.raises(CodegenError) as err:
        effective_limits(ceiling, {"timeout_seconds": ceiling.max_timeout_seconds + 1})
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(CodegenError, match="unknown limits"):
        effective_limits(ceiling, {"cpu": 1})
    with pytest.raises(CodegenError, match="bad limits"):
        effective_limits(ceiling, {"max_file_bytes": -1})

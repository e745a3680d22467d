"""The one settings model. Built once at the edge (the CLI) and passed down as typed parts.

Names kept from CodeGen-MCP are read without a prefix (``GRPC_PORT``, ``LOG_LEVEL``,
``WORKER_ID``, ``MAX_SESSIONS``, ``BASE_WORKSPACE``, ``COORDINATOR_ADDR``); everything
else is ``CODEGEN_<NAME>``, nested parts as ``CODEGEN_<PART>__<NAME>``
(e.g. ``CODEGEN_LIMITS__TIMEOUT_SECONDS=60``).
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB


def default_state_dir() -> Path:
    """Root keeps state where session uids can reach it (not under a 0700 /root)."""
    if os.geteuid() == 0:
        return Path("/var/lib/codegen-ray")
    return Path.home() / ".codegen-ray"


def _legacy(name: str) -> AliasChoices:
    return AliasChoices(name, f"CODEGEN_{name}", name.lower())


class Limits(BaseModel):
    """Per-call resource limits; a session may tighten them at creation."""

    model_config = ConfigDict(frozen=True)

    timeout_seconds: float = Field(30.0, gt=0, description="Default wall-clock limit of a run.")
    max_timeout_seconds: float = Field(3600.0, gt=0, description="Largest timeout a call may ask.")
    max_output_bytes: int = Field(1 * MiB, gt=0, description="Kept per stream; the rest is cut.")
    max_file_bytes: int = Field(64 * MiB, gt=0, description="Largest file a run or fs.write makes.")
    max_read_bytes: int = Field(16 * MiB, gt=0, description="Largest fs.read answer.")
    cpu_seconds: int = Field(600, gt=0, description="RLIMIT_CPU of a run.")
    max_processes: int = Field(512, gt=0, description="RLIMIT_NPROC of a run.")
    max_open_files: int = Field(1024, gt=0, description="RLIMIT_NOFILE of a run.")
    max_memory_bytes: int = Field(
        16 * GiB, gt=0, description="RLIMIT_AS backstop; generous because threads reserve much."
    )
    kill_grace_seconds: float = Field(2.0, ge=0, description="TERM to KILL escalation delay.")


class CheckpointPolicy(StrEnum):
    MUTATION = "mutation"  # before acknowledging any mutating call
    INTERVAL = "interval"
    NEVER = "never"


class SessionSettings(BaseModel):
    idle_timeout_seconds: float = Field(1800.0, gt=0, description="Idle sessions are destroyed.")
    hibernate_after_seconds: float = Field(600.0, gt=0, description="Idle sessions sleep.")
    reap_interval_seconds: float = Field(15.0, gt=0)
    create_timeout_seconds: float = Field(60.0, gt=0)
    warm_pool_size: int = Field(2, ge=0, description="Started sessions kept ready per node.")


class CheckpointSettings(BaseModel):
    store_uri: str = Field("", description="file:///path or s3://bucket/prefix; '' = under home.")
    policy: CheckpointPolicy = CheckpointPolicy.MUTATION
    interval_seconds: float = Field(60.0, gt=0)
    keep_last: int = Field(5, ge=1)
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""


class IsolationSettings(BaseModel):
    tier: Literal["auto", "rlimits", "uid"] = Field(
        "auto", description="auto: the strongest that works here; uid fails start if it cannot."
    )
    uid_base: int = Field(200000, gt=0, description="First uid/gid handed to sessions.")
    uid_count: int = Field(65536, ge=1, description="How many uids sessions may use.")
    uid_lock_dir: Path = Field(
        Path("/run/codegen-ray/uids"), description="Per-uid lock files of the live sessions."
    )


class RaySettings(BaseModel):
    namespace: str = "codegen"
    num_cpus: int | None = None
    object_store_memory: int | None = Field(200 * MiB, description="Embedded mode only.")
    include_dashboard: bool = True
    dashboard_port: int = 8265
    health_check_period_ms: int = 1000
    health_check_failure_threshold: int = 3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CODEGEN_",
        env_nested_delimiter="__",
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    grpc_port: int = Field(50051, ge=0, le=65535, validation_alias=_legacy("GRPC_PORT"))
    log_level: str = Field("info", validation_alias=_legacy("LOG_LEVEL"))
    worker_id: str = Field("", validation_alias=_legacy("WORKER_ID"))
    max_sessions: int = Field(5, ge=1, validation_alias=_legacy("MAX_SESSIONS"))
    # Default: <state_dir>/workspaces (filled in below, once state_dir is known).
    base_workspace: Path = Field(Path(), validation_alias=_legacy("BASE_WORKSPACE"))
    coordinator_addr: str = Field("", validation_alias=_legacy("COORDINATOR_ADDR"))

    host: str = Field("127.0.0.1", description="Interface the gateway listens on.")
    http_port: int = Field(8080, ge=0, le=65535)
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir(), description="Caches and default store."
    )
    uv_cache_dir: Path | None = None

    limits: Limits = Limits()
    session: SessionSettings = SessionSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    isolation: IsolationSettings = IsolationSettings()
    ray: RaySettings = RaySettings()

    @model_validator(mode="after")
    def _default_base_workspace(self) -> Settings:
        if self.base_workspace == Path():
            self.base_workspace = self.state_dir / "workspaces"
        return self

    def node_worker_id(self) -> str:
        return self.worker_id or socket.gethostname()

    def resolved_uv_cache_dir(self) -> Path:
        return self.uv_cache_dir or self.state_dir / "uv-cache"

    def resolved_store_uri(self) -> str:
        return self.checkpoint.store_uri or (self.state_dir / "checkpoints").as_uri()

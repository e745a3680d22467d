"""The tool registry: one pydantic model per tool's arguments and one per its result.

The JSON Schemas that gRPC ``ListTools`` and MCP ``tools/list`` publish are generated
from these models, so the fronts can never disagree. Descriptions are read by LLMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from codegen_ray.config import Limits
from codegen_ray.errors import CodegenError, ErrorCode, invalid
from codegen_ray.kernel import KernelExecuteResult
from codegen_ray.kernel_tools import (
    EXECUTE_DESCRIPTION,
    INTERRUPT_DESCRIPTION,
    RESTART_DESCRIPTION,
    KernelExecuteArgs,
    KernelInterruptArgs,
    KernelInterruptResult,
    KernelRestartArgs,
    KernelRestartResult,
)
from codegen_ray.process import RunResult
from codegen_ray.venv import InstallResult, PackageInfo
from codegen_ray.workspace import FileEntry

Encoding = Literal["utf-8", "base64"]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EchoArgs(Args):
    message: str = Field(description="Text to send back unchanged.")


class EchoResult(BaseModel):
    message: str


class FsReadArgs(Args):
    path: str = Field(description="File path relative to the workspace root.")
    offset: int = Field(0, ge=0, description="Byte offset to start reading at.")
    length: int | None = Field(None, ge=0, description="Bytes to read; default: to the end.")
    encoding: Encoding = Field(
        "utf-8", description="utf-8 for text; base64 for binary files such as images."
    )


class FsReadResult(BaseModel):
    contents: str
    size_bytes: int = Field(description="Size of the whole file.")
    encoding: Encoding


class FsWriteArgs(Args):
    path: str = Field(description="File path relative to the workspace root.")
    contents: str = Field(description="Text, or base64 data when encoding is base64.")
    encoding: Encoding = Field("utf-8", description="How contents is encoded.")
    create_dirs: bool = Field(True, description="Create missing parent directories.")
    append: bool = Field(False, description="Append instead of replacing the file.")


class FsWriteResult(BaseModel):
    path: str
    bytes_written: int


class FsListArgs(Args):
    path: str = Field("", description="Directory relative to the workspace root; '' is the root.")
    recursive: bool = Field(False, description="Include everything below, not just children.")
    pattern: str | None = Field(None, description="Glob on the relative path, e.g. '*.py'.")


class FsListResult(BaseModel):
    files: list[FileEntry]
    total_count: int


class FsDeleteArgs(Args):
    path: str = Field(description="File or directory relative to the workspace root.")
    recursive: bool = Field(False, description="Required to delete a non-empty directory.")


class FsDeleteResult(BaseModel):
    deleted: bool


class RunPythonArgs(Args):
    code: str | None = Field(None, description="Python source to run.")
    file: str | None = Field(None, description="Workspace path of a .py file to run.")
    module: str | None = Field(None, description="Module to run as with python -m.")
    args: list[str] = Field(default_factory=list, description="Command-line arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    stdin: str | None = Field(None, description="Text fed to standard input.")
    timeout_seconds: float | None = Field(
        None, gt=0, description="Wall-clock limit; the process is killed when it passes."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RunPythonArgs:
        given = [name for name in ("code", "file", "module") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of code, file or module (got {', '.join(given) or 'none'})"
            )
        return self


MAX_CHANGED_FILES = 100


class RunPythonResult(RunResult):
    changed_files: list[str] = Field(
        default_factory=list,
        description="Workspace files the run created or changed, sorted; each is also an "
        f"artifact id for artifact.get. At most {MAX_CHANGED_FILES}; hidden directories "
        "(.cache, ...) are not scanned, nor workspaces of over 10,000 entries.",
    )


class PkgInstallArgs(Args):
    packages: list[str] = Field(
        description="Requirement specs, e.g. ['requests', 'numpy==2.1.0'] or 'requests numpy'."
    )
    upgrade: bool = Field(False, description="Upgrade packages that are already installed.")
    no_deps: bool = Field(False, description="Do not install dependencies.")
    index_url: str | None = Field(None, description="Package index URL instead of the default.")

    @field_validator("packages", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    @field_validator("packages")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one package")
        return value


class PkgListArgs(Args):
    pass


class PkgListResult(BaseModel):
    packages: list[PackageInfo]


class TaskArgs(Args):
    task_id: str = Field(description="Id returned by an asynchronous tool call.")


TaskState = Literal["pending", "running", "completed", "failed", "cancelled"]


class TaskStatus(BaseModel):
    task_id: str
    state: TaskState
    tool: str
    session_id: str = ""
    created_ms: int
    finished_ms: int = 0
    error: str = ""


class TaskCancelResult(BaseModel):
    task_id: str
    cancelled: bool
    state: TaskState


class TaskResult(BaseModel):
    """The finished task's own result, as its tool returns it."""

    model_config = ConfigDict(extra="allow")


@dataclass
class ToolOutcome:
    """What a tool call returns to a front: a result, or a task id for an asynchronous call."""

    result: dict[str, Any] | None = None
    task_id: str = ""
    is_error: bool = False


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[BaseModel]
    result: type[BaseModel]
    requires_session: bool = True
    mutating: bool = False
    # A result with a non-zero exit_code is reported as a tool failure (isError).
    fails_on_exit_code: bool = False

    def is_failure(self, result: dict[str, Any]) -> bool:
        return self.fails_on_exit_code and result.get("exit_code", 0) != 0

    @property
    def read_only(self) -> bool:
        return not self.mutating

    def input_schema(self) -> dict[str, Any]:
        return self.args.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        return self.result.model_json_schema()


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "echo",
            "Return the message unchanged (connectivity check).",
            EchoArgs,
            EchoResult,
            requires_session=False,
        ),
        ToolSpec(
            "fs.read", "Read a workspace file as UTF-8 text or base64.", FsReadArgs, FsReadResult
        ),
        ToolSpec(
            "fs.write",
            "Create or overwrite a workspace file (or append to it).",
            FsWriteArgs,
            FsWriteResult,
            mutating=True,
        ),
        ToolSpec(
            "fs.list", "List files and directories in the workspace.", FsListArgs, FsListResult
        ),
        ToolSpec(
            "fs.delete",
            "Delete a workspace file or directory.",
            FsDeleteArgs,
            FsDeleteResult,
            mutating=True,
        ),
        ToolSpec(
            "run.python",
            "Run Python (code, a workspace file, or a module) in the session's venv; "
            "returns stdout, stderr and the exit code. The workspace is the cwd.",
            RunPythonArgs,
            RunPythonResult,
            mutating=True,
        ),
        ToolSpec(
            "pkg.install",
            "Install packages from the package index into the session's venv.",
            PkgInstallArgs,
            InstallResult,
            mutating=True,
            fails_on_exit_code=True,
        ),
        ToolSpec(
            "pkg.list",
            "List the packages installed in the session's venv.",
            PkgListArgs,
            PkgListResult,
        ),
        ToolSpec(
            "task.get_status",
            "State of an asynchronous tool call.",
            TaskArgs,
            TaskStatus,
            requires_session=False,
        ),
        ToolSpec(
            "task.get_result",
            "Result of a finished asynchronous tool call.",
            TaskArgs,
            TaskResult,
            requires_session=False,
        ),
        ToolSpec(
            "task.cancel",
            "Cancel an asynchronous tool call; kills its process.",
            TaskArgs,
            TaskCancelResult,
            requires_session=False,
        ),
    )
}


# --- artifacts and session introspection (issue 4) ------------------------------------


ARTIFACT_SCHEME = "artifact://"


def artifact_uri(path: str) -> str:
    """The URI of a workspace file, as run.python's resource links carry it."""
    return ARTIFACT_SCHEME + quote(path, safe="/")


class ArtifactGetArgs(Args):
    artifact_id: str | None = Field(
        None,
        description="Artifact id: a resource link's artifact://<path> URI, or the file's "
        "workspace path.",
    )
    path: str | None = Field(None, description="File path relative to the workspace root.")

    @model_validator(mode="after")
    def _exactly_one_ref(self) -> ArtifactGetArgs:
        if (self.artifact_id is None) == (self.path is None):
            raise ValueError("give exactly one of artifact_id or path")
        return self

    @property
    def workspace_path(self) -> str:
        if self.path is not None:
            return self.path
        ref = str(self.artifact_id)
        if ref.startswith(ARTIFACT_SCHEME):
            return unquote(ref.removeprefix(ARTIFACT_SCHEME))
        return ref


class ArtifactGetResult(BaseModel):
    path: str = Field(description="Workspace path of the file.")
    data: str = Field(description="The file's bytes, base64-encoded.")
    content_type: str = Field(description="MIME type guessed from the file name.")
    size_bytes: int


class SessionInfoArgs(Args):
    pass


class SessionState(StrEnum):
    CREATING = "creating"
    READY = "ready"
    BUSY = "busy"
    IDLE = "idle"
    DESTROYING = "destroying"
    FAILED = "failed"
    HIBERNATED = "hibernated"
    DESTROYED = "destroyed"


class SessionInfo(BaseModel):
    """A session as the gateway reports it (also the result of session.info)."""

    session_id: str
    state: SessionState = Field(description="creating, ready, busy, idle, hibernated, ...")
    node_id: str = ""
    worker_id: str = ""
    created_ms: int = 0
    last_activity_ms: int = 0
    metadata: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    limits: Limits = Limits()
    last_checkpoint_id: str = ""


class SessionCheckpointArgs(Args):
    name: str = Field("", description="Optional label for the checkpoint, e.g. 'before-refactor'.")


class CheckpointSummary(BaseModel):
    checkpoint_id: str = Field(description="Pass to session.restore.")
    session_id: str
    name: str = ""
    created_ms: int
    file_count: int
    total_bytes: int
    packages: list[str] = Field(default_factory=list, description="The venv's package lock.")


class SessionRestoreArgs(Args):
    checkpoint_id: str = Field(description="Id returned by session.checkpoint.")
    new_session: bool = Field(
        False,
        description="Restore into a new session (its id is returned) instead of rolling the "
        "checkpoint's own session back.",
    )


TOOLS.update(
    (spec.name, spec)
    for spec in (
        ToolSpec(
            "artifact.get",
            "Fetch a workspace file by path or artifact id, binary-safe (base64); "
            "images also come back as image content.",
            ArtifactGetArgs,
            ArtifactGetResult,
        ),
        ToolSpec(
            "session.info",
            "State, node, limits and metadata of the session these tools run in.",
            SessionInfoArgs,
            SessionInfo,
        ),
        ToolSpec(
            "session.checkpoint",
            "Save the session's files and installed packages as a checkpoint; kernel "
            "variables are not saved.",
            SessionCheckpointArgs,
            CheckpointSummary,
        ),
        ToolSpec(
            "session.restore",
            "Restore a checkpoint: roll its session back to it, or with new_session=true "
            "start a new session from it (then pass the returned session_id).",
            SessionRestoreArgs,
            SessionInfo,
            requires_session=False,
            mutating=True,
        ),
        ToolSpec(
            "kernel.execute",
            EXECUTE_DESCRIPTION,
            KernelExecuteArgs,
            KernelExecuteResult,
            mutating=True,
        ),
        ToolSpec(
            "kernel.interrupt", INTERRUPT_DESCRIPTION, KernelInterruptArgs, KernelInterruptResult
        ),
        ToolSpec("kernel.restart", RESTART_DESCRIPTION, KernelRestartArgs, KernelRestartResult),
    )
)


def get_tool(name: str) -> ToolSpec:
    try:
        return TOOLS[name]
    except KeyError:
        raise CodegenError(
            ErrorCode.NOT_FOUND, f"unknown tool {name!r}; available: {', '.join(TOOLS)}"
        ) from None


def parse_args(spec: ToolSpec, arguments: dict[str, Any] | None) -> Args:
    """Validate raw JSON arguments into the tool's model; errors read like instructions."""
    try:
        return spec.args.model_validate(arguments or {})
    except ValidationError as exc:
        raise invalid(f"bad arguments for {spec.name}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown argument"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)

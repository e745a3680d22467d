"""Ray failures become CodegenErrors; CodegenErrors become gRPC statuses."""

from __future__ import annotations

import grpc
from ray import exceptions as rex

from codegen_ray.errors import CodegenError, ErrorCode

GRPC_STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

# Every way Ray says "the actor is gone". ActorUnschedulableError is not a RayActorError.
SESSION_LOST = (
    rex.ActorDiedError,
    rex.ActorUnavailableError,
    rex.ActorUnschedulableError,
    rex.RayActorError,
)


def from_ray(exc: BaseException, what: str) -> CodegenError:
    """Translate whatever a Ray call raised into our vocabulary."""
    if isinstance(exc, CodegenError):
        return exc
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause if hasattr(exc, "cause") else None
        if isinstance(cause, CodegenError):
            return cause
        return CodegenError(ErrorCode.INTERNAL, f"{what} failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, SESSION_LOST):
        return CodegenError(ErrorCode.UNAVAILABLE, f"{what}: the session's node was lost", True)
    if isinstance(exc, rex.GetTimeoutError | TimeoutError):
        return CodegenError(ErrorCode.DEADLINE_EXCEEDED, f"{what} timed out", True)
    return CodegenError(ErrorCode.INTERNAL, f"{what} failed: {type(exc).__name__}: {exc}")


def trailing_metadata(error: CodegenError) -> tuple[tuple[str, str], ...]:
    return (
        ("codegen-error-code", error.code.value),
        ("codegen-retriable", str(error.retriable).lower()),
    )


async def abort(context: grpc.aio.ServicerContext, error: CodegenError) -> None:
    """End the RPC with the status that matches the error; never returns."""
    context.set_trailing_metadata(trailing_metadata(error))
    await context.abort(GRPC_STATUS[error.code], error.message)

"""One error vocabulary for every layer: plain classes, actors, gRPC and MCP."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    CANCELLED = "CANCELLED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class CodegenError(Exception):
    """An error an agent can act on: a code, a message for humans, a retriable flag.

    Picklable (the constructor takes exactly what ``args`` holds), so it crosses
    Ray actor boundaries intact.
    """

    def __init__(self, code: ErrorCode | str, message: str, retriable: bool = False) -> None:
        super().__init__(ErrorCode(code), message, retriable)
        self.code = ErrorCode(code)
        self.message = message
        self.retriable = retriable

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code.value, "message": self.message, "retriable": self.retriable}


def invalid(message: str) -> CodegenError:
    return CodegenError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> CodegenError:
    return CodegenError(ErrorCode.NOT_FOUND, message)


def denied(message: str) -> CodegenError:
    return CodegenError(ErrorCode.PERMISSION_DENIED, message)


def exhausted(message: str) -> CodegenError:
    return CodegenError(ErrorCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str, retriable: bool = True) -> CodegenError:
    return CodegenError(ErrorCode.UNAVAILABLE, message, retriable)

"""Arguments and results of the kernel tools, and the calls behind them.

Kept apart from ``tools.py`` so that module can import these without a cycle; the
argument models forbid unknown fields like every other tool's.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from codegen_ray.config import Limits
from codegen_ray.errors import invalid
from codegen_ray.kernel import STATE_LOST, KernelExecuteResult, SessionKernel

EXECUTE_DESCRIPTION = (
    "Run Python in the session's persistent IPython kernel: variables, imports and "
    "definitions stay for the next call. Returns printed output, the value of the last "
    "expression, rich outputs (matplotlib figures as PNG, HTML tables) and any exception. "
    "The workspace is the cwd; packages from pkg.install import directly."
)
INTERRUPT_DESCRIPTION = (
    "Interrupt the code the session's kernel is running (raises KeyboardInterrupt in it); "
    "variables are kept."
)
RESTART_DESCRIPTION = "Restart the session's kernel: all variables and imports are lost."


class KernelExecuteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Python source; IPython syntax (%magics) works.")
    timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Wall-clock limit. Past it the code is interrupted; if it does not "
        "stop, the kernel is restarted and its state lost.",
    )


class KernelInterruptArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KernelInterruptResult(BaseModel):
    interrupted: bool = Field(description="False if no code was running.")
    message: str


class KernelRestartArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KernelRestartResult(BaseModel):
    restarted: bool
    state_lost: bool = Field(description=f"True: {STATE_LOST}.")
    startup_ms: int = Field(description="Time the new kernel took to start.")
    message: str


async def kernel_execute(
    kernel: SessionKernel, args: KernelExecuteArgs, limits: Limits
) -> KernelExecuteResult:
    timeout = args.timeout_seconds or limits.timeout_seconds
    if timeout > limits.max_timeout_seconds:
        raise invalid(
            f"timeout_seconds={timeout} exceeds the limit of {limits.max_timeout_seconds}"
        )
    return await kernel.execute(args.code, timeout)


async def kernel_interrupt(kernel: SessionKernel) -> KernelInterruptResult:
    if await kernel.interrupt():
        return KernelInterruptResult(
            interrupted=True, message="Sent KeyboardInterrupt to the running code."
        )
    return KernelInterruptResult(interrupted=False, message="No code was running.")


async def kernel_restart(kernel: SessionKernel) -> KernelRestartResult:
    startup_ms = await kernel.restart()
    return KernelRestartResult(
        restarted=True,
        state_lost=True,
        startup_ms=startup_ms,
        message=f"The kernel was restarted: {STATE_LOST}.",
    )

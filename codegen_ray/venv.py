"""A session's virtual environment, made and filled by uv.

Every uv call goes through ``ProcessRunner.run`` with an environment built here
(nothing is inherited but the network settings uv needs to reach an index).
Package specs are checked before they reach the command line, so an agent can
name packages but never pass options.

Packages are copied out of the uv cache, not hard-linked: code in the session
can write to its venv, and a hard link would let it alter the cache that every
session on the node shares.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, Field

from codegen_ray.config import GiB, Limits
from codegen_ray.errors import CodegenError, ErrorCode, invalid, not_found

if TYPE_CHECKING:
    from codegen_ray.process import OutputCallback, ProcessRunner, RunResult

INSTALL_TIMEOUT_SECONDS = 600.0
QUERY_TIMEOUT_SECONDS = 60.0
MAX_PACKAGES = 100
MAX_SPEC_CHARS = 300
# Passed through from the host so uv reaches the index the way the host does.
NETWORK_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


class PackageInfo(BaseModel):
    name: str
    version: str


class InstallResult(BaseModel):
    installed: list[PackageInfo] = Field(description="Packages added or changed by this call.")
    failed: list[str] = Field(description="Requested specs that could not be installed.")
    output: str = Field(description="uv's output, for the reason of a failure.")
    exit_code: int


def validate_spec(spec: str) -> str:
    """A PEP 508 requirement from an index (name, extras, versions, markers); canonical form."""
    if not isinstance(spec, str):
        raise invalid(f"package spec must be a string, not {type(spec).__name__}")
    text = spec.strip()
    example = "give a name with an optional version, like 'requests==2.32.3' or 'numpy>=2'"
    if not text:
        raise invalid(f"empty package spec; {example}")
    if text.startswith("-"):
        raise invalid(f"package spec {text!r} starts with '-': options are not accepted; {example}")
    if len(text) > MAX_SPEC_CHARS or any(c in text for c in "\r\n\0"):
        raise invalid(f"package spec {text[:60]!r}... is not a single requirement; {example}")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise invalid(f"{text!r} is not a valid requirement ({e}); {example}") from None
    if req.url:
        raise invalid(f"{text!r} is a direct URL reference, which is not allowed; {example}")
    return str(req)


def _validate_index_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or any(c.isspace() for c in url):
        raise invalid(f"index_url {url!r} must be an http(s) URL, like https://pypi.org/simple")
    return url


def _output(result: RunResult) -> str:
    text = "\n".join(s for s in (result.stdout.strip(), result.stderr.strip()) if s)
    if result.timed_out:
        text += "\nuv was stopped: it ran past its time limit"
    return text


def _named_in(specs: list[str], output: str) -> list[str]:
    """The specs whose package uv's error message names."""
    text = re.sub(r"[-_.]+", "-", output.lower())
    found = []
    for spec in specs:
        name = canonicalize_name(Requirement(spec).name)
        if re.search(rf"(?<![a-z0-9-]){re.escape(name)}(?![a-z0-9-])", text):
            found.append(spec)
    return found


class VenvManager:
    """Creates, fills, lists and rebuilds venvs with uv; one per node, shared by sessions."""

    def __init__(
        self,
        runner: ProcessRunner,
        *,
        cache_dir: Path,
        python: str = sys.executable,
        uv_bin: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if uv_bin is None:
            from uv import find_uv_bin

            uv_bin = find_uv_bin()
        self._runner = runner
        self.cache_dir = Path(cache_dir)
        self.python = python
        self.uv_bin = uv_bin
        if extra_env is None:
            extra_env = {k: v for k in NETWORK_ENV if (v := os.environ.get(k))}
        self.env: dict[str, str] = {
            **extra_env,
            "PATH": f"{Path(uv_bin).parent}:{os.defpath}",
            "HOME": str(Path.home()),
            "UV_CACHE_DIR": str(self.cache_dir),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            "UV_NO_CONFIG": "1",
            "UV_LINK_MODE": "copy",
            "NO_COLOR": "1",
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def create(self, venv_dir: Path) -> None:
        """An empty venv (no pip) at ``venv_dir``; nothing happens if one is there."""
        if _is_venv(venv_dir):
            return
        venv_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = ["venv", "--python", self.python, "--no-project", "--allow-existing", "--quiet"]
        result = await self._uv([*argv, str(venv_dir)], cwd=venv_dir.parent, limits=Limits())
        if result.exit_code != 0 or not _is_venv(venv_dir):
            raise CodegenError(
                ErrorCode.INTERNAL, f"could not create a venv at {venv_dir}: {_output(result)}"
            )

    def remove(self, venv_dir: Path) -> None:
        if not venv_dir.exists() and not venv_dir.is_symlink():
            return
        if venv_dir.is_symlink() or not venv_dir.is_dir():
            raise invalid(f"{venv_dir} is not a directory; refusing to remove it as a venv")
        if not (venv_dir / "pyvenv.cfg").exists() and any(venv_dir.iterdir()):
            raise invalid(f"{venv_dir} has no pyvenv.cfg; refusing to remove a non-venv directory")
        shutil.rmtree(venv_dir)

    # -- packages -------------------------------------------------------------------------

    async def install(
        self,
        venv_dir: Path,
        packages: list[str],
        *,
        limits: Limits,
        upgrade: bool = False,
        no_deps: bool = False,
        index_url: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> InstallResult:
        if not packages:
            raise invalid("no packages given; name at least one, like 'requests'")
        if len(packages) > MAX_PACKAGES:
            raise invalid(f"{len(packages)} packages in one call; install at most {MAX_PACKAGES}")
        specs = list(dict.fromkeys(validate_spec(p) for p in packages))
        options = ["--upgrade"] * upgrade + ["--no-deps"] * no_deps
        if index_url is not None:
            options += ["--index-url", _validate_index_url(index_url)]
        await self.create(venv_dir)
        before = await self._packages(venv_dir, limits)

        async def attempt(chosen: list[str]) -> RunResult:
            argv = ["pip", "install", "--python", _python_of(venv_dir), *options, "--", *chosen]
            return await self._uv(
                argv,
                cwd=venv_dir,
                limits=limits,
                time_limit=INSTALL_TIMEOUT_SECONDS,
                on_output=on_output,
            )

        result = await attempt(specs)
        output, exit_code, failed = _output(result), result.exit_code, []
        if exit_code != 0:
            # uv resolves all or nothing; install the rest without the specs it blamed.
            blamed = [] if result.timed_out else _named_in(specs, output)
            rest = [s for s in specs if s not in blamed]
            failed = specs
            if blamed and rest:
                retry = await attempt(rest)
                output += "\n" + _output(retry)
                failed = blamed if retry.exit_code == 0 else specs
        after = await self._packages(venv_dir, limits)
        installed = [
            PackageInfo(name=name, version=version)
            for key, (name, version) in sorted(after.items())
            if key not in before or before[key][1] != version
        ]
        return InstallResult(installed=installed, failed=failed, output=output, exit_code=exit_code)

    async def list(self, venv_dir: Path, *, limits: Limits) -> list[PackageInfo]:
        packages = await self._packages(venv_dir, limits)
        return [PackageInfo(name=n, version=v) for _, (n, v) in sorted(packages.items())]

    async def freeze(self, venv_dir: Path, *, limits: Limits) -> list[str]:
        return [f"{p.name}=={p.version}" for p in await self.list(venv_dir, limits=limits)]

    async def sync(self, venv_dir: Path, lock: list[str], *, limits: Limits) -> None:
        """Make ``venv_dir`` hold exactly ``lock``: offline from the uv cache if it can."""
        specs = [validate_spec(line) for line in lock if line.strip()]
        await self.create(venv_dir)
        argv = ["pip", "sync", "--python", _python_of(venv_dir), "--allow-empty-requirements"]
        stdin = "".join(f"{s}\n" for s in specs).encode()
        output = ""
        for mode in (["--offline"], []):
            result = await self._uv(
                [*argv, *mode, "-"],
                cwd=venv_dir,
                limits=limits,
                time_limit=INSTALL_TIMEOUT_SECONDS,
                stdin=stdin,
            )
            if result.exit_code == 0:
                return
            output = _output(result)
        raise CodegenError(
            ErrorCode.FAILED_PRECONDITION,
            f"could not rebuild the venv from its lock of {len(specs)} packages: {output}",
        )

    # -- plumbing -------------------------------------------------------------------------

    async def _packages(self, venv_dir: Path, limits: Limits) -> dict[str, tuple[str, str]]:
        """canonical name -> (name, version) of what the venv holds."""
        if not _is_venv(venv_dir):
            raise not_found(f"no virtual environment at {venv_dir}")
        argv = ["pip", "list", "--format", "json", "--python", _python_of(venv_dir)]
        result = await self._uv(argv, cwd=venv_dir, limits=limits, time_limit=QUERY_TIMEOUT_SECONDS)
        try:
            if result.exit_code != 0:
                raise ValueError(result.exit_code)
            rows = json.loads(result.stdout or "[]")
            return {canonicalize_name(r["name"]): (r["name"], r["version"]) for r in rows}
        except (ValueError, KeyError, TypeError):
            raise CodegenError(
                ErrorCode.INTERNAL, f"could not list the packages of {venv_dir}: {_output(result)}"
            ) from None

    async def _uv(
        self,
        args: list[str],
        *,
        cwd: Path,
        limits: Limits,
        time_limit: float = QUERY_TIMEOUT_SECONDS,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        # uv writes wheels far larger than a session's file limit into the cache,
        # and a big install outlives a run's timeout: lift those two, keep the rest.
        tool_limits = limits.model_copy(
            update={
                "max_file_bytes": max(limits.max_file_bytes, 64 * GiB),
                "timeout_seconds": time_limit,
                "max_timeout_seconds": max(limits.max_timeout_seconds, time_limit),
            }
        )
        return await self._runner.run(
            [self.uv_bin, *args],
            cwd=cwd,
            env=self.env,
            limits=tool_limits,
            stdin=stdin,
            timeout=time_limit,
            on_output=on_output,
        )


def _python_of(venv_dir: Path) -> str:
    return str(venv_dir / "bin" / "python")


def _is_venv(venv_dir: Path) -> bool:
    return (venv_dir / "pyvenv.cfg").is_file() and (venv_dir / "bin" / "python").exists()

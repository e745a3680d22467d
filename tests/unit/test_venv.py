"""VenvManager against real uv, a real index and real subprocesses (through ProcessRunner)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codegen_ray.config import Limits
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.process import ProcessRunner
from codegen_ray.venv import VenvManager, validate_spec

LIMITS = Limits()
MISSING = "codegen-ray-no-such-pkg-xyz"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture
def manager(cache_dir: Path) -> VenvManager:
    return VenvManager(ProcessRunner(), cache_dir=cache_dir)


def names(packages: list) -> dict[str, str]:
    return {p.name: p.version for p in packages}


async def test_create_is_idempotent_and_makes_a_working_python(
    manager: VenvManager, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    await manager.create(venv)
    marker = venv / "marker"
    marker.write_text("kept")
    await manager.create(venv)  # a second create must not rebuild it
    assert marker.read_text() == "kept"
    result = await ProcessRunner().run(
        [str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        cwd=tmp_path,
        env={},
        limits=LIMITS,
    )
    assert result.exit_code == 0 and result.stdout.strip() == str(venv)
    assert await manager.list(venv, limits=LIMITS) == []


async def test_install_list_freeze_and_reinstall(manager: VenvManager, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    chunks: list[tuple[str, bytes]] = []

    async def on_output(stream: str, data: bytes) -> None:
        chunks.append((stream, data))

    result = await manager.install(venv, ["six", "idna>=3"], limits=LIMITS, on_output=on_output)
    assert result.exit_code == 0 and result.failed == []
    assert set(names(result.installed)) == {"six", "idna"}
    assert chunks, "uv's output is streamed to the callback"
    listed = names(await manager.list(venv, limits=LIMITS))
    assert listed == names(result.installed)
    assert await manager.freeze(venv, limits=LIMITS) == sorted(
        f"{n}=={v}" for n, v in listed.items()
    )
    again = await manager.install(venv, ["six"], limits=LIMITS)
    assert again.exit_code == 0 and again.installed == [] and again.failed == []
    # copied from the cache, never hard-linked: sandboxed code may write into its venv
    six_py = next(venv.glob("lib/python*/site-packages/six.py"))
    assert six_py.stat().st_nlink == 1


async def test_unknown_package_fails_and_the_rest_still_installs(
    manager: VenvManager, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    result = await manager.install(venv, ["iniconfig", MISSING], limits=LIMITS)
    assert result.exit_code != 0
    assert result.failed == [MISSING]
    assert MISSING in result.output
    assert set(names(result.installed)) == {"iniconfig"}

    alone = await manager.install(venv, [MISSING], limits=LIMITS)
    assert alone.exit_code != 0 and alone.failed == [MISSING] and alone.installed == []


async def test_upgrade_reports_the_new_version(manager: VenvManager, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    first = await manager.install(venv, ["iniconfig==1.1.1"], limits=LIMITS)
    assert names(first.installed) == {"iniconfig": "1.1.1"}
    upgraded = await manager.install(venv, ["iniconfig"], limits=LIMITS, upgrade=True)
    assert upgraded.exit_code == 0
    assert set(names(upgraded.installed)) == {"iniconfig"}
    assert names(upgraded.installed)["iniconfig"] != "1.1.1"


@pytest.mark.parametrize(
    "spec",
    [
        "-r/etc/passwd",
        "--index-url=http://evil.example/simple",
        "-e .",
        "",
        "   ",
        "six @ file:///etc/passwd",
        "six @ https://evil.example/six.whl",
        "six; rm -rf /",
        "six\n--index-url http://evil.example",
        "x" * 400,
    ],
)
async def test_hostile_specs_never_reach_uv(
    manager: VenvManager, tmp_path: Path, spec: str
) -> None:
    venv = tmp_path / "venv"
    with pytest.raises(CodegenError) as e:
        await manager.install(venv, ["six", spec], limits=LIMITS)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert not venv.exists(), "validation happens before any command runs"


@pytest.mark.parametrize("url", ["-x", "file:///tmp/index", "ftp://x/simple", "https://"])
async def test_hostile_index_url_is_refused(manager: VenvManager, tmp_path: Path, url: str) -> None:
    with pytest.raises(CodegenError) as e:
        await manager.install(tmp_path / "venv", ["six"], limits=LIMITS, index_url=url)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "spec",
    [
        "requests==2.32.3",
        "numpy>=2",
        "requests[socks]>=2.31",
        "six ; python_version >= '3'",
        "Foo_Bar.baz~=1.0",
    ],
)
def test_normal_pep508_specs_are_accepted(spec: str) -> None:
    assert validate_spec(spec)


async def test_empty_package_list_is_invalid(manager: VenvManager, tmp_path: Path) -> None:
    with pytest.raises(CodegenError) as e:
        await manager.install(tmp_path / "venv", [], limits=LIMITS)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT


async def test_sync_rebuilds_from_a_lock_offline_from_the_cache(
    manager: VenvManager, cache_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    await manager.install(source, ["six", "idna"], limits=LIMITS)
    lock = await manager.freeze(source, limits=LIMITS)

    # The network is gone (a dead proxy); the restore must come from the uv cache.
    offline = VenvManager(
        ProcessRunner(),
        cache_dir=cache_dir,
        extra_env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"},
    )
    restored = tmp_path / "restored"
    await offline.sync(restored, lock, limits=LIMITS)
    assert await offline.freeze(restored, limits=LIMITS) == lock

    six_only = [line for line in lock if line.startswith("six==")]
    await offline.sync(restored, six_only, limits=LIMITS)
    assert await offline.freeze(restored, limits=LIMITS) == six_only
    await offline.sync(restored, [], limits=LIMITS)
    assert await offline.freeze(restored, limits=LIMITS) == []


async def test_sync_of_an_unknown_lock_fails_clearly(manager: VenvManager, tmp_path: Path) -> None:
    with pytest.raises(CodegenError) as e:
        await manager.sync(tmp_path / "venv", [f"{MISSING}==1.0"], limits=LIMITS)
    assert e.value.code is ErrorCode.FAILED_PRECONDITION
    assert MISSING in e.value.message
    with pytest.raises(CodegenError) as e:
        await manager.sync(tmp_path / "venv", ["--index-url=http://evil"], limits=LIMITS)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT


async def test_list_of_a_missing_venv_is_not_found(manager: VenvManager, tmp_path: Path) -> None:
    with pytest.raises(CodegenError) as e:
        await manager.list(tmp_path / "nothing", limits=LIMITS)
    assert e.value.code is ErrorCode.NOT_FOUND


async def test_remove_is_idempotent_and_refuses_non_venvs(
    manager: VenvManager, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    await manager.create(venv)
    manager.remove(venv)
    assert not venv.exists()
    manager.remove(venv)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep")
    with pytest.raises(CodegenError) as e:
        manager.remove(precious)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert (precious / "data.txt").read_text() == "keep"

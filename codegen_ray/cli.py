"""``codegen-ray``: the one composition root. Builds the settings and runs the parts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from codegen_ray.client import DEFAULT_TARGET, Client
from codegen_ray.config import Settings
from codegen_ray.errors import CodegenError

target_option = click.option(
    "--target", default=DEFAULT_TARGET, show_default=True, help="Gateway address host:port."
)


def build_settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def client_call(target: str, fn: Any) -> Any:
    """Run fn(client); turn a CodegenError into a message and a non-zero exit."""
    try:
        with Client(target) as client:
            return fn(client)
    except CodegenError as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.code.value == "UNAVAILABLE" and "failed to connect" in exc.message:
            click.echo(
                f"hint: no gateway answers at {target}; start one with `codegen-ray serve` "
                "or pass --target HOST:PORT",
                err=True,
            )
        sys.exit(2 if exc.code.value == "INVALID_ARGUMENT" else 1)


@click.group()
@click.version_option(package_name="codegen-ray")
def main() -> None:
    """A self-hostable code sandbox for LLM agents, on Ray."""


# --- running the parts ---------------------------------------------------------------


def _serve_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option("--grpc-port", type=int, help="gRPC port (env GRPC_PORT, default 50051)."),
            click.option(
                "--http-port",
                type=int,
                help="MCP/health HTTP port (env CODEGEN_HTTP_PORT, default 8080).",
            ),
            click.option("--host", help="Interface to listen on (env CODEGEN_HOST)."),
            click.option("--max-sessions", type=int, help="Sessions on this node (MAX_SESSIONS)."),
            click.option("--base-workspace", type=click.Path(path_type=Path)),
            click.option(
                "--port-file",
                type=click.Path(path_type=Path),
                help="Write the bound gRPC port here once serving (HTTP: PATH.http).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


@main.command()
@click.option("--address", help="Join this Ray cluster (host:6379) instead of embedding Ray.")
@_serve_options
def serve(address: str | None, port_file: Path | None, **overrides: Any) -> None:
    """Run the gateway (embedded local Ray with its dashboard unless --address)."""
    settings = build_settings(**overrides)
    _run_gateway(settings, address or settings.coordinator_addr or None, port_file)


def _run_gateway(settings: Settings, address: str | None, port_file: Path | None) -> None:
    from gateway.server import Gateway

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    connection = None

    async def run() -> None:
        nonlocal connection
        gateway = Gateway(settings, address)
        await gateway.start()
        connection = gateway.connection
        assert gateway.connection is not None
        if port_file is not None:
            # The HTTP port first: readers wait for the gRPC port file to appear.
            http_file = port_file.with_name(port_file.name + ".http")
            http_file.write_text(str(gateway.http_port))  # noqa: ASYNC240 - tiny, once
            port_file.write_text(str(gateway.grpc_port))  # noqa: ASYNC240
        click.echo(
            f"codegen-ray gateway: grpc {settings.host}:{gateway.grpc_port}  "
            f"ray {gateway.connection.address}  dashboard {gateway.connection.dashboard_url or '-'}"
            f"  http {settings.host}:{gateway.http_port} (MCP /mcp /sse, /health)",
            err=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gateway.stop()

    asyncio.run(run())
    import ray

    from codegen_ray.procs import start_times, stop_processes
    from codegen_ray.ray_node import node_processes

    session = connection.session_dir if connection is not None and connection.embedded else ""
    # ray.shutdown() leaves the embedded node's agents running: note the node's processes
    # now, and stop whichever of them outlive it.
    ours = start_times(node_processes(Path(session))) if session else {}
    ray.shutdown()
    if ours:
        logging.getLogger(__name__).info("embedded Ray: %s", stop_processes(ours))


def _ray_start(args: list[str], settings: Settings) -> list[str]:
    from actors.options import node_resources

    # Prefer the ray beside this interpreter: PATH may hold another install (or a stale shim).
    beside = Path(sys.executable).parent / "ray"
    ray_bin = str(beside) if beside.exists() else shutil.which("ray") or "ray"
    return [
        ray_bin,
        "start",
        f"--resources={json.dumps(node_resources(settings.max_sessions))}",
        "--disable-usage-stats",
        *args,
    ]


def _node_env(settings: Settings) -> dict[str, str]:
    """The node's settings, for the WorkerNodeActor that Ray starts under this raylet."""
    env = dict(os.environ)
    env.update(
        WORKER_ID=settings.node_worker_id(),
        MAX_SESSIONS=str(settings.max_sessions),
        BASE_WORKSPACE=str(settings.base_workspace),
    )
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--address", help="Ray head host:port (env COORDINATOR_ADDR).")
@click.option("--worker-id", help="Name of this worker node (env WORKER_ID).")
@click.option("--max-sessions", type=int)
@click.option("--base-workspace", type=click.Path(path_type=Path))
@click.option("--temp-dir", type=click.Path(path_type=Path), help="Ray temp dir of this node.")
@click.option("--num-cpus", type=int)
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    address: str | None,
    temp_dir: Path | None,
    num_cpus: int | None,
    ray_args: tuple[str, ...],
    **overrides: Any,
) -> None:
    """Join this machine to the cluster as a worker node carrying codegen resources; blocks.

    RAY_ARGS after `--` go to `ray start` as they are, e.g.
    `-- --object-store-memory=157286400 --dashboard-agent-listen-port=0`.
    """
    settings = build_settings(**overrides)
    address = address or settings.coordinator_addr
    if not address:
        raise click.UsageError("give --address HOST:PORT or set COORDINATOR_ADDR")
    args = [f"--address={address}", "--block"]
    if temp_dir:
        args.append(f"--temp-dir={temp_dir}")
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    command = _ray_start([*args, *ray_args], settings)
    os.execvpe(command[0], command, _node_env(settings))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=6379, show_default=True, help="Ray GCS port.")
@click.option("--dashboard-port", type=int, help="Ray dashboard port (default 8265).")
@click.option("--metrics-export-port", default=8090, show_default=True)
@click.option(
    "--temp-dir",
    type=click.Path(path_type=Path),
    help="Ray temp dir of this node (default: Ray's, /tmp/ray).",
)
@click.option("--num-cpus", type=int)
@_serve_options
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def head(
    port: int,
    dashboard_port: int | None,
    metrics_export_port: int,
    temp_dir: Path | None,
    num_cpus: int | None,
    port_file: Path | None,
    ray_args: tuple[str, ...],
    **overrides: Any,
) -> None:
    """Start a Ray head that is also a worker node, then run the gateway against it.

    On exit (SIGTERM, SIGINT) the gateway stops, then this node's Ray processes, found by
    its temp dir's session directory: never `ray stop`, which would stop every Ray here.
    RAY_ARGS after `--` go to `ray start` as they are.
    """
    import tempfile

    from codegen_ray.ray_node import session_dir, stop_node
    from gateway.driver import system_config

    settings = build_settings(**overrides)
    if dashboard_port is not None:
        settings.ray.dashboard_port = dashboard_port
    temp_dir = (temp_dir or Path(tempfile.gettempdir()) / "ray").absolute()
    args = [
        "--head",
        f"--port={port}",
        f"--dashboard-host={settings.host}",
        f"--dashboard-port={settings.ray.dashboard_port}",
        f"--metrics-export-port={metrics_export_port}",
        f"--system-config={json.dumps(system_config(settings))}",
        f"--temp-dir={temp_dir}",
    ]
    if settings.host in ("127.0.0.1", "localhost"):
        args.append("--node-ip-address=127.0.0.1")  # keep every Ray port on loopback too
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    subprocess.run(_ray_start([*args, *ray_args], settings), env=_node_env(settings), check=True)
    session = session_dir(temp_dir)
    try:
        _run_gateway(settings, f"127.0.0.1:{port}", port_file)
    finally:
        click.echo(f"codegen-ray head: stopping Ray ({stop_node(session)})", err=True)


@main.command()
@target_option
@click.option("--timeout", default=5.0, show_default=True)
def health(target: str, timeout: float) -> None:
    """Exit 0 when the gateway's gRPC health service says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            click.echo(f"unhealthy: {exc.code().name}", err=True)
            sys.exit(1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(status)
    sys.exit(0 if status == "SERVING" else 1)


# --- client commands -----------------------------------------------------------------


@main.command()
@target_option
@click.option("--json", "as_json", is_flag=True, help="Print the full specs with schemas.")
def tools(target: str, as_json: bool) -> None:
    """List the tools and what they do."""
    specs = client_call(target, lambda c: c.list_tools())
    if as_json:
        emit(specs)
        return
    for spec in specs:
        where = "session" if spec["requires_session"] else "gateway"
        click.echo(f"{spec['name']:<18} [{where}] {spec['description']}")


@main.command()
@click.argument("tool")
@target_option
@click.option("--session", "session_id", default="", help="Session id the tool runs in.")
@click.option("--json", "arguments", default="{}", help="Arguments as a JSON object.")
@click.option("--async", "run_async", is_flag=True, help="Return a task id at once.")
def call(tool: str, target: str, session_id: str, arguments: str, run_async: bool) -> None:
    """Call TOOL and print its structured result as JSON; exit non-zero on error."""
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--json is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise click.BadParameter("--json must be a JSON object")
    response = client_call(
        target, lambda c: c.call(tool, args, session_id=session_id, run_async=run_async)
    )
    emit({"task_id": response.task_id} if response.task_id else _ordered(tool, response.structured))
    if response.is_error:
        click.echo(response.text, err=True)
        sys.exit(1)


def _ordered(tool: str, result: dict[str, Any]) -> dict[str, Any]:
    """Struct fields arrive unordered; print them in the result model's order."""
    from codegen_ray.tools import TOOLS

    spec = TOOLS.get(tool)
    if spec is None or spec.result.model_config.get("extra") == "allow":
        return result
    try:
        return spec.result.model_validate(result).model_dump(mode="json")
    except ValueError:
        return result


@main.group()
def session() -> None:
    """Create, inspect and destroy sessions."""


@session.command("create")
@target_option
@click.option("--env", multiple=True, help="KEY=VALUE environment variable (repeatable).")
@click.option("--metadata", multiple=True, help="KEY=VALUE metadata (repeatable).")
@click.option("--limit", multiple=True, help="LIMIT=VALUE, e.g. timeout_seconds=10.")
@click.option("--node", default="", help="Ray node id or WORKER_ID to place it on.")
def session_create(
    target: str, env: tuple[str, ...], metadata: tuple[str, ...], limit: tuple[str, ...], node: str
) -> None:
    limits: dict[str, Any] = {k: json.loads(v) for k, v in pairs(limit, "--limit").items()}
    emit(
        client_call(
            target,
            lambda c: c.create_session(
                env=pairs(env, "--env"),
                metadata=pairs(metadata, "--metadata"),
                limits=limits,
                node=node,
            ),
        )
    )


@session.command("list")
@target_option
def session_list(target: str) -> None:
    emit(client_call(target, lambda c: c.list_sessions()))


@session.command("get")
@click.argument("session_id")
@target_option
def session_get(session_id: str, target: str) -> None:
    emit(client_call(target, lambda c: c.get_session(session_id)))


@session.command("destroy")
@click.argument("session_id")
@target_option
def session_destroy(session_id: str, target: str) -> None:
    emit({"destroyed": client_call(target, lambda c: c.destroy_session(session_id))})


@session.command("checkpoint")
@click.argument("session_id")
@target_option
@click.option("--name", default="", help="A label for the checkpoint.")
def session_checkpoint(session_id: str, target: str, name: str) -> None:
    """Snapshot the session's files, package lock, env and metadata."""
    emit(client_call(target, lambda c: c.checkpoint(session_id, name)))


@session.command("checkpoints")
@click.argument("session_id")
@target_option
def session_checkpoints(session_id: str, target: str) -> None:
    """List a session's checkpoints, newest first."""
    emit(client_call(target, lambda c: c.list_checkpoints(session_id)))


@session.command("restore")
@click.argument("checkpoint_id")
@target_option
@click.option("--node", default="", help="Ray node id or WORKER_ID to restore onto.")
@click.option("--new-session", is_flag=True, help="Restore as a new session; keep the old one.")
def session_restore(checkpoint_id: str, target: str, node: str, new_session: bool) -> None:
    """Restore a checkpoint (in place, onto another node, or as a new session)."""
    emit(
        client_call(target, lambda c: c.restore(checkpoint_id, node=node, new_session=new_session))
    )


@main.command()
@target_option
@click.option("--json", "as_json", is_flag=True)
def status(target: str, as_json: bool) -> None:
    """Ray address, dashboard URL, worker nodes with sessions and capacity."""
    data, sessions = client_call(target, lambda c: (c.status(), c.list_sessions()))
    # A hibernated session has no actor and no slot; it counts under the node it left.
    hibernated = Counter(s["worker_id"] for s in sessions if s["state"] == "hibernated")
    for node in data["nodes"]:
        node["hibernated_sessions"] = hibernated.get(node["worker_id"], 0)
    if as_json:
        emit(data)
        return
    mode = "embedded" if data["embedded"] else "cluster"
    used = sum(n["live_sessions"] for n in data["nodes"])
    total = sum(n["max_sessions"] for n in data["nodes"])
    click.echo(f"ray:       {data['ray_address']} ({mode})")
    click.echo(f"dashboard: {data['dashboard_url'] or '-'}")
    click.echo(f"sessions:  {data['sessions']} live, {sum(hibernated.values())} hibernated")
    click.echo(f"capacity:  {used}/{total} session slots in use")
    click.echo(
        f"{'worker':<20} {'node':<14} {'ip':<16} {'sessions':>9} {'used':>5} {'hib':>4} {'warm':>5}"
    )
    for node in data["nodes"]:
        used = f"{node['live_sessions']}/{node['max_sessions']}"
        ratio = f"{node['live_sessions'] / max(1, node['max_sessions']):.0%}"
        click.echo(
            f"{node['worker_id']:<20} {node['node_id'][:12]:<14} {node['ip']:<16} "
            f"{used:>9} {ratio:>5} {node['hibernated_sessions']:>4} {node['warm_sessions']:>5}"
        )


from codegen_ray.bench import bench  # noqa: E402

main.add_command(bench)


from codegen_ray.mcp_stdio import mcp  # noqa: E402 - registered after the group exists

main.add_command(mcp)

if __name__ == "__main__":
    main()

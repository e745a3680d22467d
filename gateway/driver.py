"""Connecting the gateway process to Ray: an embedded local instance, or an existing cluster."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from actors.options import node_resources
from codegen_ray.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayConnection:
    address: str
    node_id: str
    dashboard_url: str
    embedded: bool
    session_dir: str = ""


def system_config(settings: Settings) -> dict[str, int]:
    """Ray settings of a cluster we start: see a dead node in seconds, not Ray's ~20 s,
    and run sessions' code at normal priority (Ray starts its workers at nice 15)."""
    return {
        "health_check_period_ms": settings.ray.health_check_period_ms,
        "health_check_failure_threshold": settings.ray.health_check_failure_threshold,
        "worker_niceness": 0,
    }


def connect(settings: Settings, address: str | None) -> RayConnection:
    """Blocking: call at startup, never on the event loop."""
    if address:
        context = ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False)
        embedded = False
    else:
        # address="local": a bare ray.init() would join any cluster left running here.
        context = ray.init(
            address="local",
            namespace=settings.ray.namespace,
            num_cpus=settings.ray.num_cpus,
            resources=node_resources(settings.max_sessions),
            object_store_memory=settings.ray.object_store_memory,
            include_dashboard=settings.ray.include_dashboard,
            dashboard_host=settings.host,
            dashboard_port=settings.ray.dashboard_port,
            log_to_driver=False,
            # Ray binds its ports to the node IP: keep an embedded Ray on loopback.
            _node_ip_address="127.0.0.1",
            _system_config=system_config(settings),
        )
        embedded = True
    dashboard = context.dashboard_url or ""
    if dashboard and not dashboard.startswith("http"):
        dashboard = f"http://{dashboard}"
    connection = RayConnection(
        address=context.address_info.get("gcs_address", address or ""),
        node_id=ray.get_runtime_context().get_node_id(),
        dashboard_url=dashboard,
        embedded=embedded,
        session_dir=str(context.address_info.get("session_dir", "")),
    )
    log.info("connected to Ray at %s (dashboard %s)", connection.address, dashboard or "off")
    return connection

"""Every Ray option of our actors (names, namespace, affinity, lifetime, resources)."""

from __future__ import annotations

from typing import Any

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

NODE_RESOURCE = "codegen_node"
SESSION_RESOURCE = "codegen_session"
SESSION_PREFIX = "session:"
WORKER_PREFIX = "worker:"


def session_actor_name(session_id: str) -> str:
    return f"{SESSION_PREFIX}{session_id}"


def worker_actor_name(node_id: str) -> str:
    return f"{WORKER_PREFIX}{node_id}"


def node_resources(max_sessions: int) -> dict[str, float]:
    """Resources a worker node joins with; Ray itself then enforces MAX_SESSIONS."""
    return {NODE_RESOURCE: 1, SESSION_RESOURCE: max_sessions}


def pinned(node_id: str) -> NodeAffinitySchedulingStrategy:
    # Hard affinity: soft affinity with num_cpus=0 lands on random nodes.
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def session_actor_options(session_id: str, node_id: str, namespace: str) -> dict[str, Any]:
    return {
        "name": session_actor_name(session_id),
        "namespace": namespace,
        "lifetime": "detached",
        # A restarted session would come back empty: recovery is a restore instead.
        "max_restarts": 0,
        "num_cpus": 0,
        "resources": {SESSION_RESOURCE: 1},
        "scheduling_strategy": pinned(node_id),
        "max_concurrency": 1000,
    }


def worker_actor_options(node_id: str, namespace: str) -> dict[str, Any]:
    return {
        "name": worker_actor_name(node_id),
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
        "scheduling_strategy": pinned(node_id),
        "max_concurrency": 1000,
    }

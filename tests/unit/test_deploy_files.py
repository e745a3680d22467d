"""Offline checks of the deployment files: compose, KubeRay, `ray up` configs, Makefile.

Compose files are validated against the Compose Specification's JSON schema, vendored in
tests/data/compose-spec.json (copied from check-jsonschema 0.39.0, which vendors it from
the compose-spec project; Apache-2.0, see tests/data/LICENSE.compose-spec). The `ray up`
configs go through Ray's own `validate_config`, before and after `prepare_config`, as
`ray up` does. Nothing here needs Docker, Kubernetes or the network; the docker-compose
test is an extra opinion that runs only where that tool is installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
COMPOSE_SCHEMA = DATA / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

COMPOSE_FILES = ["compose.yml", "compose.dev.yml"]
RAY_UP_FILES = ["ray-cluster.yaml", "ray-cluster.local.yaml"]
RAY_SERVICES = ["head", "worker", "worker-2"]
CODEGEN_RESOURCES = {"codegen_node", "codegen_session"}
# The values Ray 2.60 accepts for RAY_AUTH_MODE (checked against Ray below).
RAY_AUTH_MODES = {"disabled", "token"}
MAKE_TARGETS = [
    "docker-build",
    "docker-up",
    "docker-up-dev",
    "docker-up-multi",
    "docker-down",
    "docker-logs",
    "docker-ps",
    "docker-shell-%",
    "docker-clean",
    "docker-test",
]


def load_yaml(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml("compose.yml")


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


# --- compose: schema -------------------------------------------------------------------


def test_vendored_compose_schema_is_unmodified() -> None:
    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == COMPOSE_SCHEMA_SHA256


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_compose_spec(
    name: str, compose_validator: jsonschema.protocols.Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator.iter_errors(load_yaml(name))
    ]
    assert errors == []


def test_compose_schema_rejects_a_misspelt_key(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["head"]["shm_sise"] = "2gb"
    assert not compose_validator.is_valid(broken)


# --- compose: meaning ------------------------------------------------------------------


def test_ray_services_share_one_image_and_ray_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    images = {services[name]["image"] for name in RAY_SERVICES}
    assert len(images) == 1
    modes = set()
    for name in RAY_SERVICES:
        service, env = services[name], env_of(services[name])
        assert service["command"][0] == "codegen-ray", name
        assert env["RAY_AUTH_MODE"] in RAY_AUTH_MODES, name
        modes.add(env["RAY_AUTH_MODE"])
        if env["RAY_AUTH_MODE"] == "token":
            assert "RAY_AUTH_TOKEN" in env or "RAY_AUTH_TOKEN_PATH" in env, name
        assert env["RAY_USAGE_STATS_ENABLED"] == "0", name
        assert service["shm_size"], name
        assert env["BASE_WORKSPACE"] and env["MAX_SESSIONS"] and env["WORKER_ID"], name
    assert len(modes) == 1, "every node must run the same RAY_AUTH_MODE"
    worker_ids = [env_of(services[name])["WORKER_ID"] for name in RAY_SERVICES]
    assert len(set(worker_ids)) == len(worker_ids)


def test_head_runs_ray_head_and_gateway(compose: dict[str, Any]) -> None:
    head = compose["services"]["head"]
    assert head["command"] == ["codegen-ray", "head"]
    assert {container_port(p) for p in head["ports"]} >= {50051, 8080, 8265}
    assert head["healthcheck"]["test"][:3] == ["CMD", "codegen-ray", "health"]
    assert "profiles" not in head


@pytest.mark.parametrize("name", ["worker", "worker-2"])
def test_workers_join_the_head(compose: dict[str, Any], name: str) -> None:
    worker = compose["services"][name]
    assert worker["command"] == ["codegen-ray", "worker", "--address", "head:6379"]
    assert worker["depends_on"]["head"]["condition"] == "service_healthy"


def test_second_worker_only_in_multi_worker_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker-2"]["profiles"] == ["multi-worker"]
    assert "profiles" not in services["worker"]


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used <= declared
    for name in RAY_SERVICES:
        targets = {v.split(":")[1] for v in compose["services"][name]["volumes"]}
        assert env_of(compose["services"][name])["BASE_WORKSPACE"] in targets, name
    assert any(v.startswith("checkpoints:") for v in compose["services"]["minio"]["volumes"])


def test_checkpoints_go_to_minio(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "minio" in services and "minio-init" in services
    init_script = " ".join(services["minio-init"]["entrypoint"])
    for name in RAY_SERVICES:
        env = env_of(services[name])
        uri = env["CODEGEN_CHECKPOINT__STORE_URI"]
        match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]+)(/.*)?", uri)
        assert match, uri
        assert f"mb --ignore-existing local/{match.group(1)}" in init_script
        assert re.fullmatch(r"https?://minio:9000", env["CODEGEN_CHECKPOINT__S3_ENDPOINT_URL"])
        assert env["CODEGEN_CHECKPOINT__S3_ACCESS_KEY_ID"]
        assert env["CODEGEN_CHECKPOINT__S3_SECRET_ACCESS_KEY"]
    head_deps = services["head"]["depends_on"]
    assert head_deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_dev_override_mounts_the_source(compose: dict[str, Any]) -> None:
    dev = load_yaml("compose.dev.yml")
    assert set(dev["services"]) <= set(compose["services"])
    for name, service in dev["services"].items():
        pythonpath = env_of(service)["PYTHONPATH"]
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            assert (ROOT / source).is_dir(), (name, source)
            assert target.startswith(pythonpath + "/"), (name, target)


def test_auth_modes_known_to_this_ray() -> None:
    from ray._private.authentication.authentication_utils import get_authentication_mode_name
    from ray._raylet import AuthenticationMode

    names = {
        get_authentication_mode_name(getattr(AuthenticationMode, member))
        for member in dir(AuthenticationMode)
        if member.isupper()
    }
    assert names == RAY_AUTH_MODES


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize("files", [["compose.yml"], ["compose.yml", "compose.dev.yml"]])
def test_docker_compose_config_accepts_it(files: list[str], tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip(
            "optional check: neither docker-compose nor the docker compose plugin is "
            "installed (the compose-spec schema tests above still ran)"
        )
    args = [arg for name in files for arg in ("-f", name)]
    env = {**os.environ, "RAY_AUTH_TOKEN": "test-token", "HOME": str(tmp_path)}
    result = subprocess.run(
        [*command, *args, "--profile", "multi-worker", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_one_non_root_image_with_healthcheck() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    assert "uv pip install" in text
    assert re.search(r"apt-get install[^\n]*\\?\n?[^\n]*bubblewrap", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*codegen-ray\", \"health\"", text, re.MULTILINE)
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE) for p in line.split()
    }
    assert exposed >= {50051, 8080, 8265, 6379}
    head_ports = {container_port(p) for p in load_yaml("compose.yml")["services"]["head"]["ports"]}
    assert head_ports <= exposed


# --- KubeRay ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuberay() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all((ROOT / "docker" / "kuberay.yaml").read_text())]
    by_kind = {doc["kind"]: doc for doc in docs if doc}
    assert set(by_kind) == {"RayCluster", "Service"}
    return by_kind


def ray_start_resources(params: dict[str, str]) -> dict[str, int]:
    # KubeRay passes the value to the shell as is: a JSON object inside double quotes.
    return json.loads(shlex.split(params["resources"])[0])


def test_raycluster_head_and_workers(kuberay: dict[str, dict[str, Any]]) -> None:
    cluster = kuberay["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    head_group = cluster["spec"]["headGroupSpec"]
    groups = [head_group, *cluster["spec"]["workerGroupSpecs"]]
    containers = [group["template"]["spec"]["containers"][0] for group in groups]
    assert len({c["image"] for c in containers}) == 1
    for group, container in zip(groups, containers, strict=True):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] in RAY_AUTH_MODES
        assert "RAY_AUTH_TOKEN" in env
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0"
        assert CODEGEN_RESOURCES <= set(ray_start_resources(group["rayStartParams"]))
        assert group["rayStartParams"]["metrics-export-port"] != "8080"
        assert "KUBERAY_GEN_RAY_START_CMD" in " ".join(container["args"])
    head = head_group["rayStartParams"]
    assert head["dashboard-host"] == "0.0.0.0"
    head_script = " ".join(containers[0]["args"])
    assert "codegen-ray serve --address 127.0.0.1:6379" in head_script


def test_gateway_service_selects_head_ports(kuberay: dict[str, dict[str, Any]]) -> None:
    cluster, service = kuberay["RayCluster"], kuberay["Service"]
    selector = service["spec"]["selector"]
    assert selector == {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    env = {e["name"]: e.get("value") for e in head["env"]}
    served = {p["port"]: ports[p["targetPort"]] for p in service["spec"]["ports"]}
    assert served == {50051: 50051, 8080: 8080}
    assert env["GRPC_PORT"] == "50051" and env["CODEGEN_HTTP_PORT"] == "8080"
    assert ports["metrics"] == int(
        cluster["spec"]["headGroupSpec"]["rayStartParams"]["metrics-export-port"]
    )


# --- ray up ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_config_passes_ray_validation(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml(name)
    validate_config(copy.deepcopy(config))
    validate_config(prepare_config(copy.deepcopy(config)))


def start_resources(command: str) -> dict[str, int]:
    match = re.search(r"--resources='([^']+)'", command)
    assert match, command
    return json.loads(match.group(1))


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_commands(name: str) -> None:
    config = load_yaml(name)
    head = config["head_start_ray_commands"]
    workers = config["worker_start_ray_commands"]
    head_start = next(c for c in head if "ray start --head" in c)
    gateway = next(c for c in head if "codegen-ray serve" in c)
    worker_start = next(c for c in workers if "ray start --address" in c)
    assert "--dashboard-host=0.0.0.0" in head_start
    assert "--metrics-export-port=" in head_start and "--metrics-export-port=" in worker_start
    assert "nohup codegen-ray serve --address localhost:6379" in gateway
    for command in (head_start, gateway, worker_start):
        assert re.search(r"RAY_AUTH_MODE=(\w+)", command).group(1) in RAY_AUTH_MODES
        assert "RAY_USAGE_STATS_ENABLED=0" in command
    resources = start_resources(head_start)
    assert set(resources) == CODEGEN_RESOURCES
    assert start_resources(worker_start) == resources
    for node_type in config.get("available_node_types", {}).values():
        assert node_type["resources"] == resources
    setup = " ".join(config["setup_commands"])
    assert f"codegen_ray-{project_version()}-py3-none-any.whl" in setup
    assert config["file_mounts"]["~/.ray/auth_token"]


def test_cloud_config_uses_aws() -> None:
    config = load_yaml("ray-cluster.yaml")
    assert config["provider"]["type"] == "aws"
    assert load_yaml("ray-cluster.local.yaml")["provider"]["type"] == "local"


# --- Makefile --------------------------------------------------------------------------


def test_makefile_keeps_codegen_mcp_target_names() -> None:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.%-]+):", text, re.MULTILINE))
    assert set(MAKE_TARGETS) <= targets
    recipe = text.split("\ndocker-test:", 1)[1].split("\n\n", 1)[0]
    assert "tests/e2e" in recipe and "--target" in recipe


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("docker-test", "tests/e2e --target localhost:50051"),
        ("docker-shell-head", "exec head"),
        ("docker-up-multi", "--profile multi-worker up"),
        ("docker-up-dev", "-f compose.dev.yml up"),
    ],
)
def test_make_dry_run(target: str, expected: str, tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("optional check: `make` is not installed (target names were still checked)")
    result = subprocess.run(
        ["make", "-n", target, f"RAY_TOKEN_FILE={tmp_path / 'auth_token'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout

"""The Docker Compose file offered for machines with a Docker engine."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_names_kafka_and_redis():
    services = load_compose()["services"]

    assert {"kafka", "redis"} <= set(services)


def test_compose_ports_match_stack():
    services = load_compose()["services"]

    assert "19092:19092" in services["kafka"]["ports"]
    assert "16379:6379" in services["redis"]["ports"]


def test_compose_kafka_uses_kraft():
    environment = load_compose()["services"]["kafka"]["environment"]

    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://127.0.0.1:19092" in environment["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_runs_every_service():
    services = load_compose()["services"]

    assert {"init", "provisioner", "authorizer", "reassembler", "cli"} <= set(services)
    commands = {name: services[name].get("command") for name in ("provisioner", "authorizer", "reassembler")}
    assert commands["provisioner"] == ["python", "-m", "provisioner"]
    assert commands["authorizer"] == ["python", "-m", "streams.authorizer"]
    assert commands["reassembler"] == ["python", "-m", "streams.reassembler"]


def test_compose_services_use_internal_listener():
    compose = load_compose()
    services = compose["services"]

    assert "INTERNAL://kafka:9094" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("init", "provisioner", "authorizer", "reassembler", "cli"):
        environment = services[name]["environment"]
        assert environment["SHARDBUS_KAFKA_BOOTSTRAP"] == "kafka:9094", name
        assert "deployment:/deployment" in services[name]["volumes"], name


def test_compose_dockerfile_copies_every_package():
    dockerfile = (COMPOSE_FILE.parent / "Dockerfile").read_text()

    for package in ("shardbus", "schemas", "streams", "holders", "provisioner"):
        assert f"COPY {package} ./{package}" in dockerfile

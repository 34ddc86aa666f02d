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
    assert environment["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:19092"

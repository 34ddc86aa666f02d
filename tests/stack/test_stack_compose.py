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


def test_compose_tls_kafka_requires_client_certificates():
    services = load_compose()["services"]
    environment = services["kafka-tls"]["environment"]

    assert services["kafka-tls"]["profiles"] == ["tls"]
    assert environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] == "CONTROLLER:SSL,SSL:SSL,INTERNAL:SSL"
    assert environment["KAFKA_SSL_CLIENT_AUTH"] == "required"
    assert environment["KAFKA_SSL_KEYSTORE_TYPE"] == "PEM"
    assert environment["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert environment["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert environment["KAFKA_SUPER_USERS"] == "User:broker;User:admin"
    # Compose turns "$$" into "$", which gives the rule the stack uses.
    assert environment["KAFKA_SSL_PRINCIPAL_MAPPING_RULES"].replace("$$", "$") == "RULE:^CN=([^,]+).*$/$1/,DEFAULT"


def test_compose_tls_services_use_own_certificates():
    services = load_compose()["services"]

    for name, principal in (("provisioner-tls", "shardbus.provisioner"), ("authorizer-tls", "shardbus.authorizer"),
                            ("reassembler-tls", "shardbus.reassembler"), ("cli-tls", "shardbus.controller"),
                            ("acl", "admin")):
        environment = services[name]["environment"]
        assert services[name]["profiles"] == ["tls"], name
        assert environment["SHARDBUS_KAFKA_BOOTSTRAP"] == "kafka-tls:9095", name
        assert environment["SHARDBUS_KAFKA_TLS_CA"] == "/tls/ca.pem", name
        assert environment["SHARDBUS_KAFKA_TLS_CERT"] == f"/tls/{principal}.pem", name
        assert environment["SHARDBUS_KAFKA_TLS_KEY"] == f"/tls/{principal}.key", name


def test_compose_plaintext_services_outside_tls_profile():
    services = load_compose()["services"]

    for name in ("kafka", "redis", "init", "provisioner", "authorizer", "reassembler"):
        assert "profiles" not in services[name], name

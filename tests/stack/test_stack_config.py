"""Stack settings and the Kafka configuration rendered from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardbus.devstack import kafka
from shardbus.devstack.config import load_config
from shardbus.devstack.errors import StackError
from shardbus.devstack.fetch import java_major_version


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_defaults():
    config = load_config({"HOME": "/home/dev"})

    assert config.state_dir == Path("/home/dev/.local/state/shardbus/stack")
    assert config.kafka_home == Path("/home/dev/.cache/shardbus/kafka-4.1.1")
    assert config.exports(cluster=False) == {
        "SHARDBUS_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "SHARDBUS_REDIS_URL": "redis://127.0.0.1:16379/0",
    }
    assert [node.controller_port for node in config.cluster] == [19193, 19293, 19393]


def test_environment_overrides():
    config = load_config(
        {
            "HOME": "/home/dev",
            "SHARDBUS_STACK_DIR": "/tmp/stack",
            "XDG_CACHE_HOME": "/tmp/cache",
            "SHARDBUS_KAFKA_VERSION": "4.0.1",
            "SHARDBUS_KAFKA_PORT": "29092",
            "SHARDBUS_REDIS_PORT": "26379",
            "SHARDBUS_KAFKA_START_TIMEOUT": "90",
            "SHARDBUS_KAFKA_FORMAT_TIMEOUT": "45",
        }
    )

    assert config.state_dir == Path("/tmp/stack")
    assert config.kafka_home == Path("/tmp/cache/shardbus/kafka-4.0.1")
    assert config.bootstrap(cluster=False) == "127.0.0.1:29092"
    assert config.redis_url == "redis://127.0.0.1:26379/0"
    assert config.kafka_timeout == 90.0
    assert config.format_timeout == 45.0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SHARDBUS_KAFKA_PORT", "kafka", "must be a port number, got 'kafka'"),
        ("SHARDBUS_KAFKA_PORT", "80", "must be between 1024 and 65534, got 80"),
        ("SHARDBUS_KAFKA_CLUSTER_PORTS", "29192,29292", "must list 3 broker ports"),
        ("SHARDBUS_REDIS_START_TIMEOUT", "-1", "must be a positive number of seconds"),
        ("SHARDBUS_KAFKA_FORMAT_TIMEOUT", "soon", "must be a number of seconds, got 'soon'"),
        ("SHARDBUS_REDIS_PORT", "19092", "port 19092 is set twice"),
    ],
)
def test_invalid_setting_names_variable(variable, value, message):
    with pytest.raises(StackError, match=message) as raised:
        load_config({"HOME": "/home/dev", variable: value})

    assert variable in str(raised.value)


def test_single_node_properties(tmp_path):
    config = load_config({"HOME": str(tmp_path)})

    properties = parse_properties(kafka.render_properties(config, config.single, cluster=False))

    assert properties["process.roles"] == "broker,controller"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["offsets.topic.replication.factor"] == "1"
    assert properties["transaction.state.log.replication.factor"] == "1"
    assert properties["transaction.state.log.min.isr"] == "1"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    assert properties["auto.create.topics.enable"] == "false"


def test_cluster_node_properties(tmp_path):
    config = load_config({"HOME": str(tmp_path)})
    second = config.cluster[1]

    properties = parse_properties(kafka.render_properties(config, second, cluster=True))

    assert properties["node.id"] == "2"
    assert properties["controller.quorum.voters"] == (
        "1@127.0.0.1:19193,2@127.0.0.1:19293,3@127.0.0.1:19393"
    )
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19292"
    assert properties["default.replication.factor"] == "3"
    assert properties["min.insync.replicas"] == "2"
    assert properties["offsets.topic.replication.factor"] == "3"
    assert properties["transaction.state.log.min.isr"] == "2"
    assert second.heap == "384m"


def test_cluster_id_is_stable(tmp_path):
    config = load_config({"HOME": str(tmp_path), "SHARDBUS_STACK_DIR": str(tmp_path / "stack")})
    config.kafka_dir.mkdir(parents=True)

    first = kafka.cluster_id(config, cluster=True)

    assert kafka.cluster_id(config, cluster=True) == first
    assert len(first) == 22
    assert not first.startswith("-")
    assert kafka.cluster_id(config, cluster=False) != first


@pytest.mark.parametrize(
    ("banner", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "1.8.0_402"', 8),
        ('java version "25" 2025-09-16', 25),
        ('openjdk version "21-ea" 2023-09-19', 21),
    ],
)
def test_java_major_version(tmp_path, banner, major):
    fake_java = tmp_path / "java"
    fake_java.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    fake_java.chmod(0o755)

    assert java_major_version(str(fake_java)) == major


def test_tls_stack_has_own_folder_and_ports(tmp_path):
    config = load_config({"HOME": str(tmp_path)}, tls=True)

    assert config.state_dir == tmp_path / ".local/state/shardbus/stack-tls"
    assert (config.single.broker_port, config.single.controller_port) == (19592, 19593)
    assert config.redis_port == 0
    assert config.tls.tls_dir == config.state_dir / "tls"
    assert config.tls.redis_socket == config.state_dir / "redis" / "redis.sock"


def test_tls_node_properties(tmp_path):
    config = load_config({"HOME": str(tmp_path), "SHARDBUS_TLS_DIR": str(tmp_path / "certs")}, tls=True)

    properties = parse_properties(kafka.render_properties(config, config.single, cluster=False))

    assert properties["listeners"] == "BROKER://127.0.0.1:19592,CONTROLLER://127.0.0.1:19593"
    assert properties["listener.security.protocol.map"] == "CONTROLLER:SSL,BROKER:SSL"
    assert properties["ssl.client.auth"] == "required"
    assert properties["ssl.keystore.type"] == "PEM"
    assert properties["ssl.truststore.location"] == str(tmp_path / "certs" / "ca.pem")
    assert properties["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["super.users"] == "User:broker;User:admin"
    assert properties["ssl.principal.mapping.rules"] == "RULE:^CN=([^,]+).*$/$1/,DEFAULT"
    assert properties["auto.create.topics.enable"] == "false"


def test_tls_redis_listens_on_socket_only(tmp_path):
    from shardbus.devstack import redis_server

    config = load_config({"HOME": str(tmp_path)}, tls=True)

    command = redis_server.server_command(config, "redis-server")

    assert command[command.index("--port") + 1] == "0"
    assert command[command.index("--unixsocket") + 1] == str(config.tls.redis_socket)
    assert command[command.index("--unixsocketperm") + 1] == "700"
    assert "--aclfile" in command


def test_tls_exports_name_admin_identity(tmp_path):
    config = load_config({"HOME": str(tmp_path)}, tls=True)
    config.tls.redis_dir.mkdir(parents=True)
    config.tls.redis_password_file.write_text("pw\n")

    exports = config.exports(cluster=False)

    assert exports["SHARDBUS_KAFKA_BOOTSTRAP"] == "127.0.0.1:19592"
    assert exports["SHARDBUS_KAFKA_TLS_CERT"] == str(config.tls.tls_dir / "admin.pem")
    assert exports["SHARDBUS_REDIS_ADMIN_URL"] == f"unix://admin:pw@{config.tls.redis_socket}?db=0"


def test_tls_exports_before_first_up_say_what_to_run(tmp_path):
    config = load_config({"HOME": str(tmp_path)}, tls=True)

    with pytest.raises(StackError, match="up --tls"):
        config.exports(cluster=False)

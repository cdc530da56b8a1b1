"""docker-compose.yml, ``ha`` profile included, is a valid Compose file and says what runs here
(issue 29). There is no Docker engine on this machine: the file is checked against the Compose
Specification's JSON schema (as check-jsonschema ships it), and its highly available stack against
what the failover tests run: the same node script (deploy/ha/pg-node.sh, which
tests/integration/private_failover.py starts), the same Debian packages, URLs that name every node."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

from orchestrator.settings import broker_nodes, database_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
HA = ROOT / "deploy" / "ha"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_file_is_valid_under_the_compose_specification() -> None:
    schema = json.loads(
        (
            importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
        ).read_text()
    )
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_the_ha_profile_is_a_stack_of_its_own_beside_the_default_one() -> None:
    services = compose()["services"]
    ha = {name for name, s in services.items() if s.get("profiles") == ["ha"]}
    default = {name for name, s in services.items() if "profiles" not in s}
    assert ha | default == set(services)
    assert {"pg-monitor", "pg-1", "pg-2", "rabbitmq-1", "rabbitmq-2", "rabbitmq-3"} <= ha
    assert {"orchestrator-ha", "orchestrator-ha-2"} <= ha
    for name in ha:  # nothing of the default stack is needed by the ha one
        assert set(services[name].get("depends_on", {})) <= ha, name
    published = [p for name in ha for p in services[name].get("ports", [])]
    assert published == ["127.0.0.1:8001:8000"]  # beside the default stack's ports


def test_every_ha_process_names_every_database_node_and_every_broker_node() -> None:
    services = compose()["services"]
    pg_nodes = {"pg-1", "pg-2"}
    rabbit_nodes = {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}
    users = [
        n for n, s in services.items() if s.get("image") == "saga-orchestrator:local" and "profiles" in s
    ]
    assert len(users) == 8  # two replicas and the six participants
    for name in users:
        env = services[name]["environment"]
        for variable in ("ORCHESTRATOR_DATABASE_URL", "PARTICIPANT_DATABASE_URL"):
            url = urlsplit(database_url(env[variable]))
            query = parse_qs(url.query)
            assert {h.split(":")[0] for h in query["host"]} == pg_nodes, (name, variable)
            assert query["target_session_attrs"] == ["read-write"], (name, variable)
        assert {urlsplit(u).hostname for u in broker_nodes(env["ORCHESTRATOR_AMQP_URL"])} == rabbit_nodes
        assert env["ORCHESTRATOR_QUEUE_TYPE"] == "quorum"  # participants' and dead letters' too


def test_the_broker_nodes_form_one_cluster_with_the_plugin_on_each() -> None:
    services = compose()["services"]
    conf = (HA / "rabbitmq.conf").read_text()
    listed = set(re.findall(r"classic_config\.nodes\.\d+ = rabbit@(\S+)", conf))
    assert listed == {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}
    for name in listed:
        service = services[name]
        assert service["hostname"] == name
        assert "rabbitmq-plugins enable --offline rabbitmq_consistent_hash_exchange" in " ".join(
            service["command"]
        )
        assert "./deploy/ha/rabbitmq.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro" in service["volumes"]


def test_the_database_nodes_run_the_script_and_packages_the_failover_test_runs() -> None:
    services = compose()["services"]
    script = HA / "pg-node.sh"
    assert os.access(script, os.X_OK)
    dockerfile = (HA / "pg_auto_failover.Dockerfile").read_text()
    assert "COPY pg-node.sh /usr/local/bin/pg-node" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    for package in ("pg-auto-failover-cli", "postgresql-15-auto-failover"):
        assert package in dockerfile and package in makefile
    assert "NODE_SCRIPT" in (ROOT / "tests" / "integration" / "private_failover.py").read_text()
    assert services["pg-monitor"]["command"] == ["monitor"]
    for name in ("pg-1", "pg-2"):
        command = services[name]["command"]
        assert (
            command[0] == "postgres" and "postgres://autoctl_node@pg-monitor:5432/pg_auto_failover" in command
        )
        assert services[name]["build"]["context"] == "deploy/ha"

"""Every party reads its settings through ``orchestrator.settings``: a shared default written a
second time is how the orchestrator and its participants would come to disagree (a namespace, a
queue type, a broker) without either one failing."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import participant, settings
from orchestrator.adapters.amqp.topology import QUEUE_TYPES as TOPOLOGY_QUEUE_TYPES
from orchestrator.adapters.amqp.topology import Topology
from orchestrator.entrypoints.settings import Settings as ServiceSettings
from participants import cli

ROOT = Path(__file__).resolve().parents[2]
#: the literals of the shared defaults, each of which only orchestrator/settings.py may hold
LITERALS = ('"amqp://guest', "QUEUE_TYPES = ", '5432/orchestrator"')


def test_the_parties_share_one_set_of_defaults() -> None:
    kit = participant.Settings(database_url="postgresql://db/w")
    service = ServiceSettings()
    assert (kit.amqp_url, kit.namespace, kit.queue_type) == (
        service.amqp_url,
        service.namespace,
        service.queue_type,
    )
    assert (Topology().namespace, Topology().queue_type) == (service.namespace, service.queue_type)
    assert TOPOLOGY_QUEUE_TYPES is participant.QUEUE_TYPES is settings.QUEUE_TYPES
    assert cli.DEFAULT_AMQP_URL is settings.DEFAULT_AMQP_URL


@pytest.mark.parametrize("literal", LITERALS)
def test_a_shared_default_is_written_once(literal: str) -> None:
    sources = [
        path
        for folder in ("orchestrator", "participants", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "node_modules" not in path.parts
    ]
    holders = [str(p.relative_to(ROOT)) for p in sources if literal in p.read_text()]
    assert holders == ["orchestrator/settings.py"]


def test_a_bad_value_names_the_variable_and_never_the_password() -> None:
    env = {"N": "many", "S": "-1", "Q": "stream"}
    with pytest.raises(settings.SettingsError, match=r"^N must be an integer, not 'many'$"):
        settings.integer(env, "N", 1)
    with pytest.raises(settings.SettingsError, match=r"^S must be a positive number of seconds"):
        settings.seconds(env, "S", 1.0)
    with pytest.raises(settings.SettingsError, match=r"^Q must be one of classic, quorum, not 'stream'$"):
        settings.one_of(env, "Q", settings.QUEUE_TYPES, "classic")
    assert settings.mask_url("amqp://u:hunter2@rabbit:5672/") == "amqp://u:***@rabbit:5672/"
    assert (settings.integer({"N": ""}, "N", 7), settings.flag({"F": "Yes"}, "F")) == (7, True)

"""The participant kit's settings from the environment: the orchestrator's variable names where
both read the same thing, and one clear error naming the variable that is wrong."""

from __future__ import annotations

import pytest

from orchestrator.participant import Participant, Settings, SettingsError

DATABASE = {"PARTICIPANT_DATABASE_URL": "postgresql://u:secret@db:5432/wallet"}


def test_defaults_and_the_shared_variables() -> None:
    settings = Settings.from_env(DATABASE)
    assert settings.engine_url == "postgresql+asyncpg://u:secret@db:5432/wallet"
    assert (settings.amqp_url, settings.namespace, settings.queue_type) == (
        "amqp://guest:guest@127.0.0.1:5672/",
        "saga",
        "classic",
    )
    assert (settings.concurrency, settings.max_attempts, settings.inbox_retention_days) == (10, 5, 90.0)
    kept = Settings.from_env({**DATABASE, "PARTICIPANT_INBOX_RETENTION_DAYS": "never"})
    assert kept.inbox_retention_days is None

    settings = Settings.from_env(
        {
            **DATABASE,
            "ORCHESTRATOR_AMQP_URL": "amqps://u:p@rabbit:5671/v",
            "ORCHESTRATOR_NAMESPACE": "shop",
            "ORCHESTRATOR_QUEUE_TYPE": "Quorum",
            "PARTICIPANT_CONCURRENCY": "3",
            "PARTICIPANT_MAX_ATTEMPTS": "8",
            "PARTICIPANT_RETRY_BACKOFF": "0.1",
            "PARTICIPANT_INBOX_RETENTION_DAYS": "30",
        }
    )
    assert (settings.namespace, settings.queue_type, settings.concurrency) == ("shop", "quorum", 3)
    assert (settings.max_attempts, settings.retry_backoff, settings.inbox_retention_days) == (8, 0.1, 30.0)


def test_sslmode_is_spelled_for_asyncpg() -> None:
    settings = Settings.from_env({"PARTICIPANT_DATABASE_URL": "postgresql://db/w?sslmode=require"})
    assert settings.engine_url == "postgresql+asyncpg://db/w?ssl=require"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "PARTICIPANT_DATABASE_URL is not set"),
        ({**DATABASE, "PARTICIPANT_CONCURRENCY": "many"}, "PARTICIPANT_CONCURRENCY"),
        ({**DATABASE, "PARTICIPANT_CONCURRENCY": "0"}, "concurrency"),
        ({**DATABASE, "PARTICIPANT_MAX_ATTEMPTS": "0"}, "attempts"),
        ({**DATABASE, "PARTICIPANT_RETRY_BACKOFF": "-1"}, "retry_backoff"),
        ({**DATABASE, "PARTICIPANT_INBOX_RETENTION_DAYS": "0"}, "retention"),
        ({**DATABASE, "ORCHESTRATOR_QUEUE_TYPE": "stream"}, "queue type"),
        ({**DATABASE, "ORCHESTRATOR_AMQP_URL": "http://u:hunter2@rabbit/"}, "AMQP URL"),
        ({"PARTICIPANT_DATABASE_URL": "mysql://u:hunter2@db/w"}, "PostgreSQL"),
    ],
)
def test_a_bad_setting_is_one_error_naming_it_without_a_password(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named) as error:
        Settings.from_env(environ)
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize("service", ["", "a.b", "a#", "a*"])
def test_a_service_name_is_one_routing_key_word(service: str) -> None:
    with pytest.raises(ValueError, match="one routing-key word"):
        Participant(service)


def test_a_schema_must_be_a_plain_identifier() -> None:
    from orchestrator.participant.inbox import Inbox

    with pytest.raises(ValueError, match="lower-case SQL identifier"):
        Inbox(engine=None, schema='x"; DROP TABLE t; --')  # type: ignore[arg-type]

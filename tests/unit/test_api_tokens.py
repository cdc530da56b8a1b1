"""Named API tokens: how they are read (environment, TOML file), what is refused with a clear
error, and that the API tells 401 (who are you?) from 403 (not with that role). The journal's
actor under a named token is in tests/integration/test_api_roles.py."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from orchestrator.entrypoints.settings import Settings, SettingsError
from orchestrator.entrypoints.tokens import Role, TokenError, combined, digest, parse_env, read_file

from .test_api import build

NOWHERE = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
SAGA = "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e"
READER, OPERATOR, ADMIN, LEGACY = ("r" * 20, "o" * 20, "a" * 20, "legacy-token-0123")


def test_the_environment_gives_name_role_token_entries_and_a_token_may_hold_colons() -> None:
    found = parse_env(f"alice:operate:{OPERATOR}, bob:read:{READER}\n carol:admin:x:{ADMIN}")

    assert [(t.name, t.role) for t in found] == [
        ("alice", Role.OPERATE),
        ("bob", Role.READ),
        ("carol", Role.ADMIN),
    ]
    assert found[2].sha256 == digest(f"x:{ADMIN}")
    assert OPERATOR not in repr(found) and digest(OPERATOR).hex() not in repr(found)


def test_a_file_gives_tokens_or_only_their_hashes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        "[[token]]\nname = 'alice'\nrole = 'operate'\n"
        f"sha256 = '{hashlib.sha256(OPERATOR.encode()).hexdigest().upper()}'\n"
        f"[[token]]\nname = 'ops bot'\nrole = 'ADMIN'\ntoken = '{ADMIN}'\n"
    )

    found = read_file(str(path))

    assert [(t.name, t.role, t.sha256) for t in found] == [
        ("alice", Role.OPERATE, digest(OPERATOR)),
        ("ops bot", Role.ADMIN, digest(ADMIN)),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice:operate", "entry 1 is not name:role:token"),
        ("alice:boss:" + OPERATOR, "role must be one of read, operate, admin, not 'boss'"),
        ("alice:read:short-secret", "at least 16 printable characters"),
    ],
)
def test_a_bad_entry_in_the_environment_is_refused_without_showing_the_token(text: str, says: str) -> None:
    with pytest.raises(TokenError, match=says) as refused:
        parse_env(text)
    assert OPERATOR not in str(refused.value) and "short-secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[[token]]\nname='a'\nrole='read'\n", "give token or sha256, one of them"),
        (f"[[token]]\nname='a'\nrole='read'\ntoken='{READER}'\nsha256='{'0' * 64}'\n", "one of them"),
        ("[[token]]\nname='a'\nrole='read'\nsha256='xyz'\n", "sha256 must be 64 hexadecimal digits"),
        (f"[[token]]\nname='a'\nrole='read'\ntoken='{READER}'\nrights='all'\n", "unknown keys rights"),
        (f"[tokens]\nname='a'\nrole='read'\ntoken='{READER}'\n", "unknown keys tokens"),
        ("[[token]\n", "is not TOML"),
        (f"[[token]]\nname=''\nrole='read'\ntoken='{READER}'\n", "name must be 1 to 200 printable ASCII"),
    ],
)
def test_a_bad_file_is_refused_with_what_is_wrong(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)

    with pytest.raises(TokenError, match=says) as refused:
        read_file(str(path))
    assert READER not in str(refused.value)


@pytest.mark.parametrize("short", ["Q9", "hunter2", "x" * 15, "sixteen-chars\n.."])
def test_the_unnamed_admin_token_is_held_to_the_length_of_a_named_one(short: str) -> None:
    with pytest.raises(TokenError, match="ORCHESTRATOR_API_TOKEN: the token must be at least 16") as refused:
        combined([], short)
    assert short not in str(refused.value)


def test_names_and_tokens_given_twice_are_refused() -> None:
    twice = parse_env(f"alice:read:{READER} alice:admin:{ADMIN}")
    same = parse_env(f"alice:read:{READER} bob:admin:{READER}")
    legacy = parse_env(f"alice:read:{LEGACY * 2}")

    with pytest.raises(TokenError, match="'alice' is given twice"):
        combined(twice, None)
    with pytest.raises(TokenError, match="token of 'bob' is the same as another"):
        combined(same, None)
    with pytest.raises(TokenError, match="same as another"):
        combined(legacy, LEGACY * 2)


def test_settings_read_both_sources_and_say_which_variable_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(f"[[token]]\nname='bob'\nrole='read'\ntoken='{READER}'\n")
    monkeypatch.setenv("ORCHESTRATOR_API_TOKENS", f"alice:operate:{OPERATOR}")
    monkeypatch.setenv("ORCHESTRATOR_API_TOKENS_FILE", str(path))

    settings = Settings.from_env()

    assert [t.name for t in settings.api_tokens] == ["alice", "bob"]
    assert settings.api_protected and settings.api_token is None
    assert OPERATOR not in repr(settings) and "api_tokens" not in repr(settings)
    monkeypatch.setenv("ORCHESTRATOR_API_TOKENS_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match=r"ORCHESTRATOR_API_TOKENS_FILE: cannot read .*missing\.toml"):
        Settings.from_env()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    tokens = combined(parse_env(f"reader:read:{READER} alice:operate:{OPERATOR} root:admin:{ADMIN}"), LEGACY)
    context, app = build(api_token=LEGACY, api_tokens=tokens, api_open_reads=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as made:
        yield made
    await context.store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_me_says_who_a_token_is_and_refuses_a_wrong_one(client: httpx.AsyncClient) -> None:
    answers = [await client.get("/me", headers=bearer(t)) for t in (READER, OPERATOR, ADMIN, LEGACY)]
    missing = await client.get("/me")
    wrong = await client.get("/me", headers=bearer("x" * 20))

    assert [r.json() for r in answers] == [
        {"name": "reader", "role": "read"},
        {"name": "alice", "role": "operate"},
        {"name": "root", "role": "admin"},
        {"name": "api", "role": "admin"},
    ]
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="orchestrator"'


async def test_a_role_too_small_is_a_403_that_says_which_role_is_needed(client: httpx.AsyncClient) -> None:
    # past the guard the database is unreachable: a 503 there means the token was let through
    read_by_reader = await client.get("/sagas", headers=bearer(READER))
    cancel_by_reader = await client.post(f"{SAGA}/cancel", headers=bearer(READER))
    cancel_by_operator = await client.post(f"{SAGA}/cancel", headers=bearer(OPERATOR))
    purge_by_operator = await client.post("/dead-letters/purge", json={"ids": [1]}, headers=bearer(OPERATOR))
    delete_by_operator = await client.delete("/dead-letters/1", headers=bearer(OPERATOR))
    migrate_by_operator = await client.post(
        "/workflows/order/migrations",
        json={"from_release": "1", "to_release": "2", "states": {}},
        headers=bearer(OPERATOR),
    )
    purge_by_admin = await client.post("/dead-letters/purge", json={"ids": [1]}, headers=bearer(ADMIN))
    read_by_nobody = await client.get("/sagas")

    assert read_by_reader.status_code == 503
    assert cancel_by_reader.status_code == 403
    assert cancel_by_reader.json()["detail"] == "reader has the role read; this needs operate"
    assert cancel_by_operator.status_code == 503
    assert [r.status_code for r in (purge_by_operator, delete_by_operator, migrate_by_operator)] == [403] * 3
    assert purge_by_operator.json()["detail"] == "alice has the role operate; this needs admin"
    assert purge_by_admin.status_code == 503
    assert read_by_nobody.status_code == 401


async def test_no_token_at_all_serves_everyone_as_an_anonymous_admin() -> None:
    context, app = build(api_token=None)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        me = await client.get("/me")
    await context.store.close()

    assert me.json() == {"name": "anonymous", "role": "admin"}


async def test_no_token_is_logged(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await client.post(f"{SAGA}/cancel", headers=bearer(READER))
    await client.post(f"{SAGA}/cancel", headers=bearer(OPERATOR))

    for secret in (READER, OPERATOR, digest(READER).hex()):
        assert secret not in caplog.text

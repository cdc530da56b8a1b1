"""Named API tokens with roles, read from a file or the environment at start.

One shared token cannot say who acted, so the journal's actor was whatever the caller put in
``X-Actor``. A named token is its owner's: the API journals the owner's name, and its role says
what the owner may do. Only a SHA-256 of each token is kept in memory (a file may give just that,
so that it holds no secret at all), and neither a token nor its hash is ever logged.

Roles, each including the one before:

- ``read``: every read, ``/metrics`` and ``/openapi.json`` included (unless
  ``ORCHESTRATOR_API_OPEN_READS`` opens them);
- ``operate``: starts, operator actions on sagas, dead-letter replays;
- ``admin``: deleting and purging dead letters, migrating sagas between releases.

The single ``ORCHESTRATOR_API_TOKEN`` is an admin token without a name (it keeps honouring
``X-Actor``, as it did).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

__all__ = ["MIN_TOKEN_LENGTH", "ApiToken", "Role", "TokenError", "digest", "parse_env", "read_file"]

#: a named token shorter than this is refused: it would be guessable
MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"^[!-~]([ -~]{0,198}[!-~])?$")  # as X-Actor: printable ASCII, no edge spaces
_HEX = re.compile(r"^[0-9a-f]{64}$")


class TokenError(ValueError):
    """A token entry cannot be used; the message says which and why, never the token."""


class Role(IntEnum):
    READ = 1
    OPERATE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def named(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise TokenError(f"role must be one of read, operate, admin, not {text!r}") from None


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: Role
    #: SHA-256 of the token; kept out of repr so that no log line or traceback shows it
    sha256: bytes = field(repr=False)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _entry(name: object, role: object, token: object, sha256: object, where: str) -> ApiToken:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TokenError(f"{where}: name must be 1 to 200 printable ASCII characters, not {name!r}")
    if not isinstance(role, str):
        raise TokenError(f"{where} ({name}): role must be one of read, operate, admin")
    if (token is None) == (sha256 is None):
        raise TokenError(f"{where} ({name}): give token or sha256, one of them")
    if token is not None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH or not token.isprintable():
            raise TokenError(
                f"{where} ({name}): the token must be at least {MIN_TOKEN_LENGTH} printable characters"
            )
        hashed = digest(token)
    else:
        if not isinstance(sha256, str) or not _HEX.match(sha256.lower()):
            raise TokenError(f"{where} ({name}): sha256 must be 64 hexadecimal digits")
        hashed = bytes.fromhex(sha256)
    try:
        return ApiToken(name, Role.named(role), hashed)
    except TokenError as error:
        raise TokenError(f"{where} ({name}): {error}") from None


def parse_env(text: str, variable: str = "ORCHESTRATOR_API_TOKENS") -> list[ApiToken]:
    """``name:role:token`` entries separated by commas or white space (a token may hold colons)."""
    found = []
    for number, item in enumerate(re.split(r"[,\s]+", text.strip()), 1):
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) != 3:
            raise TokenError(f"{variable}: entry {number} is not name:role:token")
        found.append(_entry(parts[0], parts[1], parts[2], None, f"{variable} entry {number}"))
    return found


def read_file(path: str, variable: str = "ORCHESTRATOR_API_TOKENS_FILE") -> list[ApiToken]:
    """A TOML file of ``[[token]]`` tables, each with ``name``, ``role`` and ``token`` or ``sha256``
    (the hex SHA-256 of the token, so that the file holds no secret)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise TokenError(f"{variable}: cannot read {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TokenError(f"{variable}: {path} is not TOML: {error}") from None
    tables = data.get("token")
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise TokenError(
            f"{variable}: {path} has unknown keys {', '.join(unknown)}; expected [[token]] tables"
        )
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise TokenError(f"{variable}: {path} has no [[token]] tables")
    found = []
    for number, table in enumerate(tables, 1):
        extra = sorted(set(table) - {"name", "role", "token", "sha256"})
        where = f"{path} token {number}"
        if extra:
            raise TokenError(f"{variable}: {where} has unknown keys {', '.join(extra)}")
        found.append(
            _entry(table.get("name"), table.get("role"), table.get("token"), table.get("sha256"), where)
        )
    return found


def combined(entries: list[ApiToken], legacy: str | None) -> tuple[ApiToken, ...]:
    """The entries, checked for names and tokens given twice (which would make the actor ambiguous),
    and the unnamed admin token (``ORCHESTRATOR_API_TOKEN``), held to the length of a named one:
    it may do the most."""
    if legacy is not None and (len(legacy) < MIN_TOKEN_LENGTH or not legacy.isprintable()):
        raise TokenError(
            f"ORCHESTRATOR_API_TOKEN: the token must be at least {MIN_TOKEN_LENGTH} printable characters"
        )
    names: set[str] = set()
    hashes = {digest(legacy)} if legacy else set()
    for entry in entries:
        if entry.name in names:
            raise TokenError(f"the token name {entry.name!r} is given twice")
        if entry.sha256 in hashes:
            raise TokenError(f"the token of {entry.name!r} is the same as another token")
        names.add(entry.name)
        hashes.add(entry.sha256)
    return tuple(entries)

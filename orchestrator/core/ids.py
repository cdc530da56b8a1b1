"""The ids of the commands a saga sends and of the timers it sets.

A participant dedupes on a command's id and derives its reply's id from it (docs/protocol.md,
section 6), and the orchestrator takes a reply only when its id is that of a command the saga
sent. So nobody on the bus may compute a command's id before the command exists: were the ids a
function of what anyone can see (the saga id, which follows from the workflow and key, and the
saga's version), a forged message carrying a future reply's id would make the real reply a
duplicate. Keyed ids are an HMAC with the service's id key, a secret generated at ``migrate`` and
kept in its database (so a restore from backup brings back the key the journal was written with),
over the saga id, the id of the message that caused the command and the command's place among
what that message caused. Not the saga's version: a saga restored to an earlier point decides a
new message at a version it had before, and must not reuse the ids of commands it sent then.

Each journal entry says the scheme it was decided with (its summary's ``ids``; none: versioned),
so replay and ``verify`` decide an entry written before keyed ids as it was written.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

__all__ = [
    "KEYED",
    "VERSIONED",
    "IdKeyAbsent",
    "keyed_command_id",
    "reply_id_for",
    "saga_id_for",
    "timer_message_id",
    "uuid_text",
    "versioned_command_id",
]

#: uuid5 of the saga id over its version and the command's place: the scheme before keyed ids
VERSIONED = 1
#: an HMAC-SHA256 with the service's id key over the saga id, the cause and the place
KEYED = 2


_SAGA_NAMESPACE = uuid.UUID("8f1f7c64-5be4-4a39-9c39-3c1f0b6f3a51").bytes
#: RFC 4122's NAMESPACE_OID, which docs/protocol.md section 6 derives reply ids in
_REPLY_NAMESPACE = bytes.fromhex("6ba7b8129dad11d180b400c04fd430c8")


def _uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(...))`` without building two UUID objects: it runs for every message."""
    return uuid_text(hashlib.sha1(namespace + name.encode()).digest(), 5)


def saga_id_for(workflow: str, key: str) -> str:
    """A saga's id follows from its workflow and key, so the same start twice is one saga."""
    return _uuid5(_SAGA_NAMESPACE, f"{workflow}\x00{key}")


def reply_id_for(command_id: str, reply_type: str) -> str:
    """The ``message_id`` a participant gives its reply of ``reply_type`` to the command
    ``command_id`` (docs/protocol.md, section 6): what tells a reply from a message that only
    names the saga."""
    return _uuid5(_REPLY_NAMESPACE, f"{command_id}:{reply_type}")


class IdKeyAbsent(LookupError):
    """The database holds no id key (its row deleted): ``orchestrator migrate`` makes one."""


def uuid_text(digest: bytes, version: int) -> str:
    """The first 16 bytes of ``digest`` as a UUID's text, its version and RFC 4122 variant set."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | (version << 4)
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def versioned_command_id(saga_id: str, version: int, index: int) -> str:
    """uuid5 with the saga id as namespace, of ``"{version}:{index}"``: computable by anyone who
    knows the saga's id; kept to replay the journal entries written with it."""
    namespace = bytes.fromhex(saga_id.replace("-", ""))
    return uuid_text(hashlib.sha1(namespace + f"{version}:{index}".encode()).digest(), 5)


def keyed_command_id(key: bytes, saga_id: str, cause: str, index: int) -> str:
    """The id of the ``index``-th command the message ``cause`` made saga ``saga_id`` send: the
    same for the same message decided again (a batch retried, a replay), unknowable without
    ``key``. A UUID's text (version 4: random-looking, which it is to anyone without the key)."""
    mac = hmac.new(key, f"command\x00{saga_id}\x00{cause}\x00{index}".encode(), hashlib.sha256)
    return uuid_text(mac.digest(), 4)


def timer_message_id(key: bytes | None, saga_id: str, kind: str, version: int) -> str:
    """The message id a fired timer is decided and journaled under: the saga's ``kind`` timer
    (deadline, retry) set at ``version``. Keyed like a command's, since it causes commands (and
    names them, as their cause); without a key, ``kind:saga:version``."""
    if key is None:
        return f"{kind}:{saga_id}:{version}"
    mac = hmac.new(key, f"timer\x00{saga_id}\x00{kind}\x00{version}".encode(), hashlib.sha256)
    return uuid_text(mac.digest(), 4)

"""The AMQP libraries' lines about a broker that went away, which the service rides out.

On every broker restart, aiormq logs ERROR ``Unexpected connection close from remote``, ERROR
``error when creating transport`` for each failed reconnect attempt, and a WARNING with a
traceback (``Cancelling cause reader exited abnormally``); aio-pika logs ERROR for its robust
channel's ``_on_close`` callback, which finds no transport to reopen on. Nothing is wrong: the
connections reconnect, and the service says so once, as a WARNING of its own ("connection lost
...; reconnecting"). ERROR lines and tracebacks on every rolling restart of the broker would page
someone for nothing (issue 29), so these records are made DEBUG records without their traceback,
and are dropped unless their logger is enabled for DEBUG. Anything else those loggers say is
left as it is.

asyncpg's pool does the same at a database failover: a WARNING with a traceback ("Failed to
restore the pool connection floor") each time it cannot reopen a connection while no host takes
writes; the service's own WARNING ("batch ... cannot commit") already says the database is away.
"""

from __future__ import annotations

import logging

__all__ = ["ReconnectNoise", "quiet_reconnects"]

#: (logger, how its message starts): what a broker restart makes the libraries say
_NOISE = (
    ("aiormq.connection", "Unexpected connection close from remote"),
    ("aiormq.connection", "error when creating transport"),
    ("aiormq.connection", "Cancelling cause reader exited abnormally"),
    ("asyncpg.pool", "Failed to restore the pool connection floor"),
)
#: aio-pika's callback error, by the callback it names
_CLOSE_CALLBACK = ("aio_pika.tools", "RobustChannel._on_close")


class ReconnectNoise(logging.Filter):
    """Demotes the libraries' reconnect chatter to DEBUG (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_noise(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _is_noise(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if any(record.name == name and message.startswith(start) for name, start in _NOISE):
        return True
    name, callback = _CLOSE_CALLBACK
    if record.name != name:
        return False
    try:  # the callback's repr, at the time it is logged (later it may no longer make one)
        return callback in record.getMessage()
    except Exception:
        return False


def quiet_reconnects() -> None:
    """Attach the filter to the loggers that say those things (idempotent)."""
    for name in {name for name, _ in (*_NOISE, _CLOSE_CALLBACK)}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ReconnectNoise) for f in logger.filters):
            logger.addFilter(ReconnectNoise())

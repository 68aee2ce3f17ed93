"""Database engine construction for the ledger (PostgreSQL through asyncpg),
the time limits every connection runs under, and the classification of
database failures into "retry the transaction", "the database is not
available right now" and "the input was not valid for a column".

Dropped connections: the pool does not ping a connection before handing it
out (`pool_pre_ping` costs a BEGIN, a `;` and a ROLLBACK, three round trips,
on every checkout). Instead:

- on checkout, a connection whose socket the server has already closed (a
  restart, a terminated session: the event loop has seen the close) is
  replaced by a fresh one, at no cost (`_replace_closed`, a pool event);
- a connection that dies in use anyway is recognised by `is_connection_lost`
  and the work runs once more on a fresh connection, where that is safe: a
  transaction that had not reached its COMMIT (`LedgerService.atomically`),
  and reads through `once_more_if_dropped` (the partner guard's statement).
  A failure during COMMIT is ambiguous and never retried.
"""

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import msgspec
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ledger.errors import (
    LedgerError,
    MemberNotActive,
    MemberNotFound,
    PartnerNotFound,
    PeriodClosed,
)

# Deadlock, serialization failure, lock wait over lock_timeout: the whole
# transaction rolled back and may run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# Statement timeout, server shutting down or starting, too many connections,
# out of resources.
UNAVAILABLE_SQLSTATES = frozenset({"57014", "57P01", "57P02", "57P03", "53300", "53100", "53200"})
# "database ... is not currently accepting connections" (ALLOW_CONNECTIONS
# false, during maintenance): a state the class shares with programming errors,
# so only with that message.
NOT_ACCEPTING_SQLSTATE = "55000"
# The server ended the session (administrator command, crash of another
# backend): its open transaction is gone, nothing of it committed.
SESSION_ENDED_SQLSTATES = frozenset({"57P01", "57P02"})

R = TypeVar("R")
log = logging.getLogger("loyalty.ledger")


@dataclass(frozen=True)
class DatabaseLimits:
    """How long one statement, one row-lock wait, one pool checkout and one
    round trip may take before the request gives up (milliseconds / seconds;
    a statement timeout of 0 and a command timeout of None: no limit)."""

    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 3_000
    pool_timeout_seconds: float = 5.0
    command_timeout_seconds: float | None = 30.0


class DatabaseUrlError(ValueError):
    """A database URL this cannot use. The message never holds the URL (it
    may hold a password)."""


# libpq's sslmode values; asyncpg takes the same ones as its `ssl` argument.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters passed on to asyncpg.connect as they are (it takes them as
# keyword arguments of the same name): a Unix socket directory or a list of
# hosts, and which of several servers to use. `sslmode` (libpq's, what
# managed PostgreSQL providers give) becomes asyncpg's `ssl`.
URL_PARAMETERS = ("sslmode", "ssl", "host", "port", "target_session_attrs")
# Hosts that are this machine: a URL naming one without ?sslmode= connects in
# the clear (`async_url`).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def async_url(url: str) -> str:
    """Normalise a PostgreSQL URL to the SQLAlchemy asyncpg dialect: libpq's
    `sslmode` becomes asyncpg's `ssl`; a parameter asyncpg does not take, a
    port out of range and a URL of another database raise DatabaseUrlError."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
            break
    else:
        raise DatabaseUrlError("not a PostgreSQL URL (postgresql://USER@HOST:5432/DATABASE)")
    parts = _checked(url)
    mode = parts.query.get("sslmode")
    if mode is None:
        if parts.query.get("ssl") is not None or parts.host not in LOOPBACK_HOSTS:
            return url
        # A server on this host: nothing to encrypt, and asyncpg's default
        # (`prefer`: ask for TLS, go on in the clear when refused) leaves a
        # connection that costs about twice the CPU and latency per round trip.
        mode = "disable"
    parts = parts.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
    return parts.render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """A PostgreSQL URL as a DSN for asyncpg.connect (which reads libpq's
    `sslmode`, and takes any parameter it does not know for a server setting):
    checked as `async_url` checks it."""
    parts = _checked(async_url(url)).set(drivername="postgresql")
    mode = parts.query.get("ssl")
    if mode is not None:
        parts = parts.difference_update_query(["ssl"]).update_query_dict({"sslmode": mode})
    return parts.render_as_string(hide_password=False)


def _checked(url: str):
    from sqlalchemy.engine import make_url

    try:
        parts = make_url(url)
        port = parts.port
    except ValueError:
        raise DatabaseUrlError("the port is not a number") from None
    if port is not None and not 1 <= port <= 65535:
        raise DatabaseUrlError(f"port {port} is out of range (1 to 65535)")
    for name, value in parts.query.items():
        if name not in URL_PARAMETERS:
            raise DatabaseUrlError(
                f"unsupported parameter ?{name}= (supported: {', '.join(URL_PARAMETERS)})"
            )
        if name in ("sslmode", "ssl") and value not in SSL_MODES:
            raise DatabaseUrlError(f"?{name}= is one of {', '.join(SSL_MODES)}")
        if name == "port":
            for each in value if isinstance(value, tuple) else (value,):
                if not each.isdigit() or not 1 <= int(each) <= 65535:
                    raise DatabaseUrlError(f"?port= is a port number (1 to 65535), not {each!r}")
    if "ssl" in parts.query and "sslmode" in parts.query:
        raise DatabaseUrlError("give ?sslmode= or ?ssl=, not both")
    return parts


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    limits: DatabaseLimits | None = None,
    autocommit: bool = False,
) -> AsyncEngine:
    """The ledger's engine: READ COMMITTED plus explicit row locks (SELECT ...
    FOR UPDATE in a fixed order) is the concurrency model, see ledger/journal.py.
    `autocommit`: single-statement reads with no BEGIN/ROLLBACK, one round trip
    each. No engine pings on checkout: see the module's docstring for how dead
    connections are replaced instead."""
    limits = limits or DatabaseLimits()
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_timeout=limits.pool_timeout_seconds,
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        # json / jsonb values read (the accrual's aggregates, stored results)
        # decoded by msgspec: half the time of the standard library's.
        json_deserializer=msgspec.json.decode,
        connect_args={
            "command_timeout": limits.command_timeout_seconds,
            "timeout": limits.pool_timeout_seconds,  # establishing a connection
            "server_settings": {
                # Periods (tier years, expiry dates, days of a transfer limit) are
                # UTC: date arithmetic in SQL must not follow the server's zone.
                "TimeZone": "UTC",
                "statement_timeout": str(limits.statement_timeout_ms),
                "lock_timeout": str(limits.lock_timeout_ms),
                # A transaction left open by a crashed worker frees its locks.
                "idle_in_transaction_session_timeout": "60000",
                # JIT compiles plans the planner thinks expensive; the reports'
                # estimates are off by orders of magnitude (grouped CTEs), and
                # compiling took 3.9 s of a 9 s breakage read on the demo.
                "jit": "off",
            },
        },
    )
    event.listen(engine.sync_engine.pool, "checkout", _replace_closed)
    return engine


def _replace_closed(dbapi_connection, connection_record, connection_proxy) -> None:
    """Pool checkout: a connection the server has closed is replaced by a new
    one (the pool reconnects on DisconnectionError). No round trip: asyncpg
    knows the socket closed once the event loop has read the close."""
    driver = getattr(dbapi_connection, "_connection", None)
    if driver is not None and driver.is_closed():
        raise exc.DisconnectionError("the server closed this pooled connection")


def sqlstate(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind an error raised through SQLAlchemy, if any."""
    orig = getattr(error, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), error):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


_MISSING_KEY = re.compile(r"\)=\((.*)\) is not present")


def refused_party(error: BaseException) -> LedgerError | None:
    """The domain error behind a write the database refused because it named
    an unknown or inactive member or an unregistered partner: the registry's
    triggers (SQLSTATE LM404 unknown member, LM409 member not active, LP404
    unknown partner) and its foreign keys (23503 on a `*_member_fk` or
    `*_partner_fk` constraint); also an entry dated or booked in a closed
    period (SQLSTATE LF422, migration 0015: `PeriodClosed`). None for
    anything else."""
    state = sqlstate(error)
    orig = getattr(error, "orig", None)
    driver = getattr(orig, "__cause__", None) or orig
    party = getattr(driver, "detail", None) or "?"
    if state == "LF422":  # migration 0015: DETAIL is the boundary
        message = getattr(driver, "message", None) or str(driver)
        return PeriodClosed(message, closed_through=party)
    if state == "23503":
        constraint = getattr(driver, "constraint_name", None) or ""
        found = _MISSING_KEY.search(party)
        party = found.group(1) if found else "?"
        if constraint.endswith("_member_fk"):
            state = "LM404"
        elif constraint.endswith("_partner_fk"):
            state = "LP404"
    if state == "LM404":
        return MemberNotFound(f"no enrolled member {party!r}", member_id=party)
    if state == "LM409":
        status = getattr(driver, "hint", None) or "not active"
        return MemberNotActive(
            f"member {party!r} is {status}: its accounts take no postings",
            member_id=party,
            member_status=status,
        )
    if state == "LP404":
        return PartnerNotFound(f"no registered partner {party!r}", partner_id=party)
    return None


@contextlib.asynccontextmanager
async def begin(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()` for writes outside the ledger's retried transactions:
    a write refused for naming an unknown or inactive party raises its domain
    error (see `refused_party`), after the rollback."""
    try:
        async with engine.begin() as conn:
            yield conn
    except exc.DBAPIError as error:
        if (refusal := refused_party(error)) is not None:
            raise refusal from None
        raise


def is_retryable(error: BaseException) -> bool:
    """A transaction that failed this way rolled back and may simply run again."""
    return isinstance(error, exc.DBAPIError) and sqlstate(error) in RETRYABLE_SQLSTATES


def is_unavailable(error: BaseException) -> bool:
    """The database cannot serve the request now (down, restarting, connection
    lost, pool exhausted, a time limit hit): try again later."""
    if isinstance(error, exc.TimeoutError):  # pool checkout
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        state = sqlstate(error)
        if state is not None:
            return (
                state in UNAVAILABLE_SQLSTATES
                or state in RETRYABLE_SQLSTATES
                or (state == NOT_ACCEPTING_SQLSTATE and "accepting connections" in str(error))
                or (state.startswith("08"))
            )
        cause = getattr(error.orig, "__cause__", None)
        return isinstance(
            cause,
            OSError
            | TimeoutError
            | asyncpg.exceptions.ConnectionDoesNotExistError
            | asyncpg.exceptions.InterfaceError,
        ) and not isinstance(cause, asyncpg.exceptions.DataError)
    return isinstance(
        error,
        OSError
        | TimeoutError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError,
    )


def is_connection_lost(error: BaseException) -> bool:
    """The connection died under the work (found closed on first use, or the
    server ended the session): the server has rolled back whatever transaction
    was open on it, so work that had not reached its COMMIT may run again on a
    fresh connection. A failure to connect at all is not this (the database is
    down: running again would only wait again)."""
    if not isinstance(error, exc.DBAPIError):
        return False
    return error.connection_invalidated or sqlstate(error) in SESSION_ENDED_SQLSTATES


async def once_more_if_dropped(work: Callable[[], Awaitable[R]]) -> R:
    """`work()` (which checks out its own connection), run once more if the
    connection it got turned out dead (`is_connection_lost`). For reads and
    single autocommit statements; a multi-statement transaction goes through
    `LedgerService.atomically`, which knows whether it reached its COMMIT."""
    try:
        return await work()
    except exc.DBAPIError as error:
        if not is_connection_lost(error):
            raise
        log.info("statement run again on a fresh connection: %s", type(error).__name__)
    return await work()


def is_invalid_input(error: BaseException) -> bool:
    """PostgreSQL (or the driver) refused a value for its column: out of range,
    a NUL character, too long. The request was bad; nothing was written."""
    if not isinstance(error, exc.DBAPIError):
        return False
    state = sqlstate(error)
    if state is not None:
        return state.startswith("22")
    cause = getattr(error.orig, "__cause__", None)
    return isinstance(cause, asyncpg.exceptions.DataError | OverflowError | ValueError)

"""How a `loyalty` command fails: the one place that turns an exception into
one line on standard error (what went wrong, what to do) and an exit code per
kind of failure. `api.cli._Commands` sends every command's exception here
(`loyalty --debug ...` prints the traceback first).

Exit codes:

  0   done
  1   configuration invalid: a LOYALTY_* setting, an unsupported URL scheme,
      a key or data file that cannot be used, a port that is taken
  2   usage: a bad option, argument or value (click's own)
  3   refused by a rule or a conflict (member-accounts-not-settled,
      too-many-keys, request-in-flight, ...)
  4   not found: an unknown member, partner, card, key, ... (the domain
      errors the API answers 404)
  5   database unavailable: unreachable, missing, refusing the login, or an
      embedded server that did not start
  6   `loyalty verify` found mismatches
  70  unexpected (a bug): the exception's type and message
  130 interrupted (Ctrl-C)
  141 standard output closed by its reader (`... | head`): nothing is printed

Domain errors (ledger/errors.py, partners/errors.py, members/errors.py) keep
their stable code in the line: `Error: member-not-found: no enrolled member 'anan'`."""

import os
import socket
import sys

import click

from api.settings import SettingsError

# Where the command's database is, for the messages (set by api.cli once it
# knows: "127.0.0.1:5432", or the embedded server's directory).
DATABASE_META = "loyalty.database"


class Failure(click.ClickException):
    """A failed command: one line on stderr, the exit code of its kind."""

    exit_code = 70


class ConfigurationInvalid(Failure):
    exit_code = 1


class Refused(Failure):
    """The programme refused the operation (a rule, a conflict)."""

    exit_code = 3


class NotFound(Failure):
    """The operation names a member, partner, card, key, ... that does not exist."""

    exit_code = 4


class DatabaseUnavailable(Failure):
    exit_code = 5


class Mismatch(Failure):
    """`loyalty verify` found what the postings do not support."""

    exit_code = 6


class Unexpected(Failure):
    exit_code = 70


class Interrupted(Failure):
    exit_code = 130


class OutputClosed(Failure):
    """The reader of standard output went away (`loyalty ... | head`): not the
    command's failure, so nothing is said, as `yes | head` says nothing; the
    exit code is a shell's for SIGPIPE (128 + 13)."""

    exit_code = 141

    def __init__(self) -> None:
        super().__init__("standard output closed")

    def show(self, file=None) -> None:
        # What is still buffered for the closed pipe would fail again when the
        # interpreter flushes at exit: it goes nowhere instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def failure_for(error: BaseException) -> Failure:
    """The failure an exception stands for (never raises)."""
    from api.embedded import EmbeddedServerError
    from ledger.errors import LedgerError

    if isinstance(error, KeyboardInterrupt):
        return Interrupted("interrupted")
    if isinstance(error, BrokenPipeError):
        return OutputClosed()
    if isinstance(error, SettingsError):
        return ConfigurationInvalid(str(error))
    if isinstance(error, LedgerError):
        kind = NotFound if _answers_not_found(error.code) else Refused
        return kind(f"{error.code}: {error.detail}")
    if isinstance(error, EmbeddedServerError):
        return DatabaseUnavailable(str(error))
    database = _database_failure(error)
    if database is not None:
        return database
    if isinstance(error, OSError) and error.filename:
        return ConfigurationInvalid(f"cannot use {error.filename}: {error.strerror}")
    return Unexpected(
        f"unexpected {type(error).__name__}: {_one_line(error)} "
        "(a bug; `loyalty --debug ...` shows the traceback)"
    )


def _answers_not_found(code: str) -> bool:
    """The API's own mapping decides: a domain error it answers 404 is "not found"."""
    from api.problems import PROBLEMS

    status = PROBLEMS.get(code, (None,))[0]
    return status == 404 if status is not None else code.endswith("-not-found")


def _database_failure(error: BaseException) -> Failure | None:
    """Failures to reach or use PostgreSQL, raised by asyncpg directly or
    through SQLAlchemy; None for anything else."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from ledger.database import is_unavailable, refused_party, sqlstate

    if isinstance(error, DBAPIError):
        refusal = refused_party(error)
        if refusal is not None:
            return failure_for(refusal)
    driver = _driver_error(error)
    state = sqlstate(error)
    where = _where()
    if state == "3D000":  # invalid_catalog_name
        return DatabaseUnavailable(
            f"{_one_line(driver)} on {where}: create it with `loyalty migrate --create-database`"
        )
    if state in ("28P01", "28000"):  # invalid password, authorization specification
        return DatabaseUnavailable(
            f"PostgreSQL on {where} refused the login: {_one_line(driver)}; "
            "check the user and password in LOYALTY_DATABASE_URL"
        )
    if state == "42501":  # insufficient privilege (CREATE DATABASE, ...)
        return DatabaseUnavailable(
            f"PostgreSQL on {where} refused: {_one_line(driver)}; "
            "use a user with that privilege in LOYALTY_DATABASE_URL"
        )
    unreachable = (ConnectionError, TimeoutError, socket.gaierror, asyncpg.CannotConnectNowError)
    if isinstance(driver, unreachable) or isinstance(error, PoolTimeout):
        return DatabaseUnavailable(
            f"cannot reach PostgreSQL on {where}: {_one_line(driver) or type(driver).__name__}; "
            "is it running, and does LOYALTY_DATABASE_URL name it?"
        )
    if isinstance(error, DBAPIError) and is_unavailable(error):
        return DatabaseUnavailable(
            f"PostgreSQL on {where} is not available: {_one_line(driver)}; try again shortly"
        )
    return None


def _driver_error(error: BaseException) -> BaseException:
    """The driver's own exception behind a SQLAlchemy one (else the error)."""
    orig = getattr(error, "orig", None)
    if orig is None:
        return error
    return getattr(orig, "__cause__", None) or orig


def _where() -> str:
    context = click.get_current_context(silent=True)
    where = context.meta.get(DATABASE_META) if context is not None else None
    return where or "the configured server"


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""

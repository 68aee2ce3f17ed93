"""A programme's worked example as a story: steps at fixed dates, each an
action of the programme's own types, played by a player (through the
services here, over HTTP in tests/programmes/http_player.py) into one
outcome per step: what the step did and every member's available points
after it. The README's tables print these outcomes and tests check them."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy import text

from ledger.errors import LedgerError
from ledger.service import LedgerService
from partners.claims import ClaimInput, Claims
from partners.registry import Registry


class DatabaseNotEmpty(LedgerError):
    """A programme is loaded into a database of its own: its tiers, members
    and partners would mix with (and its tiers replace) what is there."""

    code = "database-not-empty"


@dataclass(frozen=True)
class Step:
    at: datetime  # the business time the step happens at
    what: str
    action: object  # one of the programme's action types


@dataclass(frozen=True)
class Outcome:
    step: Step
    result: str  # what it did: points moved, a status, a statement, or the refusal
    available: dict[str, int]  # each member's available points after it


class Player(Protocol):
    async def play(self, step: Step) -> str:
        """Do the step at its date; what it did, or `refused: CODE`."""
        ...


def signed(points: int) -> str:
    return f"{points:+,}"


def refused(code: str) -> str:
    return f"refused: {code}"


def euros(minor: int) -> str:
    return f"{Decimal(minor).scaleb(-2):,.2f} EUR"


def at(text_: str) -> datetime:
    """A story's instant, written without its zone: UTC."""
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


@dataclass(frozen=True)
class FileClaim:
    """A member claims the points of a purchase the partner did not report."""

    member: str
    claim: ClaimInput


@dataclass(frozen=True)
class ConfirmClaim:
    """The programme confirms the claim of `receipt` (a till receipt, a ticket)."""

    partner: str
    receipt: str


class ServicesPlayer(ABC):
    """Plays each step through the real services on a ledger whose clock is
    the step's date; a refusal is its outcome, not an error."""

    def __init__(self, ledger: LedgerService, registry: Registry) -> None:
        self.base = ledger
        self.registry = registry
        self.claims: dict[tuple[str, str], int] = {}  # (partner, receipt) -> claim id

    def ledger_at(self, when: datetime) -> LedgerService:
        return LedgerService(self.base.engine, self.base.config, clock=lambda: when)

    async def play(self, step: Step) -> str:
        try:
            return await self.act(self.ledger_at(step.at), step.at, step.action)
        except LedgerError as refusal:
            return refused(refusal.code)

    async def claim(self, claims: Claims, action: FileClaim | ConfirmClaim, staff: str) -> str:
        """A claim step through the claims service; claims filed are
        remembered by (partner, receipt) for their confirmation."""
        if isinstance(action, FileClaim):
            claim = await claims.file(action.member, action.claim)
            self.claims[(claim.partner_id, claim.receipt)] = claim.id
            return f"claim open, expects {signed(claim.expected_points)}"
        claim = await claims.confirm(self.claims[(action.partner, action.receipt)], staff)
        return signed(claim.points or 0)

    @abstractmethod
    async def act(self, ledger: LedgerService, when: datetime, action: object) -> str:
        """Do one action on a ledger at `when`; what it did."""


async def play(
    player: Player,
    story: Iterable[Step],
    available: Callable[[], Awaitable[dict[str, int]]],
) -> list[Outcome]:
    """Play the story step by step; each outcome with the balances after it."""
    outcomes = []
    for step in story:
        result = await player.play(step)
        outcomes.append(Outcome(step, result, await available()))
    return outcomes


def programme_ledger(ledger: LedgerService, **config) -> LedgerService:
    """The ledger on the same engine and clock with the programme's own
    configuration (its expiry policy, its transfer rules)."""
    return LedgerService(ledger.engine, replace(ledger.config, **config), clock=ledger.clock)


async def exists(ledger: LedgerService, query: str, **parameters) -> bool:
    """Whether `query` finds a row: how a programme tells it is loaded already."""
    async with ledger.engine.connect() as conn:
        return (await conn.execute(text(query), parameters)).first() is not None


async def members_available(ledger: LedgerService, members: Iterable[str]) -> dict[str, int]:
    return {member: (await ledger.balances(member)).available for member in members}


async def load_once(
    ledger: LedgerService,
    registry: Registry,
    *,
    loaded: Callable[[LedgerService], Awaitable[bool]],
    define: Callable[[LedgerService, Registry], Awaitable[None]],
    player: Callable[[LedgerService, Registry], Player],
    story: Iterable[Step],
    members: Mapping[str, str] | Iterable[str],
) -> list[Outcome]:
    """Define the programme and play its story on `ledger` (the programme's
    own, `programme_ledger`); nothing when it is loaded already. One outcome
    per step, with the members' available points after it. A database that
    holds members or partners of anything else (the demo, another programme,
    an interrupted load of this one) is refused before anything is written."""
    if await loaded(ledger):
        return []
    if await exists(ledger, "SELECT 1 FROM members UNION ALL SELECT 1 FROM partners LIMIT 1"):
        raise DatabaseNotEmpty(
            "a programme loads into a database of its own, and this one holds members or "
            "partners already (the demo, another programme, or an interrupted load): "
            "use an empty database (LOYALTY_DATABASE_URL), or for the embedded one an "
            "empty data directory (LOYALTY_DATA_DIR=./.loyalty-PROGRAMME)"
        )
    await define(ledger, registry)
    return await play(player(ledger, registry), story, lambda: members_available(ledger, members))

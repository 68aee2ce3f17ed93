"""A partner's contract: its terms as versions, each an amendment in force from
its `effective_from` (the version in force at a time is the newest one whose
`effective_from` is not after it; before every version's date, version 1,
the contract the partner was registered with), the bounds every term is
checked against, and the arithmetic of the terms: a purchase's submission
window and the end of its return window (the terms in force at the purchase
time), and the partner's credit (today's terms): its outstanding points
(issued by it minus redeemed at it) at its price per point, rounded up, may
not pass its credit limit plus its deposit. Plain functions over plain
data, and the reads of the versions (also inside other transactions).
Versions are written by the registry (partners/registry.py)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from partners.errors import CreditLimitExceeded, InvalidRule, PurchaseTimeOutsideWindow
from partners.money import to_minor

DEFAULT_LATE_SUBMISSION_DAYS = 30
DEFAULT_FUTURE_TOLERANCE_SECONDS = 300
MAX_RETURN_WINDOW_DAYS = 365
MAX_LATE_SUBMISSION_DAYS = 730
MAX_FUTURE_TOLERANCE_SECONDS = 86_400
MAX_PRICE_PER_POINT = Decimal(1000)  # currency units; far beyond any real contract
PRICE_PLACES = 6  # a millionth of a currency unit per point: far finer than any contract
MAX_MONEY_MINOR = 10**15
MAX_REQUESTS_PER_SECOND = 1_000_000


class ContractInput(msgspec.Struct, forbid_unknown_fields=True):
    """A new version of a partner's contract, in force from `effective_from`;
    the terms left out stay as in the version in force at that time."""

    effective_from: datetime
    return_window_days: int | UnsetType = UNSET
    price_per_point: Decimal | UnsetType = UNSET
    redemption_value: Decimal | UnsetType = UNSET
    credit_limit_minor: int | UnsetType | None = UNSET  # null: no limit
    deposit_minor: int | UnsetType = UNSET
    late_submission_days: int | UnsetType = UNSET
    future_tolerance_seconds: int | UnsetType = UNSET
    requests_per_second: int | UnsetType | None = UNSET  # null: the service's default


TERMS = (
    "return_window_days",
    "price_per_point",
    "redemption_value",
    "credit_limit_minor",
    "deposit_minor",
    "late_submission_days",
    "future_tolerance_seconds",
    "requests_per_second",
)


class Contract(msgspec.Struct, frozen=True):
    """One version of a partner's contract."""

    partner_id: str
    version: int
    effective_from: datetime
    currency: str
    return_window_days: int
    price_per_point: Decimal
    redemption_value: Decimal
    credit_limit_minor: int | None
    deposit_minor: int
    late_submission_days: int
    future_tolerance_seconds: int
    requests_per_second: int | None
    created_by: str
    created_at: datetime


class CreditStanding(msgspec.Struct, frozen=True):
    """What a partner owes for the points it has issued, against its limit."""

    partner_id: str
    currency: str
    contract_version: int
    price_per_point: Decimal
    credit_limit_minor: int | None  # None: no limit
    deposit_minor: int
    outstanding_points: int  # issued by the partner minus redeemed at it
    liability_minor: int  # the outstanding points at the price per point, rounded up
    headroom_minor: int | None  # limit + deposit - liability; None: no limit


# -- the contract's arithmetic (pure) ---------------------------------------------


def submission_window(contract: Contract, received_at: datetime) -> tuple[datetime, datetime]:
    """The purchase times the contract accepts in a call received at `received_at`."""
    return (
        received_at - timedelta(days=contract.late_submission_days),
        received_at + timedelta(seconds=contract.future_tolerance_seconds),
    )


def check_purchase_time(contract: Contract, occurred_at: datetime, received_at: datetime) -> None:
    """Refuse a purchase time outside the submission window (edges included)."""
    earliest, latest = submission_window(contract, received_at)
    if not earliest <= occurred_at <= latest:
        raise PurchaseTimeOutsideWindow(
            f"partner {contract.partner_id} may report purchases from "
            f"{contract.late_submission_days} days back to "
            f"{contract.future_tolerance_seconds} seconds ahead; "
            f"{occurred_at.isoformat()} is outside {earliest.isoformat()} .. {latest.isoformat()}",
            earliest=earliest.isoformat(),
            latest=latest.isoformat(),
            late_submission_days=contract.late_submission_days,
            future_tolerance_seconds=contract.future_tolerance_seconds,
        )


def release_time(
    contract: Contract, occurred_at: datetime, received_at: datetime
) -> datetime | None:
    """The end of the return window (None without one): counted from the
    purchase, but never from before the partner reported it, so a back-dated
    purchase does not skip the pending period."""
    if not contract.return_window_days:
        return None
    return max(occurred_at, received_at) + timedelta(days=contract.return_window_days)


def liability_minor(points: int, price_per_point: Decimal, currency: str) -> int:
    # Rounded up: what a partner owes is never understated.
    return to_minor(Decimal(points) * price_per_point, currency, "ceiling")


def credit_standing(
    contract: Contract, issued_balance: int, redeemed_balance: int
) -> CreditStanding:
    """The partner's standing from its ledger accounts: `partner:{id}:issued`
    goes negative by the points it awarded, `partner:{id}:redeemed` positive
    by the points redeemed at it."""
    outstanding = -issued_balance - redeemed_balance
    liability = liability_minor(outstanding, contract.price_per_point, contract.currency)
    limit = contract.credit_limit_minor
    return CreditStanding(
        partner_id=contract.partner_id,
        currency=contract.currency,
        contract_version=contract.version,
        price_per_point=contract.price_per_point,
        credit_limit_minor=limit,
        deposit_minor=contract.deposit_minor,
        outstanding_points=outstanding,
        liability_minor=liability,
        headroom_minor=None if limit is None else limit + contract.deposit_minor - liability,
    )


def check_credit(standing: CreditStanding, points: int) -> None:
    """Refuse `points` more issued by the partner if they take its liability
    beyond its limit plus deposit."""
    if standing.credit_limit_minor is None or points <= 0:
        return
    allowed = standing.credit_limit_minor + standing.deposit_minor
    after = liability_minor(
        standing.outstanding_points + points, standing.price_per_point, standing.currency
    )
    if after > allowed:
        raise CreditLimitExceeded(
            f"partner {standing.partner_id}: {points} points more would take its liability "
            f"to {after} minor units of {standing.currency}, beyond its credit limit of "
            f"{standing.credit_limit_minor} plus deposit of {standing.deposit_minor}",
            currency=standing.currency,
            credit_limit_minor=standing.credit_limit_minor,
            deposit_minor=standing.deposit_minor,
            liability_minor=standing.liability_minor,
            headroom_minor=standing.headroom_minor,
            requested_minor=after - standing.liability_minor,
        )


# The range of a contract version's start: no programme runs before 2000, and
# a change scheduled more than ten years ahead is a typing error.
CONTRACTS_FROM = datetime(2000, 1, 1, tzinfo=UTC)
CONTRACTS_AHEAD = timedelta(days=3653)


def check_terms(terms: dict) -> None:
    def require(ok: bool, field: str, detail: str) -> None:
        if not ok:
            raise InvalidRule(field, detail)

    require(
        0 <= terms["return_window_days"] <= MAX_RETURN_WINDOW_DAYS,
        "return_window_days",
        f"between 0 and {MAX_RETURN_WINDOW_DAYS}",
    )
    for field in ("price_per_point", "redemption_value"):
        value = terms[field]
        require(
            value.is_finite()
            and 0 <= value <= MAX_PRICE_PER_POINT
            and value.normalize().as_tuple().exponent >= -PRICE_PLACES,
            field,
            f"between 0 and {MAX_PRICE_PER_POINT}, with at most {PRICE_PLACES} decimal places",
        )
    limit = terms["credit_limit_minor"]
    require(
        limit is None or 0 <= limit <= MAX_MONEY_MINOR,
        "credit_limit_minor",
        f"null (no limit) or between 0 and {MAX_MONEY_MINOR}",
    )
    require(
        0 <= terms["deposit_minor"] <= MAX_MONEY_MINOR,
        "deposit_minor",
        f"between 0 and {MAX_MONEY_MINOR}",
    )
    require(
        0 <= terms["late_submission_days"] <= MAX_LATE_SUBMISSION_DAYS,
        "late_submission_days",
        f"between 0 and {MAX_LATE_SUBMISSION_DAYS}",
    )
    require(
        0 <= terms["future_tolerance_seconds"] <= MAX_FUTURE_TOLERANCE_SECONDS,
        "future_tolerance_seconds",
        f"between 0 and {MAX_FUTURE_TOLERANCE_SECONDS}",
    )
    rate = terms["requests_per_second"]
    require(
        rate is None or 1 <= rate <= MAX_REQUESTS_PER_SECOND,
        "requests_per_second",
        f"null (the service's default) or between 1 and {MAX_REQUESTS_PER_SECOND}",
    )


# -- reading contracts (also inside other transactions) ----------------------------

# The version in force at {at}: the newest one in force from a time not after
# it; before every version's date, version 1.
IN_FORCE = (
    "ORDER BY c.effective_from <= {at} DESC, "
    "CASE WHEN c.effective_from <= {at} THEN c.version END DESC, c.version LIMIT 1"
)
CONTRACT_COLUMNS = (
    "c.partner_id, c.version, c.effective_from, p.currency, c.return_window_days, "
    "c.price_per_point, c.redemption_value, c.credit_limit_minor, c.deposit_minor, "
    "c.late_submission_days, c.future_tolerance_seconds, c.requests_per_second, "
    "c.created_by, c.created_at"
)


def version_in_force(versions: list[Contract], at: datetime) -> Contract | None:
    """`IN_FORCE` over versions already read (oldest first): the newest one
    in force from a time not after `at`; before every version's date, version 1."""
    in_force = [c for c in versions if c.effective_from <= at]
    if in_force:
        return max(in_force, key=lambda c: c.version)
    return versions[0] if versions else None


def contract_of(row) -> Contract:
    return Contract(**{f: getattr(row, f) for f in Contract.__struct_fields__})


async def contract_in_force(
    conn: AsyncConnection, partner_id: str, at: datetime
) -> Contract | None:
    """The partner's contract version in force at `at`; None for a partner
    the registry does not know (rules set up for an id with no contract)."""
    row = (
        await conn.execute(
            text(
                f"SELECT {CONTRACT_COLUMNS} FROM partner_contracts c "
                "JOIN partners p ON p.id = c.partner_id WHERE c.partner_id = :p "
                + IN_FORCE.format(at=":at")
            ),
            {"p": partner_id, "at": at},
        )
    ).first()
    return None if row is None else contract_of(row)


async def contracts_by_partner(conn: AsyncConnection) -> dict[str, list[Contract]]:
    """Every contract version of every partner, by partner, oldest first."""
    rows = await conn.execute(
        text(
            f"SELECT {CONTRACT_COLUMNS} FROM partner_contracts c "
            "JOIN partners p ON p.id = c.partner_id ORDER BY c.partner_id, c.version"
        )
    )
    contracts: dict[str, list[Contract]] = {}
    for row in rows:
        contracts.setdefault(row.partner_id, []).append(contract_of(row))
    return contracts

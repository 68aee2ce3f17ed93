"""Balances as of any instant and the trial balance.

As of T: every entry booked (`created_at`) strictly before T (ledger/history.py),
so the trial balance of a month's end is the one as of the next month's first
instant. The trial balance lists each kind of account and asset of the chart
of accounts (DESIGN.md section 3): the members' accounts summed per kind
(`member:*:available`, `pending`, `held`, `qp`: a subledger of millions of
accounts), each partner's `issued` and `redeemed`, and the programme's
accounts. Every entry balances per asset, so the lines of each asset add up
to zero; a total that does not is shown as it is (`balanced` false).

One account's balance names an account that exists in the programme: a
member who is not enrolled or a partner who is not registered is
`MemberNotFound` / `PartnerNotFound` (a typo must not read as a zero
balance); the programme's accounts are fixed names (ledger/accounts.py).
"""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.period import stamp
from ledger.accounts import (
    ASSETS,
    MEMBER_ACCOUNTS,
    PARTNER_ACCOUNTS,
    PROGRAM_ACCOUNTS,
    Address,
)
from ledger.errors import MemberNotFound, PartnerNotFound
from ledger.history import (
    AccountBalanceAsOf,
    AccountTypeBalance,
    account_balance_as_of,
    balances_by_account_type_as_of,
    snapshot,
)

PERIOD_TIME = "created_at"

LABELS = {
    ("member", "available"): "members: available points",
    ("member", "pending"): "members: pending points (return window)",
    ("member", "held"): "members: held points (open authorisations)",
    ("member", "qp"): "members: status-qualifying points",
    ("partner", "issued"): "partner: points issued (bought by the partner)",
    ("partner", "redeemed"): "partner: points redeemed (to be reimbursed)",
    ("program", "promotions"): "programme: promotions funded",
    ("program", "expired"): "programme: expired and forfeited points",
    ("program", "adjustments"): "programme: adjustments and transfer fees",
    ("program", "qp_source"): "programme: status points issued",
}


class TrialBalanceLine(msgspec.Struct, frozen=True):
    account: str  # an address, or member:*:{name} for every member's account of a name
    type: str  # member available | member pending | ... | partner issued | program expired
    label: str
    asset: str
    accounts: int  # accounts with postings before the instant
    balance: int  # signed: positive is a credit balance (what the account holds)


class TrialBalance(msgspec.Struct, frozen=True):
    as_of: str
    period_time: str
    lines: list[TrialBalanceLine]
    totals: dict[str, int]  # per asset: zero when the books balance
    balanced: bool


def _order(line: AccountTypeBalance) -> tuple:
    owners = ("member", "partner", "program")
    names = {
        "member": MEMBER_ACCOUNTS,
        "partner": PARTNER_ACCOUNTS,
        "program": PROGRAM_ACCOUNTS,
    }[line.owner]
    return (
        ASSETS.index(line.asset) if line.asset in ASSETS else len(ASSETS),
        owners.index(line.owner),
        line.partner_id or "",
        names.index(line.name) if line.name in names else len(names),
        line.account,
    )


def trial_balance_of(rows: list[AccountTypeBalance], as_of: datetime) -> TrialBalance:
    """The trial balance from balances by account type (pure)."""
    lines = []
    totals = dict.fromkeys(ASSETS, 0)
    for row in sorted(rows, key=_order):
        label = LABELS.get((row.owner, row.name), f"{row.owner}: {row.name}")
        if row.partner_id is not None:
            label = label.replace("partner:", f"partner {row.partner_id}:", 1)
        lines.append(
            TrialBalanceLine(
                row.account,
                f"{row.owner} {row.name}",
                label,
                row.asset,
                row.accounts,
                row.balance,
            )
        )
        totals[row.asset] = totals.get(row.asset, 0) + row.balance
    return TrialBalance(
        as_of=stamp(as_of),
        period_time=PERIOD_TIME,
        lines=lines,
        totals=totals,
        balanced=not any(totals.values()),
    )


async def trial_balance(engine: AsyncEngine, as_of: datetime) -> TrialBalance:
    """The trial balance as of `as_of` (entries booked before it)."""
    async with snapshot(engine, long=True) as conn:
        rows = await balances_by_account_type_as_of(conn, as_of)
    return trial_balance_of(rows, as_of)


async def check_owner(conn: AsyncConnection, address: Address) -> None:
    """`MemberNotFound` / `PartnerNotFound` when the address's owner was never
    enrolled / registered (a closed or merged member still has its history)."""
    if address.owner == "member":
        table, error = "members", MemberNotFound
        detail = f"no enrolled member {address.owner_id!r}"
        extensions = {"member_id": address.owner_id}
    elif address.owner == "partner":
        table, error = "partners", PartnerNotFound
        detail = f"no registered partner {address.owner_id!r}"
        extensions = {"partner_id": address.owner_id}
    else:
        return  # programme accounts: fixed names, checked by Address.parse
    found = await conn.execute(
        text(f"SELECT 1 FROM {table} WHERE id = :id"), {"id": address.owner_id}
    )
    if found.first() is None:
        raise error(detail, **extensions)


async def balance_as_of(engine: AsyncEngine, address: str, as_of: datetime) -> AccountBalanceAsOf:
    """One account's balance per asset as of `as_of`; `InvalidAccount` for
    an address outside the chart, `MemberNotFound` / `PartnerNotFound` for
    an owner the programme does not know."""
    parsed = Address.parse(address)
    async with snapshot(engine) as conn:
        await check_owner(conn, parsed)
        return await account_balance_as_of(conn, address, as_of)

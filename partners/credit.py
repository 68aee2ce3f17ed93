"""The partner's credit limit as earnings check it: the liability is read
from the partner's ledger accounts (slot sums, no lock) and judged by the
registry's contract terms (partners/contracts.py). An accrual call reads the
accounts once, only when the contract in force sets a limit, then adds the
points of its own accepted earnings, so a batch is checked as if its
purchases had come one by one.
"""

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import queries
from ledger.accounts import PTS, partner_account
from partners.contracts import check_credit, credit_standing
from partners.definitions import Definitions
from partners.earning import Earning


async def partner_points(conn: AsyncConnection, partner_id: str) -> tuple[int, int]:
    """The PTS balances of the partner's `issued` and `redeemed` accounts
    (sums of their slots, no lock)."""
    totals = []
    for name in ("issued", "redeemed"):
        account = await queries.account_balance(conn, partner_account(partner_id, name))
        totals.append(sum(b.balance for b in account.balances if b.asset == PTS))
    return totals[0], totals[1]


class CallCredit:
    """The partner's credit limit across the call: its accounts read once
    (when a limit applies), then the call's own accepted points added."""

    def __init__(
        self, conn: AsyncConnection, partner_id: str, now: datetime, defs: Definitions
    ) -> None:
        self.conn = conn
        self.partner_id = partner_id
        self.now = now
        self.defs = defs
        self.points: tuple[int, int] | None = None
        self.issued_here = 0

    async def check(self, earning: Earning) -> int:
        """The points of `earning` the partner pays for, refused (`CreditLimitExceeded`)
        when they would take its liability beyond its limit."""
        points = sum(
            ln.amount for ln in earning.lines if ln.asset == PTS and ln.funder == "partner"
        )
        if points <= 0:
            return 0
        contract = self.defs.contract_in_force(self.partner_id, self.now)
        if contract is None or contract.credit_limit_minor is None:
            return points
        if self.points is None:
            self.points = await partner_points(self.conn, self.partner_id)
        issued, redeemed = self.points
        check_credit(credit_standing(contract, issued - self.issued_here, redeemed), points)
        return points

    def add(self, points: int) -> None:
        self.issued_here += points

"""Accounts as addresses and the assets they hold (DESIGN.md section 3).

Addresses are created on first use:
  member:{id}:available | pending | held | qp
  partner:{id}:issued | redeemed
  program:promotions | expired | adjustments | qp_source
Amounts on postings are signed: a positive amount increases the account's
balance. A member's points are positive balances; a partner's `issued`
account goes negative by the points it has awarded.
"""

import re
from dataclasses import dataclass

from ledger.errors import InvalidAccount

PTS = "PTS"  # redeemable points
QP = "QP"  # status-qualifying points, never redeemable
ASSETS = (PTS, QP)

MEMBER_ACCOUNTS = ("available", "pending", "held", "qp")
PARTNER_ACCOUNTS = ("issued", "redeemed")
PROGRAM_ACCOUNTS = ("promotions", "expired", "adjustments", "qp_source")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidAccount(f"{kind} id must be 1-64 letters, digits, '.', '_' or '-': {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Address:
    owner: str  # member | partner | program
    owner_id: str | None
    name: str

    @classmethod
    def parse(cls, address: str) -> "Address":
        parts = address.split(":")
        if len(parts) == 3 and parts[0] == "member" and parts[2] in MEMBER_ACCOUNTS:
            return cls("member", check_id("member", parts[1]), parts[2])
        if len(parts) == 3 and parts[0] == "partner" and parts[2] in PARTNER_ACCOUNTS:
            return cls("partner", check_id("partner", parts[1]), parts[2])
        if len(parts) == 2 and parts[0] == "program" and parts[1] in PROGRAM_ACCOUNTS:
            return cls("program", None, parts[1])
        raise InvalidAccount(f"not an account address of this programme: {address!r}")

    @property
    def is_hot(self) -> bool:
        """Touched by many members' transactions: balance kept in slots."""
        return self.owner != "member"

    @property
    def member_id(self) -> str | None:
        return self.owner_id if self.owner == "member" else None

    def __str__(self) -> str:
        if self.owner_id is None:
            return f"{self.owner}:{self.name}"
        return f"{self.owner}:{self.owner_id}:{self.name}"


def member_account(member_id: str, name: str) -> str:
    return f"member:{member_id}:{name}"


def partner_account(partner_id: str, name: str) -> str:
    return f"partner:{partner_id}:{name}"


def program_account(name: str) -> str:
    return f"program:{name}"


def member_of(account: str) -> str | None:
    """The member an address belongs to, or None (cheap; addresses are trusted here)."""
    if account.startswith("member:"):
        return account.split(":", 2)[1]
    return None

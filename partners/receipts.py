"""What an earning answers: the breakdown of its points (also a quote's
answer) and the receipt of a posted purchase."""

from datetime import datetime

import msgspec

from ledger.views import Balances
from partners.earning import Earning, Purchase
from partners.tiers import Tier


class LineView(msgspec.Struct, frozen=True):
    amount: int
    asset: str
    kind: str
    reason: str
    funder: str
    source: str | None = None


class EarningView(msgspec.Struct, frozen=True):
    """The breakdown of an earning: what a quote returns, and what was posted."""

    member_id: str
    partner_id: str
    points: int
    qualifying_points: int
    rule_version: int
    tier: str
    lines: tuple[LineView, ...]


class PurchaseReceipt(msgspec.Struct, frozen=True):
    earning: EarningView
    entry_id: int | None  # None when the purchase earned nothing
    balances: Balances
    release_at: datetime | None = None
    new_tier: str | None = None


def earning_view(member_id: str, purchase: Purchase, tier: Tier, earning: Earning) -> EarningView:
    return EarningView(
        member_id,
        purchase.partner_id,
        earning.points,
        earning.qualifying_points,
        earning.rule_version,
        tier.code,
        tuple(
            LineView(ln.amount, ln.asset, ln.kind, ln.reason, ln.funder, ln.source)
            for ln in earning.lines
        ),
    )

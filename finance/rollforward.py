"""The points-liability roll-forward of a period, in points (PTS), with the
partner lines valued at the contracts' effective-dated rates.

The liability is what members hold: the sum of every member's `available`,
`pending` and `held` points. For a period [from, to) in booking time
(`created_at`, ledger/history.py):

    opening (as of from)
  + issued, partner-funded, per partner      earn      -> partner:{id}:issued
  + issued, programme promotions             earn      -> program:promotions
  - returns of earnings, per partner         reverse   -> partner:{id}:issued
  - returns of promotion points              reverse   -> program:promotions
  - redeemed, per partner                    burn, capture, reward -> partner:{id}:redeemed
  + redemptions refunded, per partner        reverse   -> partner:{id}:redeemed
  - expired                                  expire    -> program:expired
  - forfeited when accounts closed           forfeit   -> program:expired
  - transfer fees                            transfer  -> the fee account
  + adjustments credited / - debited         adjust    -> program:adjustments
  +- anything else, named by kind and account ("other: ...")
  = closing (computed)
    closing (the members' balances as of to)
    difference (closing - computed; zero when it ties out)

Each line is computed from postings: for every entry of the period that
touches a member's liability accounts, its postings on non-member PTS
accounts (which balance the members' side) grouped by the entry's kind and
that account; a line's points are the opposite of those postings. Movements
between members' own accounts (release, hold, void, capture's held part,
transfers without a fee, merges) leave the liability as it is and make no
line. Two independent checks: per entry kind, the members' side must equal
the lines of that kind (`checks`); and the computed closing must equal the
members' balances at the period's end. A difference is shown, never hidden.

Money: a partner line is valued in the partner's currency at the rate of its
contract version in force at the entry's `effective_at` (the purchase or
redemption time; for a reversal, the original entry's): points issued and
returned at `price_per_point` (what the partner pays the programme),
redeemed and refunded at `redemption_value` (what the programme reimburses).
Each (line, contract version) is rounded once, half up, to minor units.
Programme lines (promotions, expiry, fees, adjustments) carry no contract
rate and are in points only; a money value of the liability itself needs a
valuation policy (the consideration allocated per point, IFRS 15), which
breakage will bring.
"""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.period import Period, stamp
from ledger.accounts import MEMBER_ACCOUNTS, PTS
from ledger.history import member_accounts_as_of, snapshot
from ledger.partitions import booked_in
from partners.money import to_minor

PERIOD_TIME = "created_at"
# Every member account in points (the chart, ledger/accounts.py: `qp` is the
# only other member account, and postings_member_asset ties it to QP): the
# statements select them as `member_id IS NOT NULL AND asset = 'PTS'`, which
# the planner estimates from statistics, unlike a test of the account's name.
LIABILITY_ACCOUNTS = tuple(name for name in MEMBER_ACCOUNTS if name != "qp")

# Line codes in the order they are shown, with their label and the contract
# rate that values them (None: points only).
LINES: dict[str, tuple[str, str | None]] = {
    "issued-partner": ("issued, partner-funded", "price_per_point"),
    "issued-promotions": ("issued, programme promotions", None),
    "returned-partner": ("returns of earnings, partner-funded points", "price_per_point"),
    "returned-promotions": ("returns of earnings, promotion points", None),
    "redeemed": ("redeemed", "redemption_value"),
    "refunded": ("redemptions refunded", "redemption_value"),
    "expired": ("expired", None),
    "forfeited": ("forfeited when accounts closed", None),
    "transfer-fees": ("transfer fees", None),
    "adjusted-credit": ("adjustments credited", None),
    "adjusted-debit": ("adjustments debited", None),
    "other": ("other", None),
}


def classify(kind: str, account: str, sign: int) -> tuple[str, str | None]:
    """The line of a counter posting: (code, partner) from the entry's kind,
    the non-member account and the posting's sign (pure)."""
    parts = account.split(":")
    owner, name = parts[0], parts[-1]
    partner = parts[1] if owner == "partner" else None
    if owner == "partner" and name == "issued" and kind in ("earn", "reverse"):
        return ("issued-partner" if kind == "earn" else "returned-partner"), partner
    if account == "program:promotions" and kind in ("earn", "reverse"):
        return ("issued-promotions" if kind == "earn" else "returned-promotions"), None
    if owner == "partner" and name == "redeemed" and kind in ("burn", "capture", "reward"):
        return "redeemed", partner
    if owner == "partner" and name == "redeemed" and kind == "reverse":
        return "refunded", partner
    if account == "program:expired" and kind in ("expire", "forfeit"):
        return ("expired" if kind == "expire" else "forfeited"), None
    if kind == "transfer" and sign > 0:
        return "transfer-fees", None
    if account == "program:adjustments" and kind == "adjust":
        # The counter posting's sign is the opposite of the member's.
        return ("adjusted-credit" if sign < 0 else "adjusted-debit"), None
    return "other", None


class MoneyPart(msgspec.Struct, frozen=True):
    """A line's points under one contract version, valued at its rate."""

    currency: str
    contract_version: int
    basis: str  # price_per_point | redemption_value
    rate: Decimal  # currency units per point
    points: int
    minor: int  # rounded half up


class RollForwardLine(msgspec.Struct):
    code: str
    label: str
    partner_id: str | None
    points: int  # signed: what the line adds to the liability
    postings: int  # counter postings behind it
    kinds: list[str]
    accounts: list[str]
    money: list[MoneyPart] | None = None

    @property
    def money_minor(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for part in self.money or ():
            totals[part.currency] += part.minor
        return dict(totals)


class KindCheck(msgspec.Struct, frozen=True):
    """Per entry kind: the members' liability accounts moved by `member_side`;
    the lines of that kind add up to `lines`; they must be equal."""

    kind: str
    entries: int
    member_side: int
    lines: int
    difference: int


class RollForward(msgspec.Struct):
    period_from: str
    period_to: str
    period_time: str
    asset: str
    liability_accounts: list[str]
    opening: int
    opening_by_account: dict[str, int]
    lines: list[RollForwardLine]
    movement: int
    closing_computed: int
    closing: int
    closing_by_account: dict[str, int]
    difference: int
    checks: list[KindCheck]
    ties: bool
    money: dict[str, dict[str, int]]  # currency -> basis -> minor units, partner lines only


def contract_in_force(partner: str, at: str) -> str:
    """SQL selecting the contract version in force at `at` for `partner` (both
    SQL expressions): the newest version whose `effective_from` is not after
    it, version 1 before every date; one row (version, price_per_point,
    redemption_value, currency), none for a NULL partner. Shared with the
    settlement statements (finance/settlement.py)."""
    return f"""
    SELECT pc.version, pc.price_per_point, pc.redemption_value, pa.currency
    FROM partner_contracts pc JOIN partners pa ON pa.id = pc.partner_id
    WHERE pc.partner_id = {partner}
    ORDER BY pc.effective_from <= {at} DESC,
             CASE WHEN pc.effective_from <= {at} THEN pc.version END DESC, pc.version
    LIMIT 1"""


def value_minor(points: int, rate: Decimal, currency: str) -> int:
    """Points at a contract rate in minor units of `currency`, rounded once,
    half up: the one valuation of partner lines (the roll-forward's per line
    and contract version; the settlement statements' likewise)."""
    return to_minor(Decimal(points) * rate, currency, "half_up")


# The counter postings of the period's entries that touch members' liability
# accounts, grouped by window (`bucket`: which of the consecutive windows
# between `bounds` the entry was booked in), entry kind, account, sign and the
# contract version in force at the pricing time (partner accounts only).
_WINDOW = ("CAST(:start AS timestamptz)", "CAST(:end AS timestamptz)")
COUNTER_POSTINGS = f"""
WITH win AS MATERIALIZED (
    SELECT id, kind, effective_at, reverses_entry_id,
           width_bucket(created_at, CAST(:bounds AS timestamptz[])) AS bucket
    FROM journal_entries
    WHERE created_at >= :start AND created_at < :end AND {booked_in("id", *_WINDOW)}),
counter AS (
    SELECT win.bucket, win.kind, p.account, sign(p.amount)::int AS sign, p.amount,
           coalesce(o.effective_at, win.effective_at) AS priced_at
    FROM postings p JOIN win ON win.id = p.entry_id
    LEFT JOIN journal_entries o ON o.id = win.reverses_entry_id
    WHERE p.asset = 'PTS' AND p.member_id IS NULL AND {booked_in("p.entry_id", *_WINDOW)}
      AND p.entry_id IN (SELECT m.entry_id FROM postings m
                         WHERE m.member_id IS NOT NULL AND m.asset = 'PTS'
                           AND {booked_in("m.entry_id", *_WINDOW)}))
"""
# Each partner's contract versions as ranges of pricing time: from each
# distinct `effective_from` to the next, the newest version in force
# (`contract_in_force`'s rule, set-based), and before the first date the
# lowest version. A hash join on the partner then takes one range per posting,
# instead of a sorted lookup of the contracts per posting.
CONTRACT_RANGES = """
contract_ranges AS MATERIALIZED (
    SELECT r.partner_id, r.lo, r.hi, pc.version, pc.price_per_point,
           pc.redemption_value, pa.currency
    FROM (
        SELECT partner_id, effective_from AS lo,
               lead(effective_from) OVER w AS hi,
               max(version) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                   AS version
        FROM partner_contracts
        WINDOW w AS (PARTITION BY partner_id ORDER BY effective_from)
        UNION ALL
        SELECT partner_id, '-infinity', min(effective_from),
               (array_agg(version ORDER BY version))[1]
        FROM partner_contracts GROUP BY partner_id
    ) r
    JOIN partner_contracts pc ON pc.partner_id = r.partner_id AND pc.version = r.version
    JOIN partners pa ON pa.id = r.partner_id
    WHERE r.hi IS NULL OR r.lo < r.hi)
"""
MOVEMENTS = f"""{COUNTER_POSTINGS.rstrip()},
{CONTRACT_RANGES}
SELECT c.bucket, c.kind, c.account, c.sign, k.version, k.price_per_point,
       k.redemption_value, k.currency, sum(c.amount)::bigint AS amount, count(*) AS postings
FROM counter c LEFT JOIN contract_ranges k
    ON k.partner_id = CASE WHEN c.account LIKE 'partner:%'
                           THEN split_part(c.account, ':', 2) END
   AND c.priced_at >= k.lo AND (k.hi IS NULL OR c.priced_at < k.hi)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


async def movements_by_window(
    conn: AsyncConnection, bounds: Sequence[datetime]
) -> list[list[tuple]]:
    """The movement rows of consecutive windows [bounds[i], bounds[i + 1]) read
    in one pass over the journal (`bounds` ascending, at least two): one list
    per window of (kind, account, sign, version, price_per_point,
    redemption_value, currency, amount, postings)."""
    rows = await conn.execute(
        text(MOVEMENTS),
        {
            "start": bounds[0],
            "end": bounds[-1],
            "bounds": list(bounds),
        },
    )
    # width_bucket numbers the window starting at bounds[i] i + 1.
    windows: list[list[tuple]] = [[] for _ in bounds[1:]]
    for bucket, *row in rows:
        windows[bucket - 1].append(tuple(row))
    return windows


def merge_movements(*parts) -> list[tuple]:
    """Movement rows of consecutive windows as the rows of their union (pure):
    amounts and postings added per (kind, account, sign, contract version),
    so the lines built from them are valued, and rounded, as one window's."""
    merged: dict[tuple, list[int]] = {}
    for rows in parts:
        for *key, amount, postings in rows:
            total = merged.setdefault(tuple(key), [0, 0])
            total[0] += int(amount)
            total[1] += int(postings)
    return [(*key, amount, postings) for key, (amount, postings) in merged.items()]


MEMBER_SIDE = f"""
WITH win AS MATERIALIZED (
    SELECT id, kind FROM journal_entries
    WHERE created_at >= :start AND created_at < :end AND {booked_in("id", *_WINDOW)})
SELECT win.kind, count(DISTINCT p.entry_id) AS entries, sum(p.amount)::bigint AS delta
FROM postings p JOIN win ON win.id = p.entry_id
WHERE p.member_id IS NOT NULL AND p.asset = 'PTS' AND {booked_in("p.entry_id", *_WINDOW)}
GROUP BY win.kind
"""


def _line_order(line: RollForwardLine) -> tuple:
    return (list(LINES).index(line.code), line.partner_id or "", line.label)


def build_lines(rows) -> list[RollForwardLine]:
    """Lines from the grouped counter postings (pure): (kind, account, sign,
    version, price_per_point, redemption_value, currency, amount, postings)."""
    lines: dict[tuple[str, str | None, str], RollForwardLine] = {}
    money: dict[tuple, int] = defaultdict(int)
    for kind, account, sign, version, price, redemption, currency, amount, postings in rows:
        code, partner = classify(kind, account, sign)
        label, basis = LINES[code]
        if code == "other":
            label = f"other: {kind} against {account}"
        key = (code, partner, label)
        line = lines.get(key)
        if line is None:
            line = lines[key] = RollForwardLine(code, label, partner, 0, 0, [], [])
        line.points -= int(amount)
        line.postings += int(postings)
        if kind not in line.kinds:
            line.kinds.append(kind)
        if account not in line.accounts:
            line.accounts.append(account)
        if basis is not None and version is not None:
            rate = Decimal(price if basis == "price_per_point" else redemption)
            money[(key, currency, version, basis, rate)] -= int(amount)
    for (key, currency, version, basis, rate), points in sorted(
        money.items(), key=lambda item: (str(item[0][0]), item[0][2])
    ):
        line = lines[key]
        minor = value_minor(points, rate, currency)
        line.money = [*(line.money or []), MoneyPart(currency, version, basis, rate, points, minor)]
    return sorted(lines.values(), key=_line_order)


async def roll_forward_in(conn: AsyncConnection, period: Period) -> RollForward:
    """The roll-forward read inside the caller's snapshot."""
    window = {"start": period.start, "end": period.end}
    opening = await member_accounts_as_of(conn, period.start, LIABILITY_ACCOUNTS, PTS)
    closing = await member_accounts_as_of(conn, period.end, LIABILITY_ACCOUNTS, PTS)
    (rows,) = await movements_by_window(conn, (period.start, period.end))
    member_side = (await conn.execute(text(MEMBER_SIDE), window)).all()
    lines = build_lines(rows)
    by_kind: dict[str, int] = defaultdict(int)
    for kind, *_, amount, _postings in rows:
        by_kind[kind] -= int(amount)
    checks = []
    for r in sorted(member_side, key=lambda r: r.kind):
        delta = int(r.delta)
        checks.append(
            KindCheck(r.kind, int(r.entries), delta, by_kind[r.kind], delta - by_kind[r.kind])
        )
    movement = sum(line.points for line in lines)
    opening_total, closing_total = sum(opening.values()), sum(closing.values())
    computed = opening_total + movement
    money: dict[str, dict[str, int]] = {}
    for line in lines:
        for part in line.money or ():
            per_basis = money.setdefault(part.currency, {})
            per_basis[part.basis] = per_basis.get(part.basis, 0) + part.minor
    return RollForward(
        period_from=stamp(period.start),
        period_to=stamp(period.end),
        period_time=PERIOD_TIME,
        asset=PTS,
        liability_accounts=[f"member:*:{name}" for name in LIABILITY_ACCOUNTS],
        opening=opening_total,
        opening_by_account=opening,
        lines=lines,
        movement=movement,
        closing_computed=computed,
        closing=closing_total,
        closing_by_account=closing,
        difference=closing_total - computed,
        checks=checks,
        ties=closing_total == computed and not any(c.difference for c in checks),
        money=money,
    )


async def roll_forward(engine: AsyncEngine, period: Period) -> RollForward:
    """The period's roll-forward, every figure from one snapshot."""
    async with snapshot(engine, long=True) as conn:
        return await roll_forward_in(conn, period)

"""Partner settlement statements: per partner and calendar month, what the
partner owes the programme for the points it issued and what the programme
owes the partner for the points redeemed there, each line traceable to the
journal entries behind it. A run is stored with a number and never changes
(migration 0016); documents are rendered by finance/settlement_documents.py.

Periods are calendar months (UTC) of the entries' `effective_at`, the
purchase or redemption time a partner's own books use (not the booking time
of the other finance reports). A statement for (partner, month M) may be run
once M is over (server time >= its end) and covers every entry of the
partner with `effective_at` before M's end that no earlier statement of the
partner covered: those in M make the regular lines; earlier ones (booked
after their month was settled, or of months never run) make adjustment lines
labelled with their own month. Which statement settles an entry is recorded
per entry (`settlement_coverage`, written set-based), so an entry is settled
exactly once whenever it arrives, and an old statement is never edited.

An entry of the partner is one with a PTS posting on `partner:{id}:issued`
or `partner:{id}:redeemed`: holds, voids, releases and programme-funded
points move no money between the partner and the programme. Lines, each in
points and in minor units of the partner's currency:

  issued      earnings' partner-funded points (base, category, tier)  owed by the partner
  promotions  partner-funded promotion and coupon points of earnings  owed by the partner
              (the partner's share of a co-funded promotion: a producer's
              statement charges its share of its dealers' promotions, the
              dealer's the rest; each share is posted on its own account)
  returned    reversals of earnings (all their issued points)         owed by the partner, < 0
  redeemed    burns, captures and reward orders it fulfils           owed to the partner
  refunded    reversals of redemptions                                owed to the partner, < 0
  other       anything else on the partner's accounts: points only, shown, never hidden

Valuation is the roll-forward's (finance/rollforward.py: the contract version
in force at the entry's `effective_at`, for a reversal the original entry's;
issued at `price_per_point`, redeemed at `redemption_value`; each (line,
contract version) rounded once, half up). The net is owed by the partner
minus owed to the partner: positive, the partner pays the programme;
negative, the programme pays the partner. Partner contracts carry no fee
terms, so statements have no fee lines.

Runs for one partner go forward: a month before the partner's last settled
month is refused (its entries are in later statements already); a gap is
allowed, the skipped months' entries become adjustment lines. A reissue
(`reissue=True`) recomputes the latest statement of a settled month over the
same entries (after a contract correction, say) under the next number; the
new row names the one it supersedes. Numbers: `ST-{partner}-{YYYY-MM}-{issue}`,
issue 1 for the first run of the month and gap-free per partner and month.
"""

import re
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.errors import (
    InvalidPeriod,
    SettlementExists,
    SettlementOutOfOrder,
    SettlementPeriodOpen,
    StatementNotFound,
)
from finance.period import EARLIEST, LATEST, stamp
from finance.rollforward import LINES, MoneyPart, classify, contract_in_force, value_minor
from ledger.accounts import partner_account
from ledger.errors import PartnerNotFound
from ledger.history import server_time, snapshot

PERIOD_TIME = "effective_at"


# Settlement line codes in the order shown: (roll-forward line, label, who owes).
SETTLEMENT_LINES: dict[str, tuple[str | None, str, str | None]] = {
    "issued": ("issued-partner", "points issued", "partner"),
    "promotions": ("issued-partner", "promotion points charged to the partner", "partner"),
    "returned": ("returned-partner", "returns of earnings, at the original rates", "partner"),
    "redeemed": ("redeemed", "points redeemed", "programme"),
    "refunded": ("refunded", "redemptions refunded, at the original rates", "programme"),
    "other": (None, "other", None),
}
_FROM_ROLL_FORWARD = {
    "issued-partner": "issued",
    "returned-partner": "returned",
    "redeemed": "redeemed",
    "refunded": "refunded",
}
SIDES = ("issued", "redeemed")


class StatementLine(msgspec.Struct):
    section: str  # regular (the statement's month) | adjustment (an earlier month)
    month: str  # YYYY-MM of the entries' effective_at
    code: str
    label: str
    owed_by: str | None  # partner | programme | None (points only)
    entries: int
    points: int  # positive in the line's own direction (returns and refunds negative)
    amount_minor: int | None  # None: no contract rate values it
    money: list[MoneyPart]


class Statement(msgspec.Struct):
    number: str
    partner_id: str
    partner_name: str
    currency: str
    period: str  # YYYY-MM
    period_from: str
    period_to: str
    period_time: str
    issue: int
    supersedes: str | None
    superseded_by: str | None  # read when shown: the stored statement never changes
    issued_at: str
    issued_by: str
    reason: str | None
    entries: int
    owed_by_partner_minor: int
    owed_to_partner_minor: int
    net_minor: int  # owed by the partner - owed to the partner
    lines: list[StatementLine]


class StatementSummary(msgspec.Struct):
    number: str
    partner_id: str
    period: str
    issue: int
    supersedes: str | None
    superseded_by: str | None
    issued_at: str
    issued_by: str
    currency: str
    entries: int
    net_minor: int


# -- periods -----------------------------------------------------------------------

_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")


def parse_month(value: str, parameter: str = "period") -> date:
    """`YYYY-MM` as the month's first day; `InvalidPeriod` otherwise."""
    found = _MONTH.match((value or "").strip())
    if not found or not 1 <= int(found.group(2)) <= 12:
        raise InvalidPeriod(parameter, f"a calendar month YYYY-MM is required, not {value!r}")
    if not EARLIEST.year <= int(found.group(1)) < LATEST.year:
        raise InvalidPeriod(parameter, f"between {EARLIEST:%Y-%m} and {LATEST:%Y-%m}")
    return date(int(found.group(1)), int(found.group(2)), 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month), UTC."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return start, datetime(following.year, following.month, 1, tzinfo=UTC)


def statement_number(partner_id: str, month: date, issue: int) -> str:
    return f"ST-{partner_id}-{month:%Y-%m}-{issue}"


# -- lines (pure) ------------------------------------------------------------------


def line_code(kind: str, account: str, promotion: bool) -> str:
    """The settlement line of an entry's posting on a partner account, by the
    roll-forward's classification."""
    code = _FROM_ROLL_FORWARD.get(classify(kind, account, 0)[0], "other")
    return "promotions" if code == "issued" and promotion else code


def build_lines(rows, period: date, currency: str) -> list[StatementLine]:
    """Lines from the statement's entries grouped by (account, promotion, kind,
    month, contract version, rate) with their entry count and summed posting
    (pure). Each (line, contract version) is valued once."""
    regular = f"{period:%Y-%m}"
    lines: dict[tuple[str, str, str], StatementLine] = {}
    parts: dict[tuple, int] = defaultdict(int)
    for account, promotion, kind, month, version, rate, entries, amount in rows:
        code = line_code(kind, account, promotion)
        # Issued points are credits to the partner's issued account.
        points = -int(amount) if account.endswith(":issued") else int(amount)
        section = "regular" if month == regular else "adjustment"
        label = SETTLEMENT_LINES[code][1]
        if code == "other":
            label = f"other: {kind} on {account}"
        key = (section, month, label)
        line = lines.get(key)
        if line is None:
            owed_by = SETTLEMENT_LINES[code][2]
            line = lines[key] = StatementLine(
                section, month, code, label, owed_by, 0, 0, None if owed_by is None else 0, []
            )
        line.entries += int(entries)
        line.points += points
        basis = LINES[SETTLEMENT_LINES[code][0]][1] if code != "other" else None
        if basis is not None and version is not None:
            parts[(key, int(version), basis, Decimal(rate))] += points
    for (key, version, basis, rate), points in sorted(
        parts.items(), key=lambda item: (item[0][0], item[0][1])
    ):
        line = lines[key]
        minor = value_minor(points, rate, currency)
        line.money.append(MoneyPart(currency, version, basis, rate, points, minor))
        line.amount_minor = (line.amount_minor or 0) + minor
    order = list(SETTLEMENT_LINES)
    return sorted(
        lines.values(),
        key=lambda ln: (ln.section != "regular", ln.month, order.index(ln.code), ln.label),
    )


def totals(lines: list[StatementLine]) -> tuple[int, int, int]:
    """(owed by the partner, owed to the partner, net) in minor units."""
    by_partner = sum(ln.amount_minor or 0 for ln in lines if ln.owed_by == "partner")
    to_partner = sum(ln.amount_minor or 0 for ln in lines if ln.owed_by == "programme")
    return by_partner, to_partner, by_partner - to_partner


# -- SQL -----------------------------------------------------------------------------

# The entries of the partner not settled yet with effective_at before the
# month's end, recorded as settled by this statement (set-based).
COVER = """
INSERT INTO settlement_coverage (partner_id, entry_id, period, statement)
SELECT :partner, p.entry_id, :period, :number
FROM postings p JOIN journal_entries e ON e.id = p.entry_id
WHERE p.account = ANY(CAST(:accounts AS text[])) AND p.asset = 'PTS'
  AND e.effective_at < :end
  AND NOT EXISTS (SELECT 1 FROM settlement_coverage c
                  WHERE c.partner_id = :partner AND c.entry_id = p.entry_id)
GROUP BY p.entry_id
"""

# The covered entries of (partner, month) valued for this statement: one row
# per entry and partner account, an earning's partner-funded promotion and
# coupon points (its breakdown lines this account's partner pays: funder
# `partner` on the earning partner's account, `partner:{id}` on another's)
# apart from its other points; priced at the entry's effective_at, a
# reversal at its original's.
VALUE = f"""
INSERT INTO settlement_statement_entries (statement, entry_id, account, promotion, kind,
    effective_at, booked_at, reverses_entry_id, partner_reference, priced_at, amount,
    contract_version, rate)
WITH moved AS (
    SELECT p.entry_id, p.account, sum(p.amount)::bigint AS amount
    FROM settlement_coverage c JOIN postings p ON p.entry_id = c.entry_id
    WHERE c.partner_id = :partner AND c.period = :period
      AND p.account = ANY(CAST(:accounts AS text[])) AND p.asset = 'PTS'
    GROUP BY 1, 2),
priced AS (
    SELECT m.entry_id, m.account, m.amount, e.kind, e.effective_at, e.created_at,
           e.reverses_entry_id, e.partner_reference,
           coalesce(o.effective_at, e.effective_at) AS priced_at,
           CASE WHEN e.kind = 'earn' AND split_part(m.account, ':', 3) = 'issued'
           THEN least(-m.amount, coalesce((
               SELECT sum((b ->> 'amount')::bigint) FROM jsonb_array_elements(e.breakdown) b
               WHERE coalesce(b ->> 'asset', 'PTS') = 'PTS'
                 AND CASE coalesce(b ->> 'funder', 'partner')
                     WHEN 'partner' THEN e.partner_id
                     ELSE substr(b ->> 'funder', length('partner:') + 1) END
                     = split_part(m.account, ':', 2)
                 AND b ->> 'kind' IN ('promotion', 'coupon')), 0))
           ELSE 0 END AS promo
    FROM moved m JOIN journal_entries e ON e.id = m.entry_id
    LEFT JOIN journal_entries o ON o.id = e.reverses_entry_id)
SELECT :number, pr.entry_id, pr.account, s.promotion, pr.kind, pr.effective_at, pr.created_at,
       pr.reverses_entry_id, pr.partner_reference, pr.priced_at, s.amount, k.version,
       CASE WHEN split_part(pr.account, ':', 3) = 'issued' THEN k.price_per_point
            ELSE k.redemption_value END
FROM priced pr
CROSS JOIN LATERAL (VALUES (false, pr.amount + pr.promo), (true, -pr.promo)) s(promotion, amount)
LEFT JOIN LATERAL ({contract_in_force("CAST(:partner AS text)", "pr.priced_at")}) k ON true
WHERE s.amount <> 0
"""

GROUPED = """
SELECT account, promotion, kind, to_char(effective_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
       contract_version, rate, count(*) AS entries, sum(amount)::bigint AS amount
FROM settlement_statement_entries WHERE statement = :number
GROUP BY 1, 2, 3, 4, 5, 6
"""

HEADER_COLUMNS = (
    "s.number, s.partner_id, s.partner_name, s.currency, s.period, s.issue, s.supersedes, "
    "n.number AS superseded_by, s.issued_at, s.issued_by, s.reason, s.entries, "
    "s.owed_by_partner_minor, s.owed_to_partner_minor, s.net_minor"
)
FROM_STATEMENTS = (
    "FROM settlement_statements s LEFT JOIN settlement_statements n ON n.supersedes = s.number"
)


# -- running -------------------------------------------------------------------------


async def settle(
    engine: AsyncEngine,
    partner_id: str,
    period: str,
    issued_by: str,
    *,
    reissue: bool = False,
    reason: str | None = None,
) -> Statement:
    """Run (or reissue) the statement of `partner_id` for the month `period`
    (YYYY-MM) and store it; one transaction."""
    month = parse_month(period)
    end = month_bounds(month)[1]
    accounts = [partner_account(partner_id, side) for side in SIDES]
    async with engine.begin() as conn:
        partner = (
            await conn.execute(
                text("SELECT name, currency FROM partners WHERE id = :p"), {"p": partner_id}
            )
        ).one_or_none()
        if partner is None:
            raise PartnerNotFound(f"no partner {partner_id!r}", partner_id=partner_id)
        # One run per partner at a time: the next one sees this one's coverage.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('settlement:' || :p, 0))"),
            {"p": partner_id},
        )
        now = await server_time(conn)
        if now < end:
            raise SettlementPeriodOpen(
                f"{month:%Y-%m} is not over until {stamp(end)}", period=f"{month:%Y-%m}"
            )
        latest = (
            await conn.execute(
                text(
                    "SELECT number, issue FROM settlement_statements "
                    "WHERE partner_id = :p AND period = :m ORDER BY issue DESC LIMIT 1"
                ),
                {"p": partner_id, "m": month},
            )
        ).one_or_none()
        if reissue:
            if latest is None:
                raise StatementNotFound(
                    f"no statement of {partner_id!r} for {month:%Y-%m} to reissue",
                    partner_id=partner_id,
                    period=f"{month:%Y-%m}",
                )
            issue, supersedes = latest.issue + 1, latest.number
        else:
            if latest is not None:
                raise SettlementExists(
                    f"{month:%Y-%m} is settled for {partner_id!r} by {latest.number}; "
                    "reissue it to recompute",
                    number=latest.number,
                )
            last = (
                await conn.execute(
                    text("SELECT max(period) FROM settlement_statements WHERE partner_id = :p"),
                    {"p": partner_id},
                )
            ).scalar_one()
            if last is not None and last > month:
                raise SettlementOutOfOrder(
                    f"{partner_id!r} is settled up to {last:%Y-%m}; {month:%Y-%m} is before it "
                    "and its entries are in those statements",
                    last_period=f"{last:%Y-%m}",
                )
            issue, supersedes = 1, None
        number = statement_number(partner_id, month, issue)
        window = {
            "partner": partner_id,
            "period": month,
            "number": number,
            "accounts": accounts,
            "end": end,
        }
        if not reissue:
            await conn.execute(text(COVER), window)
        await conn.execute(text(VALUE), window)
        rows = (await conn.execute(text(GROUPED), {"number": number})).all()
        lines = build_lines([tuple(r) for r in rows], month, partner.currency)
        owed_by, owed_to, net = totals(lines)
        entries = (
            await conn.execute(
                text(
                    "SELECT count(DISTINCT entry_id) FROM settlement_statement_entries "
                    "WHERE statement = :number"
                ),
                {"number": number},
            )
        ).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO settlement_statements (number, partner_id, partner_name, period, "
                "issue, supersedes, currency, issued_at, issued_by, reason, entries, "
                "owed_by_partner_minor, owed_to_partner_minor, net_minor, lines) VALUES "
                "(:number, :partner, :name, :period, :issue, :supersedes, :currency, :at, :by, "
                ":reason, :entries, :owed_by, :owed_to, :net, CAST(:lines AS jsonb))"
            ),
            {
                "number": number,
                "partner": partner_id,
                "name": partner.name,
                "period": month,
                "issue": issue,
                "supersedes": supersedes,
                "currency": partner.currency,
                "at": now,
                "by": issued_by,
                "reason": reason,
                "entries": entries,
                "owed_by": owed_by,
                "owed_to": owed_to,
                "net": net,
                "lines": msgspec.json.encode(lines).decode(),
            },
        )
        return await _read(conn, number)


# -- reading ---------------------------------------------------------------------------


def _statement(row, lines: list[StatementLine]) -> Statement:
    start, end = month_bounds(row.period)
    return Statement(
        number=row.number,
        partner_id=row.partner_id,
        partner_name=row.partner_name,
        currency=row.currency,
        period=f"{row.period:%Y-%m}",
        period_from=stamp(start),
        period_to=stamp(end),
        period_time=PERIOD_TIME,
        issue=row.issue,
        supersedes=row.supersedes,
        superseded_by=row.superseded_by,
        issued_at=stamp(row.issued_at),
        issued_by=row.issued_by,
        reason=row.reason,
        entries=int(row.entries),
        owed_by_partner_minor=int(row.owed_by_partner_minor),
        owed_to_partner_minor=int(row.owed_to_partner_minor),
        net_minor=int(row.net_minor),
        lines=lines,
    )


async def _read(conn: AsyncConnection, number: str) -> Statement:
    row = (
        await conn.execute(
            text(
                f"SELECT {HEADER_COLUMNS}, s.lines::text AS lines {FROM_STATEMENTS} "
                "WHERE s.number = :number"
            ),
            {"number": number},
        )
    ).one_or_none()
    if row is None:
        raise StatementNotFound(f"no statement {number!r}", number=number)
    return _statement(row, msgspec.json.decode(row.lines, type=list[StatementLine]))


async def statement_in(conn: AsyncConnection, number: str) -> Statement:
    """A stored statement, as issued (with the statement superseding it, if any)."""
    return await _read(conn, number)


async def statement(engine: AsyncEngine, number: str) -> Statement:
    async with snapshot(engine) as conn:
        return await _read(conn, number)


async def statements(
    engine: AsyncEngine, partner_id: str | None = None, period: str | None = None
) -> list[StatementSummary]:
    """The stored statements, by partner, month and issue; an unknown partner
    is `PartnerNotFound`, a bad month `InvalidPeriod`."""
    month = parse_month(period) if period is not None else None
    async with snapshot(engine) as conn:
        if partner_id is not None:
            known = await conn.execute(
                text("SELECT 1 FROM partners WHERE id = :p"), {"p": partner_id}
            )
            if known.one_or_none() is None:
                raise PartnerNotFound(f"no partner {partner_id!r}", partner_id=partner_id)
        rows = (
            await conn.execute(
                text(
                    f"SELECT {HEADER_COLUMNS} {FROM_STATEMENTS} "
                    "WHERE (CAST(:p AS text) IS NULL OR s.partner_id = :p) "
                    "AND (CAST(:m AS date) IS NULL OR s.period = :m) "
                    "ORDER BY s.partner_id, s.period, s.issue"
                ),
                {"p": partner_id, "m": month},
            )
        ).all()
    return [
        StatementSummary(
            number=r.number,
            partner_id=r.partner_id,
            period=f"{r.period:%Y-%m}",
            issue=r.issue,
            supersedes=r.supersedes,
            superseded_by=r.superseded_by,
            issued_at=stamp(r.issued_at),
            issued_by=r.issued_by,
            currency=r.currency,
            entries=int(r.entries),
            net_minor=int(r.net_minor),
        )
        for r in rows
    ]

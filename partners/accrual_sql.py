"""The statements of the accrual path (partners/accrual.py has the flow and
the decisions): plain async functions over the caller's connection and plain
data, each one statement (or none when it has nothing to do), whatever the
number of purchases. The reads open the call, lock the budgeted promotions
and read the members' state under their locks; one write records what the
call's earnings did after they are posted, with the call's stored result.
With `lock` False (a quote) the reads lock nothing; the writes run only
when earning.
"""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.idempotency import CLAIM_COLUMNS, CLAIM_CTES, CLAIMED, STORE_RESULT, Claim
from ledger.journal import member_mutex_cte
from ledger.queries import qp_in_period
from ledger.statements import json_rows, statement


class MemberRows(NamedTuple):
    """What one statement reads about the members under their locks."""

    tiers: dict[str, tuple[str, datetime | None]]  # member -> (tier code, valid until)
    balances: dict[str, dict[str, tuple[int, int]]]  # member -> account name -> (balance, version)
    taken: set[str]  # the call's references already used at the partner
    period_qp: dict[tuple[str, datetime, datetime], int]  # (member, start, end) -> QP
    cap_points: dict[tuple[str, str, datetime], int]  # (member, partner, cap start) -> points


# -- reading --------------------------------------------------------------------


def reference_used(partner: str, reference: str) -> str:
    """SQL: a row when the partner used the reference before, for an entry
    (its claim), a purchase record or a return (references are unique for
    ever across them); none otherwise. One index probe per table, whatever
    the statistics say."""
    return (
        f"SELECT 1 FROM partner_references c WHERE c.partner_id = {partner} "
        f"AND c.partner_reference = {reference} UNION ALL SELECT 1 FROM partner_purchases pp "
        f"WHERE pp.partner_id = {partner} AND pp.partner_reference = {reference} "
        f"UNION ALL SELECT 1 FROM partner_returns pr WHERE pr.partner_id = {partner} "
        f"AND pr.return_reference = {reference} LIMIT 1"
    )


# A call of one purchase (a single earn, a quote) reads its members with a
# plan made once per session: planning that statement took 1.5 ms of the
# server's time for 0.1 ms of execution, on every call (it is never cheap
# enough for PostgreSQL's own choice of a generic plan). `open_call` turns
# generic plans on for the transaction, `read_members` back to PostgreSQL's
# choice for what follows. Each has its own text for such a call: a call of
# many purchases never shares their plans (a generic plan of a thousand
# members' read took a batch from 2,870 to 700-775 purchases/s).
GENERIC_PLANS = "set_config('plan_cache_mode', 'force_generic_plan', true) AS plans, "
AUTO_PLANS = "set_config('plan_cache_mode', 'auto', true) AS plans, "


async def open_call(
    conn: AsyncConnection,
    cards: list[str],
    members: list[str],
    lock: bool,
    take_members: bool = False,
    claim: Claim | None = None,
    one_purchase: bool = False,
) -> tuple[int, dict[str, tuple[str, str]], dict[str, str]]:
    """The definitions' version, the card holders (card -> (member, card
    status)) and the members' registry statuses, the members shared-locked
    when earning; with `take_members`, also the mutex of every active one
    among them (the caller then names them to `Journal.hold_members`). With
    `claim`, the call's idempotency key is claimed first in the same
    statement and settled before anything is returned (the mutex taken only
    when this call took the key)."""
    # Active members only: an account of any other is refused by the database
    # (migration 0007), and the earning refuses that member alone.
    active = "(SELECT id FROM registered WHERE status = 'active')"
    when = CLAIMED if claim is not None else "true"
    mutex = ", " + member_mutex_cte("taken", active, when) if take_members else ""
    row = (
        await conn.execute(
            statement(
                "WITH "
                + (CLAIM_CTES + ", " if claim is not None else "")
                + "held AS MATERIALIZED (SELECT card_number, member_id, status FROM cards "
                "WHERE card_number = ANY(CAST(:cards AS text[]))), "
                "registered AS MATERIALIZED (SELECT id, status FROM members "
                "WHERE id = ANY(CAST(:members AS text[]) || ARRAY(SELECT member_id FROM held)) "
                'ORDER BY id COLLATE "C"'
                + (" FOR SHARE" if lock else "")
                + ")"
                + mutex
                + " SELECT (SELECT version FROM definition_versions) AS version, "
                + (GENERIC_PLANS if one_purchase else "")
                + "(SELECT json_agg(json_build_array(card_number, member_id, status)) "
                "FROM held) AS cards, "
                "(SELECT json_agg(json_build_array(id, status)) FROM registered) AS members"
                + (", " + CLAIM_COLUMNS if claim is not None else "")
            ),
            {"cards": cards, "members": members, **(claim.params() if claim else {})},
        )
    ).one()
    if claim is not None:
        await claim.settle(conn, row.claim_got, row.claim_inserted)
    holders = {c: (m, s) for c, m, s in row.cards or ()}
    statuses = {m: s for m, s in row.members or ()}
    return row.version, holders, statuses


async def lock_budgets(conn: AsyncConnection, ids: list[int], lock: bool) -> dict[int, object]:
    """The promotions `ids` (sorted), fresh, locked in id order when earning."""
    if not ids:
        return {}
    rows = await conn.execute(
        statement(
            "SELECT * FROM promotions WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id"
            + (" FOR UPDATE" if lock else "")
        ),
        {"ids": ids},
    )
    return {r.id: r for r in rows}


def _arrays(rows: Sequence[tuple], **positions: int) -> dict[str, list]:
    """Array parameters for `unnest`: under each name, the rows' values at its
    position."""
    return {name: [row[i] for row in rows] for name, i in positions.items()}


async def read_members(
    conn: AsyncConnection,
    partner_id: str,
    members: list[str],
    accounts: list[str],
    refs: list[str],
    periods: Sequence[tuple[str, datetime, datetime]],
    caps: Sequence[tuple[str, str, datetime]],
    one_purchase: bool = False,
) -> MemberRows:
    """One statement: the members' tiers, the balances of `accounts`, which
    of `refs` the partner already used, the QP of each (member, start, end)
    period and the rule points counted against each (member, partner, start)
    cap. `one_purchase`: the call's `open_call` had it too (see
    GENERIC_PLANS)."""
    row = (
        await conn.execute(
            statement(
                "SELECT "
                + (AUTO_PLANS if one_purchase else "")
                + "(SELECT json_agg(json_build_array(member_id, tier_code, valid_until)) "
                "FROM member_tiers WHERE member_id = ANY(CAST(:members AS text[]))) AS tiers, "
                "(SELECT json_agg(json_build_array(account, balance, version)) FROM balances "
                "WHERE account = ANY(CAST(:accounts AS text[])) AND slot = 0 AND asset = "
                "CASE WHEN split_part(account, ':', 3) = 'qp' THEN 'QP' ELSE 'PTS' END) "
                "AS balances, "
                # One index probe per reference, whatever the statistics say:
                # two EXISTS joined by OR were planned as hashes of all the
                # partner's references, a full read of them per call (1 s at
                # 900,000 references, before autovacuum had counted them).
                "(SELECT json_agg(r) FROM unnest(CAST(:refs AS text[])) AS r, LATERAL ("
                + reference_used(":p", "r")
                + ") AS hit) AS taken, "
                "(SELECT json_agg(json_build_array(q.m, q.s, q.e, "
                + qp_in_period("q.m", "q.s", "q.e")
                + ")) FROM unnest(CAST(:qm AS text[]), "
                "CAST(:qs AS timestamptz[]), CAST(:qe AS timestamptz[])) AS q(m, s, e)) "
                "AS period_qp, "
                # A cap counts an earning's rule points (base and category
                # lines) net of the share of them reversed since.
                "(SELECT json_agg(json_build_array(c.m, c.p, c.s, (SELECT "
                "coalesce(sum(r.points - coalesce((SELECT r.points * x.reversed "
                "/ x.reversible FROM entry_reversals x WHERE x.entry_id = r.id), 0)), 0)"
                "::bigint FROM (SELECT e.id, "
                "sum((line->>'amount')::bigint) AS points FROM journal_entries e, "
                "jsonb_array_elements(e.breakdown) AS line WHERE e.kind = 'earn' "
                "AND e.member_id = c.m AND e.partner_id = c.p AND e.effective_at >= c.s "
                "AND line->>'kind' IN ('base', 'category') GROUP BY e.id) AS r))) "
                "FROM unnest(CAST(:cm AS text[]), CAST(:cp AS text[]), "
                "CAST(:cs AS timestamptz[])) AS c(m, p, s)) AS cap_points"
            ),
            {
                "members": members,
                "accounts": accounts,
                "refs": refs,
                "p": partner_id,
                "qm": [m for m, _, _ in periods],
                "qs": [s for _, s, _ in periods],
                "qe": [e for _, _, e in periods],
                "cm": [m for m, _, _ in caps],
                "cp": [p for _, p, _ in caps],
                "cs": [s for _, _, s in caps],
            },
        )
    ).one()
    found = MemberRows({}, {}, set(row.taken or ()), {}, {})
    for member_id, code, until in row.tiers or ():
        found.tiers[member_id] = (code, _timestamp(until))
    for account, balance, version in row.balances or ():
        _, member_id, name = account.split(":")
        found.balances.setdefault(member_id, {})[name] = (balance, version)
    for (member_id, start, end), (_, _, _, total) in zip(periods, row.period_qp or (), strict=True):
        found.period_qp[(member_id, start, end)] = total
    for key, (_, _, _, total) in zip(caps, row.cap_points or (), strict=True):
        found.cap_points[key] = total
    return found


async def read_usage(
    conn: AsyncConnection, pairs: list[tuple[int, str]], lock: bool
) -> dict[tuple[int, str], int]:
    """The members' usage of promotions, (promotion id, member) -> points,
    for the sorted `pairs`; when earning, every pair's row locked (and
    created at 0 when missing)."""
    usage: dict[tuple[int, str], int] = {}
    if not pairs:
        return usage
    params = {"ids": [p for p, _ in pairs], "members": [m for _, m in pairs]}
    if lock:
        # The no-op update locks an existing row like the insert locks a new one.
        sql = (
            "INSERT INTO promotion_usage AS u (promotion_id, member_id, points) "
            "SELECT i, m, 0 FROM unnest(CAST(:ids AS bigint[]), CAST(:members AS text[])) "
            'AS t(i, m) ORDER BY i, m COLLATE "C" ON CONFLICT (promotion_id, member_id) '
            "DO UPDATE SET points = u.points RETURNING promotion_id, member_id, points"
        )
    else:
        sql = (
            "SELECT u.promotion_id, u.member_id, u.points FROM promotion_usage u "
            "JOIN unnest(CAST(:ids AS bigint[]), CAST(:members AS text[])) AS t(i, m) "
            "ON u.promotion_id = t.i AND u.member_id = t.m"
        )
    for r in await conn.execute(statement(sql), params):
        usage[(r.promotion_id, r.member_id)] = r.points
    return usage


async def read_coupons(
    conn: AsyncConnection, pairs: list[tuple[str, str]], lock: bool
) -> dict[tuple[str, str], object]:
    """The members' coupons named, (member, code) -> row, for the sorted
    `pairs`; locked when earning."""
    coupons: dict[tuple[str, str], object] = {}
    if not pairs:
        return coupons
    rows = await conn.execute(
        statement(
            "SELECT mc.member_id, c.*, mc.activated_at, mc.used_at FROM member_coupons mc "
            "JOIN coupons c ON c.id = mc.coupon_id JOIN unnest(CAST(:members AS text[]), "
            "CAST(:codes AS text[])) AS t(m, code) ON mc.member_id = t.m AND c.code = t.code "
            'ORDER BY mc.member_id COLLATE "C", c.id' + (" FOR UPDATE OF mc" if lock else "")
        ),
        {"members": [m for m, _ in pairs], "codes": [c for _, c in pairs]},
    )
    for r in rows:
        coupons[(r.member_id, r.code)] = r
    return coupons


def _timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# -- writing --------------------------------------------------------------------


async def record_call(
    conn: AsyncConnection,
    partner_id: str,
    purchases: list[tuple[str, str, int | None, str, int, datetime]],
    budget_used: dict[int, int],
    usage: dict[tuple[int, str], int],
    used: list[tuple[int, str, int]],
    changes: list[tuple],
    stored: dict[str, object] | None = None,
) -> set[str]:
    """What the call's earnings did, after they are posted, in one statement
    (a part per kind of record the call has; none: no statement):

    - the purchases (reference, member, entry or None, currency, total,
      occurred at) as reported, with the entries that earned their points:
      later returns are measured against them;
    - the points the promotions paid added to their budgets (promotion id ->
      points) and to the members' usage ((promotion id, member) -> points,
      rows the call locked);
    - the coupons used ((coupon id, member, entry));
    - every tier change, in order ((member, at, entry, from, previous
      validity, to, validity, reason)), and each member's tier after the last
      of them (no lock of its own: the members' mutexes are held);
    - with `stored` (`ledger.idempotency.storing`), the call's result with
      its idempotency key.

    Each part writes another table, so no row is written twice. Returns the
    references recorded (one missing: a concurrent call recorded it first)."""
    parts: list[str] = []
    params: dict[str, object] = {}
    if purchases:
        parts.append(
            "purchases AS (INSERT INTO partner_purchases (partner_id, partner_reference, "
            "member_id, entry_id, currency, total_minor, occurred_at) SELECT :partner, "
            "e->>0, e->>1, CAST(e->>2 AS bigint), e->>3, CAST(e->>4 AS bigint), "
            "CAST(e->>5 AS timestamptz) FROM jsonb_array_elements(CAST(:purchases AS jsonb)) "
            "AS u(e) ON CONFLICT DO NOTHING RETURNING partner_reference)"
        )
        params.update(partner=partner_id, purchases=json_rows(purchases))
    if budget_used:
        parts.append(
            "budgets AS (UPDATE promotions SET budget_used = budget_used + t.points "
            "FROM unnest(CAST(:budget_ids AS bigint[]), CAST(:budget_points AS bigint[])) "
            "AS t(id, points) WHERE promotions.id = t.id)"
        )
        params.update(
            budget_ids=sorted(budget_used),
            budget_points=[budget_used[i] for i in sorted(budget_used)],
        )
    if usage:
        parts.append(
            "usage AS (UPDATE promotion_usage u SET points = u.points + t.points FROM "
            "unnest(CAST(:usage_ids AS bigint[]), CAST(:usage_members AS text[]), "
            "CAST(:usage_points AS bigint[])) AS t(id, m, points) "
            "WHERE u.promotion_id = t.id AND u.member_id = t.m)"
        )
        params.update(
            usage_ids=[i for i, _ in sorted(usage)],
            usage_members=[m for _, m in sorted(usage)],
            usage_points=[usage[k] for k in sorted(usage)],
        )
    if used:
        parts.append(
            "coupons_used AS (UPDATE member_coupons mc SET used_at = now(), "
            "used_entry_id = t.e FROM unnest(CAST(:coupons AS bigint[]), "
            "CAST(:coupon_members AS text[]), CAST(:coupon_entries AS bigint[])) "
            "AS t(c, m, e) WHERE mc.coupon_id = t.c AND mc.member_id = t.m "
            "AND mc.used_at IS NULL)"
        )
        params.update(_arrays(used, coupons=0, coupon_members=1, coupon_entries=2))
    if changes:
        final = {m: (to, at, until) for m, at, _, _, _, to, until, _ in changes}
        members = sorted(final)
        parts.append(
            "tiers AS (INSERT INTO member_tiers (member_id, tier_code, qualified_at, "
            "valid_until) SELECT * FROM unnest(CAST(:tier_members AS text[]), "
            "CAST(:tier_codes AS text[]), CAST(:tier_times AS timestamptz[]), "
            "CAST(:tier_untils AS timestamptz[])) ON CONFLICT (member_id) "
            "DO UPDATE SET tier_code = EXCLUDED.tier_code, "
            "qualified_at = EXCLUDED.qualified_at, valid_until = EXCLUDED.valid_until), "
            "tier_changes AS (INSERT INTO tier_changes (member_id, from_tier, to_tier, "
            "reason, changed_at, entry_id, previous_valid_until) SELECT m, f, t, r, at, e, p "
            "FROM unnest(CAST(:cm AS text[]), CAST(:cfrom AS text[]), CAST(:cto AS text[]), "
            "CAST(:creason AS text[]), CAST(:cat AS timestamptz[]), "
            "CAST(:centry AS bigint[]), CAST(:cprevious AS timestamptz[])) "
            "WITH ORDINALITY AS c(m, f, t, r, at, e, p, n) ORDER BY n)"
        )
        params.update(
            tier_members=members,
            tier_codes=[final[m][0] for m in members],
            tier_times=[final[m][1] for m in members],
            tier_untils=[final[m][2] for m in members],
            **_arrays(changes, cm=0, cat=1, centry=2, cfrom=3, cprevious=4, cto=5, creason=7),
        )
    if stored is not None:
        parts.append(f"stored AS ({STORE_RESULT})")
        params.update(stored)
    if not parts:
        return set()
    recorded = "(SELECT json_agg(partner_reference) FROM purchases)" if purchases else "NULL"
    row = (
        await conn.execute(
            statement("WITH " + ", ".join(parts) + f" SELECT {recorded} AS recorded"), params
        )
    ).one()
    return set(row.recorded or ())


async def club_terms(
    conn: AsyncConnection, members: list[str]
) -> dict[str, list[tuple[str, datetime, datetime]]]:
    """The members' paid club terms (club_payments, migration 0021); none
    read when no promotion for club members may pay."""
    terms: dict[str, list[tuple[str, datetime, datetime]]] = defaultdict(list)
    if members:
        rows = await conn.execute(
            statement(
                "SELECT member_id, club_code, term_starts_at, term_ends_at FROM club_payments "
                "WHERE member_id = ANY(CAST(:members AS text[]))"
            ),
            {"members": members},
        )
        for row in rows:
            terms[row.member_id].append((row.club_code, row.term_starts_at, row.term_ends_at))
    return terms

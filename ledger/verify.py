"""Ledger verification: recompute everything derivable and compare.

Checks that every entry balances per asset with at least two postings, that
every balance equals the sum of its postings, that lots add up to each
member's available points, that pending points and open holds add up to the
pending and held balances, that only a clawback leaves a member in debt, that
each member's QP movements (migration 0025) mirror their QP postings at their
entries' effective times, and that every partner reference an entry carries is
claimed by that entry in `partner_references` (the table that keeps references
unique, migration 0013) and every claim names an entry carrying that reference.
"""

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

CHECKS: dict[str, str] = {
    "entries that do not balance per asset": """
        SELECT entry_id || ' ' || asset || ' sums to ' || sum(amount)
        FROM postings GROUP BY entry_id, asset HAVING sum(amount) <> 0""",
    "entries with fewer than two postings": """
        SELECT e.id || ' has ' || count(p.id) || ' posting(s)'
        FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id
        GROUP BY e.id HAVING count(p.id) < 2""",
    "balances that differ from the sum of their postings": """
        WITH b AS (SELECT account, asset, sum(balance) AS total FROM balances GROUP BY 1, 2),
             p AS (SELECT account, asset, sum(amount) AS total FROM postings GROUP BY 1, 2)
        SELECT coalesce(b.account, p.account) || ' ' || coalesce(b.asset, p.asset)
               || ': balance ' || coalesce(b.total, 0) || ', postings ' || coalesce(p.total, 0)
        FROM b FULL JOIN p ON b.account = p.account AND b.asset = p.asset
        WHERE coalesce(b.total, 0) <> coalesce(p.total, 0)""",
    "lots whose remaining points differ from their movements": """
        SELECT 'lot ' || l.id || ': remaining ' || l.remaining || ', movements '
               || coalesce(sum(m.amount), 0)
        FROM lots l LEFT JOIN lot_movements m ON m.lot_id = l.id
        GROUP BY l.id, l.remaining HAVING l.remaining <> coalesce(sum(m.amount), 0)""",
    "members whose lots do not add up to their available points": """
        WITH a AS (SELECT member_id, balance FROM balances
                   WHERE account LIKE 'member:%:available' AND asset = 'PTS'),
             l AS (SELECT member_id, sum(remaining) AS total FROM lots GROUP BY member_id)
        SELECT coalesce(a.member_id, l.member_id) || ': available '
               || coalesce(a.balance, 0) || ', lots ' || coalesce(l.total, 0)
        FROM a FULL JOIN l ON a.member_id = l.member_id
        WHERE greatest(coalesce(a.balance, 0), 0) <> coalesce(l.total, 0)""",
    "members whose pending points differ from their pending earnings": """
        WITH b AS (SELECT member_id, balance FROM balances
                   WHERE account LIKE 'member:%:pending' AND asset = 'PTS'),
             p AS (SELECT member_id, sum(remaining) AS total FROM pending_points
                   WHERE release_entry_id IS NULL GROUP BY member_id)
        SELECT coalesce(b.member_id, p.member_id) || ': pending ' || coalesce(b.balance, 0)
               || ', unreleased earnings ' || coalesce(p.total, 0)
        FROM b FULL JOIN p ON b.member_id = p.member_id
        WHERE coalesce(b.balance, 0) <> coalesce(p.total, 0)""",
    "members whose held points differ from their open holds": """
        WITH b AS (SELECT member_id, balance FROM balances
                   WHERE account LIKE 'member:%:held' AND asset = 'PTS'),
             h AS (SELECT member_id, sum(amount) AS total FROM holds
                   WHERE status = 'open' GROUP BY member_id)
        SELECT coalesce(b.member_id, h.member_id) || ': held ' || coalesce(b.balance, 0)
               || ', open holds ' || coalesce(h.total, 0)
        FROM b FULL JOIN h ON b.member_id = h.member_id
        WHERE coalesce(b.balance, 0) <> coalesce(h.total, 0)""",
    "members in debt without a clawback": """
        SELECT b.member_id || ': available ' || b.balance FROM balances b
        WHERE b.account LIKE 'member:%:available' AND b.asset = 'PTS' AND b.balance < 0
        AND NOT EXISTS (SELECT 1 FROM postings p JOIN journal_entries e ON e.id = p.entry_id
                        WHERE p.account = b.account AND p.amount < 0 AND e.kind = 'reverse')""",
    "QP movements that differ from the postings they mirror": """
        WITH p AS (SELECT p.entry_id, p.member_id, e.effective_at, sum(p.amount) AS amount
                   FROM postings p JOIN journal_entries e ON e.id = p.entry_id
                   WHERE p.asset = 'QP' AND p.member_id IS NOT NULL
                   GROUP BY 1, 2, 3 HAVING sum(p.amount) <> 0),
             m AS (SELECT entry_id, member_id, effective_at, sum(amount) AS amount,
                          count(*) AS n
                   FROM member_qp_movements GROUP BY 1, 2, 3)
        SELECT 'entry ' || coalesce(p.entry_id, m.entry_id) || ' member '
               || coalesce(p.member_id, m.member_id) || ': postings '
               || coalesce(p.amount, 0) || ' QP, movements ' || coalesce(m.amount, 0)
               || ' QP in ' || coalesce(m.n, 0) || ' row(s)'
        FROM p FULL JOIN m ON m.entry_id = p.entry_id AND m.member_id = p.member_id
                           AND m.effective_at = p.effective_at
        WHERE p.amount IS DISTINCT FROM m.amount OR m.n > 1""",
    "reversals beyond their original": """
        SELECT 'entry ' || entry_id || ': reversed ' || reversed || ' of ' || reversible
        FROM entry_reversals WHERE reversed > reversible""",
    "partner references not claimed by their entry": """
        SELECT 'entry ' || e.id || ': ' || e.partner_id || ' ' || e.partner_reference
               || coalesce(' claimed by entry ' || c.entry_id, ' unclaimed')
        FROM journal_entries e LEFT JOIN partner_references c
          ON c.partner_id = e.partner_id AND c.partner_reference = e.partner_reference
        WHERE e.partner_reference IS NOT NULL AND c.entry_id IS DISTINCT FROM e.id""",
    "partner reference claims naming another entry": """
        SELECT c.partner_id || ' ' || c.partner_reference || ': entry ' || c.entry_id
               || CASE WHEN e.id IS NULL THEN ' does not exist'
                       ELSE ' has ' || coalesce(e.partner_id || ' ' || e.partner_reference,
                                                'no reference') END
        FROM partner_references c LEFT JOIN journal_entries e ON e.id = c.entry_id
        WHERE e.partner_id IS DISTINCT FROM c.partner_id
           OR e.partner_reference IS DISTINCT FROM c.partner_reference""",
}


@dataclass
class VerificationReport:
    entries: int = 0
    postings: int = 0
    accounts: int = 0
    lots: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"entries {self.entries}, postings {self.postings}, accounts {self.accounts}, "
            f"lots {self.lots}"
        ]
        for check in CHECKS:
            found = self.problems.get(check, [])
            lines.append(
                f"{'FAIL' if found else 'ok  '}  {check}" + (f": {len(found)}" if found else "")
            )
            lines.extend(f"        {problem}" for problem in found[:20])
        lines.append("ledger is clean" if self.clean else "LEDGER HAS MISMATCHES")
        return "\n".join(lines)


async def verify(engine: AsyncEngine) -> VerificationReport:
    report = VerificationReport()
    # One snapshot for every check, so concurrent postings cannot cause false alarms.
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        counts = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM journal_entries),"
                    " (SELECT count(*) FROM postings),"
                    " (SELECT count(DISTINCT account) FROM balances),"
                    " (SELECT count(*) FROM lots)"
                )
            )
        ).one()
        report.entries, report.postings, report.accounts, report.lots = counts
        for check, sql in CHECKS.items():
            found = (await conn.exec_driver_sql(sql)).scalars().all()
            if found:
                report.problems[check] = list(found)
        await conn.rollback()
    return report

"""What insights count as a member's activity, spend, points issued and
redemptions: SQL fragments (common table expressions) every figure builds
on, so each figure means the same by the same word.

- **Activity**: a purchase a partner reported (`partner_purchases`, at its
  `occurred_at`), or an earning with no such record (points a partner
  awarded through the ledger's plain earn, at the entry's `effective_at`).
  A purchase returned later is still a visit.
- **Spend**: purchases' amounts net of returns (`total_minor -
  returned_minor`), in minor units of one currency (`:currency`); purchases in
  other currencies are activity without spend.
- **Points issued**: PTS the member's earnings credited (available or
  pending, both funders), net of returns of those earnings; a return counts
  at its purchase's time.
- **Redemptions**: PTS redeemed at partners (burns, captures, reward orders), net of
  refunds; a refund counts at its redemption's time.

Each fragment selects rows in [:start, :end) (bound parameters) and leaves
out members whose account was merged into another (the same person counted
once, under the surviving account)."""

# (member_id, partner_id, at, spend)
ACTIVITY = """
activity AS (
    SELECT pp.member_id, pp.partner_id, pp.occurred_at AS at,
           CASE WHEN pp.currency = :currency
                THEN pp.total_minor - pp.returned_minor ELSE 0 END AS spend
    FROM partner_purchases pp
    WHERE pp.occurred_at >= :start AND pp.occurred_at < :end
    UNION ALL
    SELECT e.member_id, e.partner_id, e.effective_at, 0 FROM journal_entries e
    WHERE e.kind = 'earn' AND e.member_id IS NOT NULL AND e.partner_id IS NOT NULL
      AND e.effective_at >= :start AND e.effective_at < :end
      AND NOT EXISTS (SELECT 1 FROM partner_purchases x WHERE x.entry_id = e.id)),
counted AS (
    SELECT a.* FROM activity a JOIN members m ON m.id = a.member_id
    WHERE m.status <> 'merged')"""

# (member_id, partner_id, points). The earnings of the window, and the
# reversals of those found through their index (few): no lookup of an
# original for every entry (a hash of the whole journal at 20,000 members).
ISSUED = """
issued AS (
    SELECT x.member_id, x.partner_id, sum(p.amount)::bigint AS points
    FROM (
        SELECT e.id, e.member_id, e.partner_id FROM journal_entries e
        WHERE e.kind = 'earn' AND e.partner_id IS NOT NULL
          AND e.effective_at >= :start AND e.effective_at < :end
        UNION ALL
        SELECT r.id, o.member_id, o.partner_id FROM journal_entries o
        JOIN journal_entries r ON r.reverses_entry_id = o.id
        WHERE r.kind = 'reverse' AND o.kind = 'earn' AND o.partner_id IS NOT NULL
          AND o.effective_at >= :start AND o.effective_at < :end) x
    JOIN postings p ON p.entry_id = x.id
    JOIN members m ON m.id = x.member_id
    WHERE p.asset = 'PTS' AND p.member_id IS NOT NULL AND m.status <> 'merged'
    GROUP BY 1, 2)"""

# (member_id, partner_id, points)
REDEEMED = """
redeemed AS (
    SELECT coalesce(o.member_id, e.member_id) AS member_id,
           split_part(p.account, ':', 2) AS partner_id,
           sum(p.amount)::bigint AS points
    FROM journal_entries e
    LEFT JOIN journal_entries o ON o.id = e.reverses_entry_id
    JOIN postings p ON p.entry_id = e.id
    JOIN members m ON m.id = coalesce(o.member_id, e.member_id)
    WHERE p.asset = 'PTS' AND split_part(p.account, ':', 1) = 'partner'
      AND split_part(p.account, ':', 3) = 'redeemed' AND m.status <> 'merged'
      AND (e.kind IN ('burn', 'capture', 'reward')
           OR (e.kind = 'reverse' AND o.kind IN ('burn', 'capture', 'reward')))
      AND coalesce(o.effective_at, e.effective_at) >= :start
      AND coalesce(o.effective_at, e.effective_at) < :end
    GROUP BY 1, 2)"""

# (member_id, partner_id, spend): spend alone, from the purchases.
SPEND = """
spend AS (
    SELECT pp.member_id, pp.partner_id,
           sum(pp.total_minor - pp.returned_minor)::bigint AS amount
    FROM partner_purchases pp JOIN members m ON m.id = pp.member_id
    WHERE pp.currency = :currency AND m.status <> 'merged'
      AND pp.occurred_at >= :start AND pp.occurred_at < :end
    GROUP BY 1, 2)"""


def with_(*fragments: str) -> str:
    """`WITH` and the fragments, comma-separated (append `, more AS (...)`)."""
    return "WITH " + ",".join(fragments)

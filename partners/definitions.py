"""The programme's definitions as an earning reads them (partner contracts,
earn rules, categories, tiers, promotions), cached per process.

Every change to a definition bumps `definition_versions.version` in its own
transaction (statement triggers, migration 0009). An earning reads that
number (one statement) and answers from memory while it has not moved; when
it has, everything is read again, in one snapshot, before the earning goes
on. So an earning sees an admin's committed change exactly as if it had read
the tables itself, at the price of one indexed read instead of six.

What changes with every earning is not cached: promotion budgets
(`budget_used`) and members' usage are read, and locked, by the earning.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from partners import rule_reads
from partners.contracts import Contract, contracts_by_partner, version_in_force
from partners.earning import EarnRule
from partners.tiers import Tier

# Ended promotions stay cached as long as a purchase may still be reported
# into their window (the longest late-submission window of any contract).
PROMOTION_HORIZON = timedelta(days=731)


@dataclass(frozen=True)
class Definitions:
    version: int
    contracts: dict[str, list[Contract]]  # by partner, by version
    earn_rules: dict[str, list]  # rows by partner, by version
    categories: frozenset[str]
    tiers: list[Tier]
    promotions: list  # rows, by id; budgets as they were when read
    _rules: dict[int, EarnRule] = field(default_factory=dict)

    def contract_in_force(self, partner_id: str, at: datetime) -> Contract | None:
        return version_in_force(self.contracts.get(partner_id, []), at)

    def earn_rule_in_force(self, partner_id: str, at: datetime) -> EarnRule | None:
        """The highest version whose window holds `at`, not retired."""
        for row in reversed(self.earn_rules.get(partner_id, ())):
            if row.valid_from <= at and (row.valid_to is None or at < row.valid_to):
                rule = self._rules.get(row.id)
                if rule is None:
                    rule = self._rules[row.id] = rule_reads.earn_rule_from_row(row)
                return rule
        return None

    def promotions_for(
        self, partner_id: str, at: datetime, received: datetime, categories, total_minor: int
    ) -> list:
        """The promotions that can pay for this purchase (window at the
        purchase time, reported before the end or accepting late submissions,
        naming the partner or none, a category of the basket, its minimum
        spend), by id; the engine decides the rest."""
        return [
            r
            for r in self.promotions
            if r.starts_at <= at < r.ends_at
            and (received < r.ends_at or r.accepts_late_submissions)
            and (not r.partner_ids or partner_id in r.partner_ids)
            and (not r.categories or any(c in categories for c in r.categories))
            and r.min_spend_minor <= total_minor
        ]

    def has_budgets_at(self, partner_id: str) -> bool:
        """Whether a promotion with a budget may pay for some purchase at the
        partner (an earning there locks its row before any member)."""
        return any(
            r.budget_points is not None and (not r.partner_ids or partner_id in r.partner_ids)
            for r in self.promotions
        )


class DefinitionCache:
    """The process's copy of the definitions (one per `Programme`)."""

    def __init__(self) -> None:
        self._current: Definitions | None = None

    @property
    def latest(self) -> Definitions | None:
        """The newest definitions this process has read, without asking the
        database whether they are still current."""
        return self._current

    async def get(self, conn: AsyncConnection, now: datetime) -> Definitions:
        version = (await conn.execute(text("SELECT version FROM definition_versions"))).scalar_one()
        return await self.at_version(conn, now, version)

    async def at_version(self, conn: AsyncConnection, now: datetime, version: int) -> Definitions:
        """The definitions as of `version`, read by the caller in this
        transaction (an earning reads it with its first statement)."""
        current = self._current
        if current is not None and current.version == version:
            return current
        fresh = await _load(conn, now, version)
        if self._current is None or fresh.version >= self._current.version:
            self._current = fresh
        return fresh


async def _load(conn: AsyncConnection, now: datetime, version: int) -> Definitions:
    # `version` was read first: what is read after it is at least that new (a
    # change committed meanwhile is read under the older number, and read
    # again by the next earning, which sees the number moved).
    contracts = await contracts_by_partner(conn)
    rules: dict[str, list] = {}
    for row in await conn.execute(
        text("SELECT * FROM earn_rules WHERE retired_at IS NULL ORDER BY partner_id, version")
    ):
        rules.setdefault(row.partner_id, []).append(row)
    categories = frozenset((await conn.execute(text("SELECT code FROM categories"))).scalars())
    tiers = await rule_reads.tiers(conn)
    promotions = (
        await conn.execute(
            text(
                "SELECT * FROM promotions WHERE retired_at IS NULL AND ends_at > :since ORDER BY id"
            ),
            {"since": now - PROMOTION_HORIZON},
        )
    ).all()
    return Definitions(version, contracts, rules, categories, tiers, promotions)

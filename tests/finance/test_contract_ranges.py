"""The roll-forward prices a movement by the contract version in force at its
pricing time through ranges of versions (one hash join) instead of a lookup
per posting: both give the same version at every instant, out-of-order and
tied `effective_from` dates and instants before the first date included."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from finance.rollforward import CONTRACT_RANGES, contract_in_force

VERSIONS = [  # version, effective_from: v3 dated before v2, v4 and v5 on one day
    (2, datetime(2026, 3, 1, tzinfo=UTC)),
    (3, datetime(2026, 2, 1, tzinfo=UTC)),
    (4, datetime(2026, 5, 1, tzinfo=UTC)),
    (5, datetime(2026, 5, 1, tzinfo=UTC)),
]


async def test_ranges_give_the_version_each_lookup_gives(engine, new_partner):
    partner = await new_partner("ranges")
    async with engine.begin() as conn:
        for version, effective_from in VERSIONS:
            await conn.execute(
                text(
                    "INSERT INTO partner_contracts (partner_id, version, effective_from, "
                    "price_per_point, created_by) VALUES (:p, :v, :f, :price, 'staff:tests')"
                ),
                {"p": partner, "v": version, "f": effective_from, "price": version},
            )
    async with engine.connect() as conn:
        (registered,) = (
            await conn.execute(
                text(
                    "SELECT effective_from FROM partner_contracts WHERE partner_id = :p "
                    "AND version = 1"
                ),
                {"p": partner},
            )
        ).one()
        dates = sorted({registered, *(f for _, f in VERSIONS)})
        instants = [d + delta for d in dates for delta in (timedelta(seconds=-1), timedelta(0))]
        instants.append(datetime(2000, 1, 1, tzinfo=UTC))
        for at in instants:
            looked_up = (
                await conn.execute(text(contract_in_force(":p", ":at")), {"p": partner, "at": at})
            ).one()
            ranged = (
                await conn.execute(
                    text(
                        f"WITH {CONTRACT_RANGES.strip()} SELECT version, price_per_point "
                        "FROM contract_ranges WHERE partner_id = :p AND :at >= lo "
                        "AND (hi IS NULL OR :at < hi)"
                    ),
                    {"p": partner, "at": at},
                )
            ).all()
            assert [tuple(r) for r in ranged] == [tuple(looked_up)[:2]], at

"""Reconciliation mappings: how one partner's file is read (its columns,
delimiter, date and amount formats, encoding, which points compare; the
`Mapping` of reconciliation_files.py), stored per partner, replaced by a
set, the default when none is stored. Every run keeps a copy of the mapping
it used (finance/reconciliation.py)."""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.errors import InvalidReconciliationMapping
from finance.reconciliation_files import DEFAULT_MAPPING, Mapping, check_mapping
from ledger.errors import PartnerNotFound


class MappingView(msgspec.Struct, frozen=True):
    partner_id: str
    mapping: Mapping
    stored: bool  # False: none stored, the default applies
    updated_by: str | None = None
    updated_at: datetime | None = None


_MAPPING_FIELDS = Mapping.__struct_fields__


async def partner_currency(conn: AsyncConnection, partner_id: str) -> str:
    """The partner's currency; `PartnerNotFound` for an unknown partner."""
    currency = (
        await conn.execute(text("SELECT currency FROM partners WHERE id = :p"), {"p": partner_id})
    ).scalar()
    if currency is None:
        raise PartnerNotFound(f"no partner {partner_id!r}", partner_id=partner_id)
    return currency


async def mapping_view(conn: AsyncConnection, partner_id: str) -> MappingView:
    """`get_mapping` on the caller's connection."""
    await partner_currency(conn, partner_id)
    row = (
        await conn.execute(
            text("SELECT * FROM reconciliation_mappings WHERE partner_id = :p"), {"p": partner_id}
        )
    ).first()
    if row is None:
        return MappingView(partner_id, DEFAULT_MAPPING, stored=False)
    mapping = Mapping(**{f: getattr(row, f) for f in _MAPPING_FIELDS})
    return MappingView(partner_id, mapping, True, row.updated_by, row.updated_at)


async def get_mapping(engine: AsyncEngine, partner_id: str) -> MappingView:
    """The partner's mapping, or the default when none is stored."""
    async with engine.connect() as conn:
        return await mapping_view(conn, partner_id)


async def set_mapping(
    engine: AsyncEngine, partner_id: str, mapping: Mapping, actor: str
) -> MappingView:
    """Store the partner's mapping (replacing the one before)."""
    check_mapping(mapping)
    async with engine.begin() as conn:
        await partner_currency(conn, partner_id)
        known = (
            await conn.execute(
                text("SELECT 1 FROM categories WHERE code = :c"), {"c": mapping.default_category}
            )
        ).first()
        if known is None:
            raise InvalidReconciliationMapping(
                "default_category", f"unknown category {mapping.default_category!r}"
            )
        values = {f: getattr(mapping, f) for f in _MAPPING_FIELDS}
        names = ", ".join(_MAPPING_FIELDS)
        await conn.execute(
            text(
                f"INSERT INTO reconciliation_mappings (partner_id, {names}, updated_by) "
                f"VALUES (:partner_id, {', '.join(':' + f for f in _MAPPING_FIELDS)}, :actor) "
                "ON CONFLICT (partner_id) DO UPDATE SET "
                + ", ".join(f"{f} = EXCLUDED.{f}" for f in _MAPPING_FIELDS)
                + ", updated_by = EXCLUDED.updated_by, updated_at = now()"
            ),
            {**values, "partner_id": partner_id, "actor": actor},
        )
        return await mapping_view(conn, partner_id)

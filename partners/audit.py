"""The audit trail of programme data: who changed what, when, before and after."""

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def record_change(
    conn: AsyncConnection,
    entity: str,
    entity_id: str,
    action: str,
    actor: str,
    before: object,
    after: object,
) -> None:
    """Append to rule_audit inside the transaction that made the change."""
    await conn.execute(
        text(
            "INSERT INTO rule_audit (entity, entity_id, action, actor, before, after) "
            "VALUES (:entity, :id, :action, :actor, CAST(:before AS jsonb), "
            "CAST(:after AS jsonb))"
        ),
        {
            "entity": entity,
            "id": entity_id,
            "action": action,
            "actor": actor,
            "before": msgspec.json.encode(before).decode(),
            "after": msgspec.json.encode(after).decode(),
        },
    )

"""Alembic environment: runs revisions over the async engine.

The URL comes from the Alembic config (set by `loyalty migrate`) or, for plain
`alembic upgrade/downgrade`, from LOYALTY_DATABASE_URL at run time.
"""

import asyncio
import os

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from ledger.database import async_url


def _database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("LOYALTY_DATABASE_URL")
    if not url:
        raise SystemExit("set LOYALTY_DATABASE_URL to the database to migrate")
    return async_url(url)


def _run(connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())

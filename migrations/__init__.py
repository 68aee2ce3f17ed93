"""Alembic environment and revisions: the only source of the database schema."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent


def sql_statements(script: str) -> list[str]:
    """Split a SQL script into statements (asyncpg prepares one statement at a time).

    A statement ends with ';' at the end of a line outside a $$-quoted body.
    """
    statements: list[str] = []
    current: list[str] = []
    in_body = False
    for line in script.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        if line.count("$$") % 2:
            in_body = not in_body
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current))
            current = []
    if current:
        statements.append("\n".join(current))
    return statements

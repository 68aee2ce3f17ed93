"""A settlement statement (finance/settlement.py) as documents: JSON, CSV (one
row per line and contract version, then the totals), a printable,
self-contained HTML page (inline print CSS, no external asset, no script),
and the CSV of the entries behind each line, streamed from the stored rows.
The API and the CLI write these same bytes for the same statement.

Amounts are written in major units of the partner's currency (`1.80`); an
entry's value is its exact points x rate, before the one rounding per line
and contract version."""

import csv
import html
import io
from collections.abc import AsyncIterator

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.errors import InvalidExportFormat
from finance.journal_export import csv_text
from finance.period import stamp
from finance.settlement import Statement, line_code
from partners.money import units

DOCUMENT_FORMATS = ("json", "csv", "html")
# Text types without a charset: Litestar appends `; charset=utf-8` itself.
DOCUMENT_MEDIA_TYPES = {"json": "application/json", "csv": "text/csv", "html": "text/html"}

STATEMENT_COLUMNS = (
    "number",
    "partner_id",
    "period",
    "section",
    "month",
    "line",
    "label",
    "owed_by",
    "contract_version",
    "basis",
    "rate",
    "entries",
    "points",
    "amount",
    "currency",
)
ENTRY_COLUMNS = (
    "statement",
    "section",
    "month",
    "line",
    "entry_id",
    "kind",
    "effective_at",
    "booked_at",
    "reverses_entry_id",
    "partner_reference",
    "account",
    "points",
    "contract_version",
    "rate",
    "value",
    "currency",
)
ENTRY_BATCH = 2_000


def check_document_format(fmt: str) -> str:
    if fmt not in DOCUMENT_FORMATS:
        raise InvalidExportFormat(
            f"format is one of {', '.join(DOCUMENT_FORMATS)}, not {fmt!r}", format=fmt
        )
    return fmt


def _money(minor: int | None, currency: str):
    """Major units as a Decimal (written as is: a text cell could be taken for
    a formula and neutralised, a number never is); "" for no amount."""
    return "" if minor is None else units(minor, currency)


def _csv(rows) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([csv_text(cell) if isinstance(cell, str) else cell for cell in row])
    return buffer.getvalue().encode()


def statement_json(st: Statement) -> bytes:
    return msgspec.json.encode(st)


def statement_csv(st: Statement) -> bytes:
    rows: list[tuple] = [STATEMENT_COLUMNS]
    head = (st.number, st.partner_id, st.period)
    for ln in st.lines:
        line = (ln.section, ln.month, ln.code, ln.label, ln.owed_by or "")
        if not ln.money:
            rows.append((*head, *line, "", "", "", ln.entries, ln.points, "", st.currency))
        for part in ln.money:
            rows.append(
                (
                    *head,
                    *line,
                    part.contract_version,
                    part.basis,
                    part.rate,
                    ln.entries if len(ln.money) == 1 else "",
                    part.points,
                    _money(part.minor, st.currency),
                    st.currency,
                )
            )
    for code, label, owed_by, minor in (
        ("owed-by-partner", "owed by the partner", "partner", st.owed_by_partner_minor),
        ("owed-to-partner", "owed to the partner", "programme", st.owed_to_partner_minor),
        ("net", "net: owed by the partner - owed to the partner", "", st.net_minor),
    ):
        money = _money(minor, st.currency)
        rows.append(
            (*head, "total", "", code, label, owed_by, "", "", "", "", "", money, st.currency)
        )
    return _csv(rows)


STYLE = """
body { font-family: "Helvetica Neue", Arial, sans-serif; color: #111; margin: 2em auto;
  max-width: 60em; font-size: 11pt; }
h1 { font-size: 18pt; margin: 0 0 .2em; }
.number { font-family: monospace; font-size: 12pt; }
.banner { border: 2px solid #b00; color: #b00; padding: .4em .8em; font-weight: bold; }
dl { display: grid; grid-template-columns: 12em 1fr; gap: .2em 1em; margin: 1em 0; }
dt { color: #555; } dd { margin: 0; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; }
th, td { border-bottom: 1px solid #ccc; padding: .3em .5em; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.section th { background: #eee; }
tr.total td { font-weight: bold; border-top: 2px solid #111; }
.note { color: #555; font-size: 9pt; }
@page { size: A4; margin: 15mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  table { page-break-inside: auto; } tr { page-break-inside: avoid; }
  thead { display: table-header-group; }
}
"""


def statement_html(st: Statement) -> bytes:
    e = html.escape

    def money(minor: int | None) -> str:
        return e(str(_money(minor, st.currency)))

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Settlement statement {e(st.number)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1>Settlement statement</h1><p class="number">{e(st.number)}</p>',
    ]
    if st.superseded_by:
        out.append(f'<p class="banner">Superseded by {e(st.superseded_by)}</p>')
    facts = [
        ("Partner", f"{st.partner_name} ({st.partner_id})"),
        ("Period", f"{st.period} (entries' effective time, UTC)"),
        ("Currency", st.currency),
        ("Issued", f"{st.issued_at} by {st.issued_by}"),
        ("Issue", str(st.issue)),
    ]
    if st.supersedes:
        facts.append(("Supersedes", st.supersedes))
    if st.reason:
        facts.append(("Reason", st.reason))
    facts.append(("Entries", f"{st.entries:,}"))
    out.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>")
    out.append(
        '<table><thead><tr><th>Line</th><th>Owed by</th><th class="n">Contract</th>'
        '<th class="n">Rate</th><th class="n">Entries</th><th class="n">Points</th>'
        f'<th class="n">Amount ({e(st.currency)})</th></tr></thead><tbody>'
    )
    section = None
    for ln in st.lines:
        heading = "This month" if ln.section == "regular" else f"Adjustments for {ln.month}"
        if heading != section:
            section = heading
            out.append(f'<tr class="section"><th colspan="7">{e(heading)}</th></tr>')
        parts = ln.money or [None]
        for index, part in enumerate(parts):
            first = index == 0
            out.append(
                "<tr>"
                f"<td>{e(ln.label) if first else ''}</td>"
                f"<td>{e(ln.owed_by or '') if first else ''}</td>"
                f'<td class="n">{"" if part is None else f"v{part.contract_version}"}</td>'
                f'<td class="n">{"" if part is None else e(str(part.rate))}</td>'
                f'<td class="n">{f"{ln.entries:,}" if first else ""}</td>'
                f'<td class="n">{(ln.points if part is None else part.points):,}</td>'
                f'<td class="n">{"" if part is None else money(part.minor)}</td>'
                "</tr>"
            )
    out.append("</tbody></table>")
    out.append(
        '<table class="totals"><tbody>'
        f'<tr><td>Owed by the partner</td><td class="n">{money(st.owed_by_partner_minor)}</td></tr>'
        f'<tr><td>Owed to the partner</td><td class="n">{money(st.owed_to_partner_minor)}</td></tr>'
        f'<tr class="total"><td>Net (positive: the partner pays; negative: the partner is paid)'
        f'</td><td class="n">{money(st.net_minor)}</td></tr>'
        "</tbody></table>"
    )
    out.append(
        '<p class="note">Points are valued at the partner contract in force at each entry\'s '
        "effective time (a return or refund at the original entry's), each line and contract "
        "version rounded once, half up. The entries behind each line: "
        f"GET /v1/finance/settlements/{e(st.number)}/entries.</p>"
    )
    out.append("</body></html>\n")
    return "\n".join(out).encode()


RENDERERS = {"json": statement_json, "csv": statement_csv, "html": statement_html}


def render(st: Statement, fmt: str) -> bytes:
    return RENDERERS[check_document_format(fmt)](st)


async def entries_csv(conn: AsyncConnection, st: Statement) -> AsyncIterator[bytes]:
    """The entries behind each line of `st`, one row per entry and line, in
    line order then entry id, streamed from the stored rows in batches."""
    result = await conn.stream(
        text(
            "SELECT entry_id, account, promotion, kind, effective_at, booked_at, "
            "reverses_entry_id, partner_reference, amount, contract_version, rate, "
            "to_char(effective_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month "
            "FROM settlement_statement_entries WHERE statement = :n "
            "ORDER BY to_char(effective_at AT TIME ZONE 'UTC', 'YYYY-MM') <> :period, "
            "to_char(effective_at AT TIME ZONE 'UTC', 'YYYY-MM'), account, promotion, kind, "
            "entry_id"
        ),
        {"n": st.number, "period": st.period},
    )
    yield _csv([ENTRY_COLUMNS])
    async for batch in result.partitions(ENTRY_BATCH):
        rows = []
        for r in batch:
            points = -int(r.amount) if r.account.endswith(":issued") else int(r.amount)
            code = line_code(r.kind, r.account, r.promotion)
            rate = r.rate
            rows.append(
                (
                    st.number,
                    "regular" if r.month == st.period else "adjustment",
                    r.month,
                    code,
                    r.entry_id,
                    r.kind,
                    stamp(r.effective_at),
                    stamp(r.booked_at),
                    "" if r.reverses_entry_id is None else r.reverses_entry_id,
                    r.partner_reference or "",
                    r.account,
                    points,
                    "" if r.contract_version is None or code == "other" else r.contract_version,
                    "" if rate is None or code == "other" else rate,
                    "" if rate is None or code == "other" else points * rate,
                    st.currency,
                )
            )
        yield _csv(rows)

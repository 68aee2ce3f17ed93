"""The dashboard's markup, built by small functions that escape every value
they are given: only markup built here (`Html`) goes in as it is, so a
partner's or a promotion's name is always text, never markup.

The page runs under a strict Content-Security-Policy (no inline script or
style): each chart is a <canvas> naming a JSON block, <script
type="application/json" id=...>, holding its Chart.js configuration, drawn
by the served dashboard.js; in that JSON `<`, `>` and `&` are written
\\u003c, \\u003e and \\u0026, so no value can close the block. Heat maps are
tables whose cells carry a class per tenth of their share (dashboard.css).
Every chart has its figures beside it, in a table under <details>, and CSV
links to the full tables (/dashboard/data/{figure}.csv)."""

import html
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode

from api.routes.dashboard_view import Query
from partners.errors import UnknownCurrency
from partners.money import units

DASH = "\u2013"  # an en dash: no figure


VOID = frozenset({"input", "meta", "link", "br"})


class Html(str):
    """Markup built here: inserted as it is; any other value is escaped."""


def escape(value: object) -> Html:
    return Html(html.escape(str(value), quote=True))


def fragment(*children: object) -> Html:
    """Children in order: markup as it is, lists flattened, None left out,
    anything else escaped text."""
    parts = []
    for child in children:
        if child is None:
            continue
        if isinstance(child, Html):
            parts.append(child)
        elif isinstance(child, list | tuple):
            parts.append(fragment(*child))
        else:
            parts.append(escape(child))
    return Html("".join(parts))


def el(name: str, attrs: dict[str, object] | None = None, *children: object) -> Html:
    """An element; attribute values escaped (`class_` is `class`, `data_x`
    is `data-x`; True: the bare attribute; None or False: left out)."""
    text = [f"<{name}"]
    for key, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        attribute = key.rstrip("_").replace("_", "-")
        text.append(f" {attribute}" if value is True else f' {attribute}="{escape(value)}"')
    text.append(">")
    if name in VOID:
        return Html("".join(text))
    return Html("".join(text) + fragment(*children) + f"</{name}>")


def json_block(block_id: str, data: object) -> Html:
    """Data for dashboard.js, safe inside <script>: JSON whose `<`, `>` and
    `&` are escapes (ASCII only, so U+2028 and U+2029 are escapes too)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Html(f'<script type="application/json" id="{escape(block_id)}">{text}</script>')


def number(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def percent(value: Decimal | None) -> str:
    if value is None:
        return DASH
    return f"{(value * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} %"


def money(minor: int | None, currency: str) -> str:
    """Minor units as an amount of the currency (`1,234.50 EUR`)."""
    if minor is None:
        return DASH
    try:
        return f"{units(minor, currency):,} {currency}"
    except UnknownCurrency:
        return f"{minor:,} minor units of {currency}"


def moment(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M}"


def plain(value: object) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return number(value)
    if isinstance(value, datetime):
        return moment(value)
    return str(value)


def day(stamped: str) -> str:
    """A finance stamp (2026-07-01T00:00:00.000000Z) as the minute it names."""
    return stamped[:16].replace("T", " ")


def pct(value: Decimal | None) -> float | None:
    """A share as a percentage for a chart (a float is all JSON has)."""
    return None if value is None else float(value * 100)


Formats = dict[str, Callable[[object], str]]


def data_table(columns: list[str], rows: Iterable[list], formats: Formats | None = None) -> Html:
    """A table of figures; text columns left, numbers right."""
    formats = formats or {}

    def cell(column: str, value: object) -> Html:
        text_column = isinstance(value, str) and column not in formats
        shown = formats.get(column, plain)(value)
        return el("td", {"class_": "text" if text_column else None}, shown)

    # Column names as the CSV has them, spaced so a header can wrap.
    head = el("tr", None, [el("th", {"class_": "text"}, c.replace("_", " ")) for c in columns])
    body = [el("tr", None, [cell(c, v) for c, v in zip(columns, row, strict=True)]) for row in rows]
    return el("div", {"class_": "scroll"}, el("table", None, el("thead", None, head), body))


def csv_url(query: Query, figure: str) -> str:
    tail = f"?{urlencode(query.given)}" if query.given else ""
    return f"/dashboard/data/{figure}.csv{tail}"


def csv_links(query: Query, *figures: str) -> Html:
    return el(
        "p",
        {"class_": "links"},
        "CSV: ",
        [el("a", {"href": csv_url(query, f), "download": True}, f"{f}.csv") for f in figures],
    )


def figures(summary: str, *tables: Html) -> Html:
    return el("details", None, el("summary", None, summary), *tables)


def has_data(config: dict) -> bool:
    return any(len(dataset["data"]) > 0 for dataset in config["data"]["datasets"])


def chart(name: str, label: str, config: dict) -> Html:
    """A canvas (`{name}-chart`) drawn from its JSON block (`{name}-data`), or
    a note when there is nothing to draw."""
    if not has_data(config):
        return el("p", {"class_": "nodata"}, "nothing to draw for this window")
    canvas = el(
        "canvas",
        {"id": f"{name}-chart", "data_config": f"{name}-data", "role": "img", "aria_label": label},
    )
    return fragment(el("div", {"class_": "chart"}, canvas), json_block(f"{name}-data", config))


def section(title: str, anchor: str, *body: object, wide: bool = False) -> Html:
    return el(
        "section", {"id": anchor, "class_": "wide" if wide else None}, el("h2", None, title), *body
    )


def note(*text: object) -> Html:
    return el("p", {"class_": "note"}, *text)


def heat_class(value: Decimal | None) -> str:
    if value is None:
        return "heat heat-none"
    tenth = int((value * 10).to_integral_value(rounding=ROUND_HALF_UP))
    return f"heat heat-{min(10, max(0, tenth))}"


def heat_cell(share: Decimal | None, title: str) -> Html:
    """A heat map's cell: the share, coloured by its tenth; none: a dot."""
    return el(
        "td",
        {"class_": heat_class(share), "title": title},
        "·" if share is None else percent(share),
    )


def heat_map(table_id: str, head: Html, rows: list[Html]) -> Html:
    table = el("table", {"class_": "heatmap", "id": table_id}, el("thead", None, head), rows)
    return el("div", {"class_": "scroll"}, table)


def axis(title: str, **more: object) -> dict:
    return {"title": {"display": True, "text": title}, "beginAtZero": True, **more}


def count_axis(title: str, **more: object) -> dict:
    """An axis of whole numbers (members, points): no fractional ticks."""
    return axis(title, ticks={"precision": 0}, **more)


def bars(labels: list, datasets: list[dict], scales: dict, **options: object) -> dict:
    """A bar chart's Chart.js configuration (a dataset may be `"type": "line"`)."""
    return {
        "type": "bar",
        "data": {"labels": labels, "datasets": datasets},
        "options": {"scales": scales, **options},
    }

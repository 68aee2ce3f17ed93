"""The dashboard's HTML, built by small functions that escape every value
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

from api.auth import Principal
from api.routes.dashboard_assets import CHART_JS, asset_url
from api.routes.dashboard_view import Dashboard, Query
from insights import coalition, overview, pareto, promotions, retention, rfm, tiers
from partners.errors import UnknownCurrency
from partners.money import units

DASH = "\u2013"  # an en dash: no figure
VOID = frozenset({"input", "meta", "link", "br"})
METRICS = {"spend": "spend", "points_issued": "points issued", "redemptions": "redemptions"}
PROGRAMME = "(programme)"  # the partner column of pareto.tables' programme-wide rows
LOGIN_PATH = "/dashboard/login"
LOGOUT_PATH = "/dashboard/logout"


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


# -- values -------------------------------------------------------------------------


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


# -- building blocks -----------------------------------------------------------------

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


# -- sections ------------------------------------------------------------------------


def kpis(board: Dashboard) -> Html:
    o: overview.Overview = board.overview
    accounts = o.points_outstanding_by_account
    cards = [
        ("Active members", number(o.active_members),
         f"with activity in the {o.active_days} days to {day(o.as_of)}"),
        ("Points outstanding", number(o.points_outstanding),
         " · ".join(f"{name} {number(points)}" for name, points in accounts.items())),
        *(
            ("Their money value", money(m.deferred_revenue, m.currency),
             f"deferred revenue (IFRS 15) of {money(m.consideration, m.currency)} paid")
            for m in o.money
        ),
        *(
            [("Their money value", DASH, "no partner-funded points: nothing paid for them")]
            if not o.money
            else []
        ),
        ("Issued this month", number(o.points_issued_this_month),
         f"points since {day(o.month_from)}"),
        ("Redeemed this month", number(o.points_redeemed_this_month),
         f"points since {day(o.month_from)}"),
        ("Breakage rate", percent(o.breakage_rate),
         f"expected redemption {percent(o.expected_redemption_rate)} ({o.rate_method})"),
    ]  # fmt: skip
    shown = [
        el(
            "div",
            {"class_": "card"},
            el("div", {"class_": "label"}, label),
            el("div", {"class_": "value"}, value),
            el("div", {"class_": "sub"}, sub),
        )
        for label, value, sub in cards
    ]
    tables = overview.tables(o)
    return section(
        "The programme now",
        "overview",
        el("div", {"class_": "cards"}, shown),
        note(
            f"Activity, issuance and redemption by purchase time; points outstanding, their "
            f"value and the breakage rate as booked up to {day(o.liability_as_of)} "
            "(finance's roll-forward and breakage)."
        ),
        figures(
            "Figures",
            data_table(*tables["overview"]),
            data_table(
                tables["money"][0],
                # Each row in its own currency.
                [
                    [m.currency, *(money(v, m.currency) for v in row[1:])]
                    for m, row in zip(o.money, tables["money"][1], strict=True)
                ],
            ),
        ),
        csv_links(board.query, "overview", "money"),
        wide=True,
    )


def concentration(board: Dashboard) -> Html:
    p: pareto.Pareto = board.pareto
    programme = [d for d in p.distributions if d.partner_id is None]
    curves = [
        {
            "label": f"{METRICS[d.metric]} (Gini {plain(d.gini)})",
            "data": [{"x": pct(point.members), "y": pct(point.value)} for point in d.lorenz],
            "showLine": True,
            "pointRadius": 2,
        }
        for d in programme
        if d.lorenz
    ]
    if curves:
        curves.append(
            {
                "label": "equality",
                "data": [{"x": 0, "y": 0}, {"x": 100, "y": 100}],
                "showLine": True,
                "pointRadius": 0,
                "borderDash": [4, 4],
                "colour": "#9aa3ad",
            }
        )
    lorenz = {
        "type": "scatter",
        "data": {"datasets": curves},
        "options": {
            "scales": {
                "x": axis("members, least first (%)", max=100),
                "y": axis("share of the total (%)", max=100),
            }
        },
    }
    top = bars(
        [f"top {t.percent} %" for t in programme[0].top] if programme else [],
        [
            {"label": METRICS[d.metric], "data": [pct(t.share) for t in d.top]}
            for d in programme
            if d.members
        ],
        {"y": axis("share of the total (%)", max=100)},
    )
    # The CSV tables' programme-wide rows: what the charts draw.
    tables = {
        name: (columns, [row for row in rows if row[0] == PROGRAMME])
        for name, (columns, rows) in pareto.tables(p).items()
    }
    shares: Formats = {f"top_{pc}pct": percent for pc in pareto.PERCENTS}
    return section(
        "Who holds the value",
        "pareto",
        note(
            f"Purchase time {day(p.period_from)} to {day(p.period_to)}, spend in {p.currency}; "
            "members with a positive total, ranked. Programme-wide here; per partner in the CSV."
        ),
        chart("lorenz", "Lorenz curves of spend, points issued and redemptions", lorenz),
        chart("top-shares", "Share held by the top 1, 5, 10 and 20 % of members", top),
        figures(
            "Figures of the charts",
            data_table(*tables["pareto"], shares),
            data_table(*tables["lorenz"], {"members_share": percent, "value_share": percent}),
        ),
        csv_links(board.query, "pareto", "lorenz"),
    )


def segments(board: Dashboard) -> Html:
    r: rfm.Rfm = board.rfm
    config = bars(
        [s.segment.replace("_", " ") for s in r.segments],
        [{"label": "members", "data": [s.members for s in r.segments]}],
        {"x": count_axis("members")},
        indexAxis="y",
    )
    columns, rows = rfm.tables(r)["segments"]
    formats: Formats = {
        "member_share": percent,
        "spend_share": percent,
        "spend": lambda v: money(v, r.currency),
    }
    return section(
        "RFM segments",
        "rfm",
        note(f"{number(r.members)} members active in the window. {r.method}."),
        chart("rfm-segments", "Members per RFM segment", config),
        figures("Figures of the chart", data_table(columns, rows, formats)),
        csv_links(board.query, "rfm-segments"),
    )


def lost(board: Dashboard) -> Html:
    answer: retention.LostMembers = board.lost
    columns, rows = retention.lost_tables(answer)["lost"]
    return section(
        "Lost members",
        "lost",
        note(
            f"{number(answer.lost)} of the {number(answer.reference_members)} members active "
            f"from {day(answer.reference_from)} to {day(answer.reference_to)} "
            f"({percent(answer.lost_share)}) have not been seen since "
            f"{day(answer.inactive_since)} ({answer.inactive_days} days before "
            f"{day(answer.as_of)}); the {len(rows)} who spent most:"
        ),
        data_table(columns, rows, {"spend": lambda v: money(v, answer.currency)}),
        csv_links(board.query, "lost-members"),
        wide=True,
    )


def churn(board: Dashboard) -> Html:
    c: retention.Churn = board.retention.churn
    config = bars(
        [m.month for m in c.months],
        [
            {
                "label": "churn rate (%)",
                "data": [pct(m.churn_rate) for m in c.months],
                "yAxisID": "y",
            },
            {
                "type": "line",
                "label": "members active in the month",
                "data": [m.active_in_month for m in c.months],
                "yAxisID": "y1",
            },
        ],
        {
            "y": axis("churn rate (%)"),
            "y1": count_axis("members", position="right", grid={"drawOnChartArea": False}),
        },
    )
    columns, rows = retention.churn_tables(c)["churn"]
    return section(
        "Monthly churn",
        "churn",
        note(f"After {c.inactive_days} days without activity; {c.definition}."),
        chart("churn", "Churn rate and active members per month", config),
        figures("Figures of the chart", data_table(columns, rows, {"churn_rate": percent})),
        csv_links(board.query, "churn"),
    )


def cohorts(board: Dashboard) -> Html:
    r: retention.Retention = board.retention.cohorts
    head = el(
        "tr",
        None,
        el("th", {"class_": "text"}, "cohort"),
        el("th", None, "members"),
        [el("th", None, f"m{k}") for k in range(r.months_since + 1)],
    )
    rows = []
    for row in r.cohorts:
        cells = [
            heat_cell(
                share,
                f"{row.cohort}, month {k}: "
                + ("not over yet" if active is None else f"{active} of {row.members} active"),
            )
            for k, (share, active) in enumerate(zip(row.retention, row.active, strict=True))
        ]
        rows.append(
            el(
                "tr",
                None,
                el("td", {"class_": "text"}, row.cohort),
                el("td", None, number(row.members)),
                cells,
            )
        )
    return section(
        "Cohort retention",
        "cohorts",
        note(f"{r.definition}."),
        heat_map("cohort-heatmap", head, rows),
        csv_links(board.query, "cohorts"),
    )


def partners(board: Dashboard) -> Html:
    c: coalition.Coalition = board.coalition
    tables = coalition.tables(c)
    ids = sorted({x.partner_id for x in c.cross_shopping})
    matrix = {(x.partner_id, x.also_at): x for x in c.cross_shopping}
    head = el(
        "tr",
        None,
        el("th", {"class_": "text"}, "of the members of ↓, also at →"),
        [el("th", None, b) for b in ids],
    )
    rows = [
        el(
            "tr",
            None,
            el("th", {"class_": "text"}, a),
            [
                heat_cell(
                    matrix[(a, b)].share,
                    f"{matrix[(a, b)].members} members of {a} also at {b}",
                )
                for b in ids
            ],
        )
        for a in ids
    ]
    spend = {"spend": lambda v: money(v, c.currency)}
    return fragment(
        section(
            "Cross-shopping",
            "cross-shopping",
            note(
                "Of the members active at the partner of a row in the window, the share "
                f"also active at the partner of the column ({number(c.active_members)} "
                "members active in all)."
            ),
            heat_map("cross-shopping-heatmap", head, rows),
            csv_links(board.query, "cross-shopping"),
        ),
        section(
            "Partner portfolio",
            "partners",
            note("Members active at 1, 2, 3 or more partners, and each partner's figures."),
            data_table(*tables["reach"], formats={"share": percent}),
            data_table(*tables["partners"], formats=spend),
            csv_links(board.query, "reach", "partners"),
        ),
    )


def offers(board: Dashboard) -> Html:
    p: promotions.Promotions = board.promotions
    columns, rows = promotions.tables(p)["promotions"]
    named = [[o.name, *row] for o, row in zip(p.offers, rows, strict=True)]
    spend = {
        "spend_before": lambda v: money(v, p.currency),
        "spend_during": lambda v: money(v, p.currency),
        "uplift": percent,
    }
    return section(
        "Promotions and coupons",
        "promotions",
        note(f"Method: {p.method}."),
        data_table(["name", *columns], named, spend)
        if named
        else el("p", {"class_": "nodata"}, "no promotion or coupon in this window"),
        csv_links(board.query, "promotions"),
        wide=True,
    )


def tier_section(board: Dashboard) -> Html:
    t: tiers.Tiers = board.tiers
    distribution = bars(
        [c.name or c.tier for c in t.distribution],
        [{"label": "members", "data": [c.members for c in t.distribution]}],
        {"y": count_axis("members")},
    )
    movement = bars(
        [m.month for m in t.movement],
        [
            {"label": "upgrades", "data": [m.upgrades for m in t.movement], "colour": "#3a9a5b"},
            {
                "label": "downgrades",
                "data": [m.downgrades for m in t.movement],
                "colour": "#b8404a",
            },
        ],
        {"y": count_axis("members")},
    )
    tables = tiers.tables(t)
    return section(
        "Tiers",
        "tiers",
        note(
            f"{number(t.members)} enrolled members by the tier they hold now; "
            "changes per month of the window."
        ),
        chart("tiers", "Members per tier", distribution),
        chart("tier-movement", "Tier upgrades and downgrades per month", movement),
        figures(
            "Figures of the charts", data_table(*tables["tiers"]), data_table(*tables["movement"])
        ),
        csv_links(board.query, "tiers", "tier-movement"),
    )


def expiry(board: Dashboard) -> Html:
    e: tiers.ExpiryOutlook = board.expiry
    config = bars(
        [m.month for m in e.months],
        [
            {"label": "will expire", "data": [m.points - m.protected for m in e.months]},
            {"label": "protected by a tier", "data": [m.protected for m in e.months]},
        ],
        {"x": {"stacked": True}, "y": count_axis("points", stacked=True)},
    )
    return section(
        "Expiry outlook",
        "expiry",
        note(
            f"Points left in lots by the month they expire, from {day(e.as_of)}; "
            "overdue: past their date, not yet taken."
        ),
        chart("expiry", "Points expiring per month for the next 12 months", config),
        figures("Figures of the chart", data_table(*tiers.outlook_tables(e)["expiry"])),
        csv_links(board.query, "expiry"),
    )


# -- pages ---------------------------------------------------------------------------


def page(title: str, *body: object, scripts: bool = False) -> str:
    head = [
        el("meta", {"charset": "utf-8"}),
        el("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
        el("title", None, title),
        # No request for /favicon.ico: an empty icon.
        el("link", {"rel": "icon", "href": "data:,"}),
        el("link", {"rel": "stylesheet", "href": asset_url("dashboard.css")}),
    ]
    if scripts:
        head += [
            el("script", {"src": asset_url(CHART_JS), "defer": True}),
            el("script", {"src": asset_url("dashboard.js"), "defer": True}),
        ]
    document = el("html", {"lang": "en"}, el("head", None, head), el("body", None, *body))
    return "<!doctype html>\n" + document


def top_bar(given: dict[str, str], principal: Principal | None) -> Html:
    def field(name: str, label: str, hint: str, short: bool = False) -> Html:
        return el(
            "label",
            None,
            label,
            el(
                "input",
                {
                    "name": name,
                    "value": given.get(name, ""),
                    "placeholder": hint,
                    "class_": "short" if short else None,
                    "maxlength": 40,
                },
            ),
        )

    window = el(
        "form",
        {"class_": "window", "method": "get", "action": "/dashboard"},
        field("from", "from", "365 days before to"),
        field("to", "to (excluded)", "as_of"),
        field("as_of", "as of", "now"),
        field("currency", "currency", "EUR", short=True),
        el("button", {"type": "submit"}, "Show"),
    )
    who = None
    if principal is not None:
        who = fragment(
            el(
                "span",
                {"class_": "who"},
                f"{principal.subject} ({', '.join(sorted(principal.roles))})",
            ),
            el(
                "form",
                {"class_": "sign-out", "method": "post", "action": LOGOUT_PATH},
                el("button", {"type": "submit", "class_": "quiet"}, "Sign out"),
            ),
        )
    return el("header", {"class_": "top"}, el("h1", None, "Loyalty programme"), window, who)


def dashboard_page(board: Dashboard, principal: Principal) -> str:
    q = board.query
    return page(
        "Loyalty dashboard",
        top_bar(q.given, principal),
        el(
            "main",
            None,
            kpis(board),
            concentration(board),
            segments(board),
            lost(board),
            churn(board),
            cohorts(board),
            partners(board),
            offers(board),
            tier_section(board),
            expiry(board),
        ),
        scripts=True,
    )


def error_page(given: dict[str, str], principal: Principal, code: str, detail: str) -> str:
    """The page with the window's form and what is wrong with the parameters."""
    return page(
        "Loyalty dashboard: parameters not usable",
        top_bar(given, principal),
        el(
            "main",
            None,
            el(
                "section",
                {"class_": "wide error", "role": "alert"},
                el("h2", None, "These parameters cannot be used"),
                el("p", None, el("code", None, code), ": ", detail),
            ),
        ),
    )


def login_page(message: str | None, next_path: str) -> str:
    return page(
        "Loyalty dashboard: sign in",
        el(
            "section",
            {"class_": "login"},
            el("h2", None, "Sign in to the dashboard"),
            el("p", {"class_": "error", "role": "alert"}, message) if message else None,
            el(
                "form",
                {"method": "post", "action": LOGIN_PATH},
                el(
                    "p",
                    None,
                    "Paste a staff token (role finance or admin), as minted by ",
                    el("code", None, "loyalty token"),
                    ":",
                ),
                el(
                    "textarea",
                    {
                        "name": "token",
                        "required": True,
                        "autocomplete": "off",
                        "spellcheck": "false",
                    },
                ),
                el("input", {"type": "hidden", "name": "next", "value": next_path}),
                el("p", None, el("button", {"type": "submit"}, "Sign in")),
            ),
        ),
    )

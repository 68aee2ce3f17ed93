"""The dashboard's sections, each a function of the figures
(api/routes/dashboard_view.py `Dashboard`) to escaped markup built with
api/routes/dashboard_markup.py: the headline figures, concentration,
segments, lost and churning members, cohorts, partners, offers, tiers and
expiry, each chart with its figures beside it and CSV links."""

from api.routes.dashboard_markup import (
    DASH,
    Formats,
    Html,
    axis,
    bars,
    chart,
    count_axis,
    csv_links,
    data_table,
    day,
    el,
    figures,
    fragment,
    heat_cell,
    heat_map,
    money,
    note,
    number,
    pct,
    percent,
    plain,
    section,
)
from api.routes.dashboard_view import Dashboard
from insights import coalition, overview, pareto, promotions, retention, rfm, tiers

METRICS = {"spend": "spend", "points_issued": "points issued", "redemptions": "redemptions"}
PROGRAMME = "(programme)"  # the partner column of pareto.tables' programme-wide rows


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

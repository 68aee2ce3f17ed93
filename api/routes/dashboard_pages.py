"""The dashboard's pages: the page shell (its stylesheet and scripts under
the strict Content-Security-Policy), the top bar with the filters and who is
signed in, the dashboard itself (its sections: api/routes/dashboard_html.py),
the error page and the login page; every value escaped
(api/routes/dashboard_markup.py)."""

from api.auth import Principal
from api.routes.dashboard_assets import CHART_JS, asset_url
from api.routes.dashboard_html import (
    churn,
    cohorts,
    concentration,
    expiry,
    kpis,
    lost,
    offers,
    partners,
    segments,
    tier_section,
)
from api.routes.dashboard_markup import (
    Html,
    el,
    fragment,
)
from api.routes.dashboard_view import Dashboard

LOGIN_PATH = "/dashboard/login"


LOGOUT_PATH = "/dashboard/logout"


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

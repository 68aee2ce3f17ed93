"""The dashboard over plain HTTP (no browser) on the ten-member programme
(conftest.py): signing in and out through the form and its cookie, tokens
refused (401, 403) with nothing set, the security headers, parameters that
cannot be used (422), CSV links giving the JSON API's figures with text
cells neutralised, hostile names shown as text, and the vendored Chart.js
being the file its checksum names."""

import csv
import hashlib
import html
import io
import time
from dataclasses import replace

import jwt
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import Principal, mint_token
from api.routes import dashboard_assets, dashboard_pages, dashboard_view
from api.routes.dashboard import COOKIE, CSP
from tests.api.conftest import SECRET
from tests.insights import test_surfaces as surfaces
from tests.insights.test_surfaces import AS_OF, WINDOW

settings = surfaces.settings
client = surfaces.client

PAGE = {**WINDOW, "as_of": "2026-06-29"}
HOSTILE = "<img src=x onerror=alert(1)>"
CLOSING = "</script><script>alert(1)</script>"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expired(settings) -> str:
    keys = settings.token_keys("staff")
    then = int(time.time()) - 3600
    claims = {"sub": "olga", "roles": ["finance"], "iss": keys.issuer, "aud": keys.audience,
              "iat": then, "exp": then + 600}  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


def cookie_attributes(cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_signing_in_and_out(client, settings):
    asked = await client.get("/dashboard", params=PAGE, follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"] == (
        "/dashboard/login?next=%2Fdashboard%3Ffrom%3D2026-01-01%26to%3D2026-07-01"
        "%26as_of%3D2026-06-29"
    )
    form = await client.get(asked.headers["location"])
    assert form.status_code == 200
    assert form.headers["content-security-policy"] == CSP
    assert 'action="/dashboard/login"' in form.text
    assert 'value="/dashboard?from=2026-01-01&amp;to=2026-07-01&amp;as_of=2026-06-29"' in form.text

    token = mint_token(settings, "olga", ["finance"], ttl_seconds=600)
    signed_in = await client.post(
        "/dashboard/login",
        data={"token": token, "next": "/dashboard?from=2026-01-01"},
        follow_redirects=False,
    )
    assert (signed_in.status_code, signed_in.headers["location"]) == (
        303, "/dashboard?from=2026-01-01",
    )  # fmt: skip
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={token};")
    # Not Secure over http (a browser would not send it back).
    assert cookie_attributes(cookie) == {"httponly", "max-age", "path", "samesite"}
    assert "; Path=/dashboard;" in cookie and "; samesite=strict" in cookie.lower()
    assert 590 <= int(cookie.split("Max-Age=")[1].split(";")[0]) <= 600

    page = await client.get("/dashboard", params=PAGE)
    assert page.status_code == 200
    assert "olga (finance)" in page.text

    signed_out = await client.post("/dashboard/logout", follow_redirects=False)
    assert (signed_out.status_code, signed_out.headers["location"]) == (303, "/dashboard/login")
    assert signed_out.headers["set-cookie"].startswith(f'{COOKIE}="";')
    assert "Max-Age=0" in signed_out.headers["set-cookie"]
    again = await client.get("/dashboard", follow_redirects=False)
    assert (again.status_code, again.headers["location"]) == (
        303, "/dashboard/login?next=%2Fdashboard",
    )  # fmt: skip

    # After signing in, only a dashboard page: never another site.
    elsewhere = await client.post(
        "/dashboard/login",
        data={"token": token, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert elsewhere.headers["location"] == "/dashboard"
    # A form posted from another site signs no one in.
    forged = await client.post(
        "/dashboard/login",
        data={"token": token},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert (forged.status_code, "set-cookie" in forged.headers) == (403, False)


async def test_over_https_the_cookie_is_secure(settings):
    app = create_app(settings)
    async with AsyncTestClient(app, base_url="https://testserver.local") as secure:
        answer = await secure.post(
            "/dashboard/login",
            data={"token": mint_token(settings, "olga", ["admin"])},
            follow_redirects=False,
        )
    assert answer.status_code == 303
    assert "secure" in cookie_attributes(answer.headers["set-cookie"])


@pytest.mark.parametrize(
    ("make", "status", "says"),
    [
        (lambda s: mint_token(s, "m01", ["member"]), 403, "not a staff token"),
        (lambda s: mint_token(s, "nobody", []), 403, "neither the role finance nor admin"),
        (expired, 401, "expired"),
        (
            lambda s: mint_token(replace(s, jwt_secret="forged-" + "x" * 64), "olga", ["admin"]),
            401,
            "refused",
        ),
        (lambda s: "not-a-token", 401, "refused"),
    ],
    ids=["member", "no-role", "expired", "forged", "garbage"],
)
async def test_refused_tokens_set_nothing(client, settings, make, status, says):
    token = make(settings)
    answer = await client.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == status, answer.text
    assert "set-cookie" not in answer.headers
    assert says in answer.text and 'name="token"' in answer.text
    # The same token as a Bearer header; in a cookie, which is then cleared.
    assert (await client.get("/dashboard", headers=bearer(token))).status_code == status
    client.cookies.set(COOKIE, token, domain="testserver.local", path="/dashboard")
    held = await client.get("/dashboard")
    assert held.status_code == status
    assert "Max-Age=0" in held.headers["set-cookie"]


async def test_the_page_and_its_headers(client, settings):
    page = await client.get(
        "/dashboard", params=PAGE, headers=bearer(mint_token(settings, "olga", ["admin"]))
    )
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
    assert (page.headers["x-content-type-options"], page.headers["cache-control"]) == (
        "nosniff", "no-store",
    )  # fmt: skip
    # Only the app's own scripts, and JSON blocks that no browser runs.
    assert page.text.count("<script") == 2 + 7
    assert page.text.count('<script type="application/json"') == 7
    assert f'src="{dashboard_assets.asset_url("chart.umd.min.js")}"' in page.text
    assert " style=" not in page.text and "<style" not in page.text
    assert 'href="/dashboard/data/pareto.csv?from=2026-01-01&amp;to=2026-07-01' in page.text

    # A window inside one month: churn and the cohorts show that month.
    june = await client.get(
        "/dashboard/data/churn.csv",
        params={"from": "2026-06-05", "to": "2026-06-20", "as_of": "2026-07-01"},
        headers=bearer(mint_token(settings, "olga", ["admin"])),
    )
    assert [(r["month"], r["churned"]) for r in rows(june.text)] == [("2026-06", "2")]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"from": "yesterday"}, "invalid-period"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "invalid-period"),
        ({"currency": "eur"}, "invalid-query-parameter"),
    ],
)
async def test_unusable_parameters_are_422(client, settings, params, problem):
    headers = bearer(mint_token(settings, "olga", ["finance"]))
    page = await client.get("/dashboard", params=params, headers=headers)
    assert page.status_code == 422
    assert f"<code>{problem}</code>" in page.text and 'role="alert"' in page.text
    data = await client.get("/dashboard/data/pareto.csv", params=params, headers=headers)
    assert data.status_code == 422
    assert data.json()["type"] == f"/problems/{problem}"


async def test_csv_links_give_the_apis_figures(client, settings):
    headers = bearer(mint_token(settings, "olga", ["finance"]))

    async def both(figure: str, api: str, params: dict):
        data = await client.get(f"/dashboard/data/{figure}.csv", params=params, headers=headers)
        assert data.status_code == 200, data.text
        assert data.headers["content-type"] == "text/csv; charset=utf-8"
        assert data.headers["content-disposition"] == f'attachment; filename="{figure}.csv"'
        answer = await client.get(f"/v1/insights/{api}", params=params, headers=headers)
        return rows(data.text), answer.json()

    printed, api = await both("pareto", "pareto", WINDOW)
    assert [(r["partner"], r["metric"], int(r["total"]), r["gini"]) for r in printed] == [
        (d["partner_id"] or "(programme)", d["metric"], d["total"], d["gini"] or "")
        for d in api["distributions"]
    ]
    printed, api = await both("cross-shopping", "coalition", WINDOW)
    matrix = {(c["partner_id"], c["also_at"]): c["share"] for c in api["cross_shopping"]}
    assert {(r["partner"], b): v for r in printed for b, v in r.items() if b != "partner"} == matrix
    printed, api = await both("promotions", "promotions", {**WINDOW, "as_of": AS_OF})
    assert [(r["code"], r["uplift"], int(r["spend_during"])) for r in printed] == [
        (o["code"], o["uplift"], o["spend_during"]) for o in api["offers"]
    ]
    printed, api = await both("lost-members", "lost-members", {"as_of": AS_OF})
    assert [(r["member"], int(r["spend"]), int(r["available"])) for r in printed] == [
        (m["member_id"], m["spend"], m["available"]) for m in api["members"]
    ]
    printed, api = await both("overview", "overview", {"as_of": "2026-06-29"})
    values = {r["figure"]: r["value"] for r in printed}
    assert (values["active_members"], values["points_outstanding"]) == ("5", "1765")
    assert (api["active_members"], api["points_outstanding"]) == (5, 1765)

    assert (await client.get("/dashboard/data/secrets.csv", headers=headers)).status_code == 404
    assert (await client.get("/dashboard/data/pareto.json", headers=headers)).status_code == 404
    unsigned = await client.get("/dashboard/data/pareto.csv", follow_redirects=False)
    assert unsigned.status_code == 303
    member = await client.get(
        "/dashboard/data/pareto.csv", headers=bearer(mint_token(settings, "m01", ["member"]))
    )
    assert (member.status_code, member.json()["type"]) == (401, "/problems/token-wrong-audience")


async def test_csv_text_is_neutralised(client, settings, monkeypatch):
    async def table(engine, query, figure):
        return ["code", "points"], [["=HYPERLINK(1)", -3], ["-A1", 5]]

    monkeypatch.setattr("api.routes.dashboard.csv_table", table)
    data = await client.get(
        "/dashboard/data/promotions.csv", headers=bearer(mint_token(settings, "olga", ["admin"]))
    )
    assert list(csv.reader(io.StringIO(data.text))) == [
        ["code", "points"], ["'=HYPERLINK(1)", "-3"], ["'-A1", "5"],
    ]  # fmt: skip


async def test_hostile_names_are_text(programme10):
    query = dashboard_view.parse_query("2026-01-01", "2026-07-01", "2026-06-29", None)
    board = await dashboard_view.gather(programme10.engine, query)
    offers = [msgspec.structs.replace(o, name=HOSTILE) for o in board.promotions.offers]
    held = [msgspec.structs.replace(t, name=CLOSING) for t in board.tiers.distribution]
    renamed = {"airline": HOSTILE}
    pairs = [
        msgspec.structs.replace(
            c,
            partner_id=renamed.get(c.partner_id, c.partner_id),
            also_at=renamed.get(c.also_at, c.also_at),
        )
        for c in board.coalition.cross_shopping
    ]
    board = replace(
        board,
        promotions=msgspec.structs.replace(board.promotions, offers=offers),
        tiers=msgspec.structs.replace(board.tiers, distribution=held),
        coalition=msgspec.structs.replace(board.coalition, cross_shopping=pairs),
    )
    page = dashboard_pages.dashboard_page(board, Principal(HOSTILE, frozenset({"finance"})))
    assert HOSTILE not in page and CLOSING not in page
    assert page.count(html.escape(HOSTILE)) >= 3  # the offer, the heat map's row, the user
    # In a chart's JSON block: escapes, which cannot close the block.
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in page
    assert page.count("<script") == 2 + 7

    assert HOSTILE not in dashboard_pages.login_page(HOSTILE, "/dashboard?x=" + HOSTILE)
    shown = dashboard_pages.error_page({"from": HOSTILE}, Principal("o", frozenset()), "c", HOSTILE)
    assert HOSTILE not in shown and html.escape(HOSTILE) in shown


async def test_the_vendored_chart_js_is_the_recorded_file(client):
    path = dashboard_assets.STATIC / dashboard_assets.CHART_JS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == dashboard_assets.CHART_JS_SHA256
    assert path.read_bytes().startswith(b"/*!\n * Chart.js v4.6.1\n")
    licence = (dashboard_assets.STATIC / "chart.js-LICENSE.md").read_text()
    assert licence.startswith("The MIT License (MIT)") and "Chart.js Contributors" in licence

    served = await client.get(dashboard_assets.asset_url(dashboard_assets.CHART_JS))
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == dashboard_assets.CHART_JS_SHA256
    assert served.headers["content-type"].startswith("text/javascript")
    assert set(served.headers["cache-control"].split(", ")) == {
        "public", "max-age=31536000", "immutable",
    }  # fmt: skip
    for name in ("dashboard.js", "dashboard.css"):
        assert (await client.get(f"/dashboard/static/{name}")).status_code == 200
    for name in ("chart.umd.min.js.map", "..%2Fdashboard.py", "README.md"):
        assert (await client.get(f"/dashboard/static/{name}")).status_code == 404


async def test_refusals_under_the_dashboard_carry_its_headers(client, settings):
    """A problem answered under /dashboard (a CSV link's or a static file's)
    is not stored and carries the page's policy; `next` stays a dashboard
    page the login form takes (255 characters at most), however it came."""
    admin = bearer(mint_token(settings, "olga", ["admin"]))
    refusals = [
        await client.get("/dashboard/data/pareto.csv", params={"from": "yesterday"}, headers=admin),
        await client.get("/dashboard/data/secrets.csv", headers=admin),
        await client.get("/dashboard/data/pareto.csv", headers=bearer("garbage")),
        await client.get("/dashboard/static/README.md"),
    ]
    assert [r.status_code for r in refusals] == [422, 404, 401, 404]
    for refused in refusals:
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["content-security-policy"] == CSP
        assert (refused.headers["x-content-type-options"], refused.headers["cache-control"]) == (
            "nosniff", "no-store",
        )  # fmt: skip

    long = "/dashboard?" + "&".join(f"p{i}=1" for i in range(60))
    signed_in = await client.post(
        "/dashboard/login",
        data={"token": mint_token(settings, "olga", ["finance"]), "next": long},
        follow_redirects=False,
    )
    assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/dashboard")
    client.cookies.clear()
    asked = await client.get(long, follow_redirects=False)
    form = await client.get(asked.headers["location"])
    assert (asked.headers["location"], form.status_code) == (
        "/dashboard/login?next=%2Fdashboard", 200,
    )  # fmt: skip

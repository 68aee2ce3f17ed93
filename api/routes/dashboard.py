"""The staff dashboard, `/dashboard`: the insights of a window on one
server-rendered page (KPI cards, charts, heat maps, tables), each chart
with its figures beside it and CSV links (`/dashboard/data/{figure}.csv`).

Access: a staff token (api/auth.py, the JWT the API takes) with the role
`finance` or `admin`, sent as `Authorization: Bearer` or held in the
cookie the login form sets: `GET /dashboard/login` asks for a token, `POST
/dashboard/login` checks it and sets it as an HttpOnly, SameSite=Strict
cookie on Path=/dashboard (Secure when the request came over https;
behind a TLS proxy, uvicorn's --proxy-headers tells), for as long as the
token lives, then redirects (303) to the dashboard; `POST
/dashboard/logout` clears it. Without a token, 303 to the login page; a
token that is invalid or expired is the form again with the reason (401,
the cookie cleared), a member token or one without the role 403. A
sign-in or sign-out posted from another site (its Origin names another
host) is refused (403), so no page elsewhere signs a browser in with its
own token.

Parameters as the API's (`from`, `to`, `as_of`, `currency`;
api/routes/dashboard_view.py says which figure covers what); unusable ones
answer 422, on the page as an error panel, for a CSV link as a problem.

Every dashboard answer carries a strict Content-Security-Policy (no inline
script or style, nothing from another origin, no framing) and is not
stored by caches, but for the static files (api/routes/dashboard_assets.py);
a problem answered here (a CSV link's, a static file's) too.
This module is the HTTP part only: dashboard_view gathers the figures,
dashboard_pages draws them."""

import time
from io import StringIO
from typing import Annotated
from urllib.parse import urlsplit

import jwt
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import Cookie, ResponseHeader
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect

from api.auth import Principal
from api.cli_insights import write_csv
from api.problems import EXCEPTION_HANDLERS, ApiError
from api.routes.dashboard_assets import dashboard_asset
from api.routes.dashboard_pages import LOGIN_PATH, error_page, login_page
from api.routes.dashboard_pages import dashboard_page as render_dashboard
from api.routes.dashboard_view import CSV_FIGURES, csv_table, gather, parse_query
from api.routes.insights import AsOf, Currency, From, To, insights_engine
from finance.errors import InvalidPeriod
from insights.errors import InvalidInsightParameter

DASHBOARD_PATH = "/dashboard"
COOKIE = "loyalty_staff_token"
ROLES = ("finance", "admin")
MAX_TOKEN_LENGTH = 8192
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CSP),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    # same-origin, not no-referrer: with no-referrer a form post says Origin: null.
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
]
NO_STORE = "no-store"
MAX_NEXT = 255  # the login form's `next`, as its query parameter takes it


def _token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(COOKIE) or None


def _staff(request: Request, token: str) -> Principal:
    """The token's staff principal with a dashboard role; `ApiError` otherwise."""
    verifier = request.app.state.verifier
    return verifier.principal_of(token, "staff").require_role(*ROLES)


def _refusal(error: ApiError) -> tuple[int, str]:
    if error.code == "token-wrong-audience":
        return 403, "This is not a staff token: the dashboard takes a staff token."
    if error.code == "missing-role":
        return 403, "This token has neither the role finance nor admin."
    if error.code == "token-expired":
        return 401, "The token has expired: mint a new one."
    return 401, f"The token was refused: {error.detail}"


def _html(text: str, status: int = 200, cookies: list[Cookie] | None = None) -> Response:
    return Response(
        text,
        status_code=status,
        media_type=MediaType.HTML,
        headers={"Cache-Control": NO_STORE},
        cookies=cookies,
    )


def _cookie(request: Request, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=value,
        path=DASHBOARD_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _cleared(request: Request) -> list[Cookie]:
    return [_cookie(request, "", 0)]


def _next_path(value: object) -> str:
    """Where to go after signing in: a dashboard page, never elsewhere."""
    text = value if isinstance(value, str) else ""
    if len(text) > MAX_NEXT:
        return DASHBOARD_PATH
    if text == DASHBOARD_PATH or text.startswith(DASHBOARD_PATH + "?"):
        return text
    return DASHBOARD_PATH


def _cross_site(request: Request) -> bool:
    """A form posted from another site (its Origin names another host): a
    page elsewhere must not sign a browser in, or out, with its own token."""
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


def _to_login(request: Request) -> Redirect:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(
        LOGIN_PATH,
        status_code=303,
        query_params={"next": _next_path(here)},
        headers={"Cache-Control": NO_STORE},
    )


@get("/", name="dashboard")
async def dashboard(
    request: Request, start: From = None, end: To = None, as_of: AsOf = None,
    money: Currency = None,
) -> Response:  # fmt: skip
    token = _token(request)
    if token is None:
        return _to_login(request)
    try:
        principal = _staff(request, token)
    except ApiError as error:
        status, message = _refusal(error)
        return _html(login_page(message, DASHBOARD_PATH), status, _cleared(request))
    try:
        query = parse_query(start, end, as_of, money)
    except (InvalidPeriod, InvalidInsightParameter) as error:
        given = {"from": start, "to": end, "as_of": as_of, "currency": money}
        shown = {name: value for name, value in given.items() if value}
        return _html(error_page(shown, principal, error.code, error.detail), 422)
    board = await gather(insights_engine(request.app), query)
    return _html(render_dashboard(board, principal))


@get("/data/{name:str}", name="dashboard-csv")
async def dashboard_csv(
    request: Request, name: FromPath[str], start: From = None, end: To = None,
    as_of: AsOf = None, money: Currency = None,
) -> Response:  # fmt: skip
    """One figure's table as CSV, the parameters as the page's."""
    figure = name.removesuffix(".csv")
    if not name.endswith(".csv") or figure not in CSV_FIGURES:
        raise NotFoundException(f"no dashboard figure {name!r}")
    token = _token(request)
    if token is None:
        return _to_login(request)
    _staff(request, token)  # refused: a problem (401, 403)
    query = parse_query(start, end, as_of, money)  # unusable: a problem (422)
    columns, rows = await csv_table(insights_engine(request.app), query, figure)
    text = StringIO()
    write_csv(text, columns, rows)
    return Response(
        text.getvalue(),
        media_type="text/csv",  # Litestar adds "; charset=utf-8"
        headers={
            "Cache-Control": NO_STORE,
            "Content-Disposition": f'attachment; filename="{figure}.csv"',
        },
    )


@get("/login", name="dashboard-login")
async def login_form(
    next_path: Annotated[
        str | None,
        QueryParameter(name="next", description="Where to go after", max_length=MAX_NEXT),
    ] = None,
) -> Response:
    return _html(login_page(None, _next_path(next_path)))


@post("/login", name="dashboard-sign-in", status_code=303)
async def sign_in(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token") or "").strip()
    goto = _next_path(form.get("next"))
    if _cross_site(request):
        return _html(login_page("Sign in from this site's own form.", goto), 403)
    if not token or len(token) > MAX_TOKEN_LENGTH or "\x00" in token:
        return _html(login_page("Paste a staff token.", goto), 401)
    try:
        _staff(request, token)
    except ApiError as error:
        status, message = _refusal(error)
        return _html(login_page(message, goto), status)
    # The token is verified: its expiry is the cookie's.
    expires = int(jwt.decode(token, options={"verify_signature": False})["exp"])
    max_age = max(1, expires - int(time.time()))
    return Redirect(
        goto,
        status_code=303,
        cookies=[_cookie(request, token, max_age)],
        headers={"Cache-Control": NO_STORE},
    )


@post("/logout", name="dashboard-sign-out", status_code=303)
async def sign_out(request: Request) -> Response:
    if _cross_site(request):
        return _html(login_page("Sign out from this site's own page.", DASHBOARD_PATH), 403)
    return Redirect(
        LOGIN_PATH, status_code=303, cookies=_cleared(request), headers={"Cache-Control": NO_STORE}
    )


def _with_headers(handler):
    """The app's problem handler, its answer with the dashboard's headers."""

    def answer(request: Request, error: Exception) -> Response:
        response = handler(request, error)
        response.headers.update({h.name: h.value for h in HEADERS})
        response.headers["Cache-Control"] = NO_STORE
        return response

    return answer


dashboard_router = Router(
    path=DASHBOARD_PATH,
    route_handlers=[dashboard, dashboard_csv, login_form, sign_in, sign_out, dashboard_asset],
    response_headers=HEADERS,
    exception_handlers={kind: _with_headers(h) for kind, h in EXCEPTION_HANDLERS.items()},
    include_in_schema=False,
)

"""Card holders' API for the mobile-app backend (/v1/me, a member token whose
`sub` is the member id and whose roles include `member`; staff tokens are
refused). A member sees only their own data: anything else is a 404, and a
card that cannot receive a transfer is "not found" whether it is unknown or
blocked. Each member gets LOYALTY_MEMBER_RATE_LIMIT requests per second.
Balances come from the Redis cache when it has them; with a replica configured,
balance views and history pages are read there when it is as fresh as the
primary for the member (api/replica.py). `X-Read-From` says which answered:
`cache`, `replica` or `primary`."""

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery, HeaderParameter, JSONBody, QueryParameter

from api.deps import SERVICES
from api.entry_kinds import KindFilter, entry_kinds
from api.input_guard import IdempotentOperation, PathText
from api.partner_auth import rate_limit
from api.problems import ApiError
from api.replica import read_history
from api.strict_body import strict_json_body
from ledger.accounts import check_id
from ledger.commands import Transfer
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.views import HistoryPage, Receipt
from partners.errors import CardBlocked, CardNotFound
from partners.member_views import CouponView
from partners.programme import Programme
from partners.registry import Registry
from partners.tiers import TierProgress

Ledger = NamedDependency[LedgerService]
Programmes = NamedDependency[Programme]
Cards = NamedDependency[Registry]


class TransferRequest(msgspec.Struct, forbid_unknown_fields=True):
    to_card_number: str
    amount: int


# A route whose handler counts the member's request itself, in the same Redis
# command as its own read (the balance: api/cache.py `READ_COUNTED`).
COUNTS_ITS_REQUEST = "counts_its_request"


async def authenticate_member(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    principal = connection.app.state.verifier.principal(connection, "member")
    principal.require_role("member")
    member_id = check_id("member", principal.subject)
    if not handler.opt.get(COUNTS_ITS_REQUEST):
        limit = connection.app.state.settings.member_rate_limit
        await rate_limit(connection, f"member:{member_id}", limit)
    connection.state.member_id = member_id


def _me(request: Request) -> str:
    return request.state.member_id


@get(
    "/balance",
    summary="Available, pending with release dates, held, expiring soon, tier",
    opt={COUNTS_ITS_REQUEST: True},
)
async def balance(request: Request) -> Response:
    # From Redis only when the cached view's token is the one committed now
    # (checked in PostgreSQL on every read): see api/cache.py. The member's
    # rate limit is counted in the same Redis command as the read.
    limit = request.app.state.settings.member_rate_limit
    body, source = await request.app.state.cache.read(_me(request), rate_limit=limit)
    return Response(
        body,
        media_type="application/json",
        headers={"X-Cache": "hit" if source == "cache" else "miss", "X-Read-From": source},
    )


@get("/history", summary="My entries, newest first, each with why")
async def history(
    request: Request,
    ledger: Ledger,
    limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    cursor: FromQuery[str | None] = None,
    kind: KindFilter = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
) -> Response[HistoryPage]:
    query = {"limit": limit, "cursor": cursor, "kinds": entry_kinds(kind), "since": since}
    replica = request.app.state.replica
    read = await read_history(replica, ledger, _me(request), **query, until=until)
    return Response(read.value, headers={"X-Read-From": read.source})


@get("/tier", summary="My tier, valid until, QP this period and to the next tier")
async def tier(request: Request, programme: Programmes) -> TierProgress:
    return await programme.tier_progress(_me(request))


@get("/coupons", summary="My coupons and their state")
async def coupons(request: Request, programme: Programmes) -> list[CouponView]:
    return await programme.coupons(_me(request))


@post(
    "/coupons/{code:str}/activate",
    status_code=200,
    summary="Activate a coupon before shopping (activating twice is fine)",
)
async def activate(request: Request, code: PathText, programme: Programmes) -> CouponView:
    return await programme.activate_coupon(_me(request), code)


@post(
    "/transfers",
    summary="Send points to another card holder",
    operation_class=IdempotentOperation,
)
async def transfer(
    request: Request,
    data: JSONBody[TransferRequest],
    ledger: Ledger,
    registry: Cards,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Receipt:
    if not idempotency_key:
        raise ApiError("idempotency-key-missing", "transfers need an Idempotency-Key header")
    me = _me(request)
    try:
        receiver = await registry.member_for_card(data.to_card_number)
    except (CardNotFound, CardBlocked):
        # One answer for both: a member must not learn whether a card exists.
        raise CardNotFound("no card with this number can receive points") from None
    return await ledger.transfer(
        Transfer(me, receiver, data.amount), IdempotencyKey(f"member:{me}", idempotency_key)
    )


@get("/cards", summary="My cards")
async def cards(request: Request, registry: Cards) -> list[dict]:
    return await registry.cards(_me(request))


@post("/cards/{card_number:str}/block", status_code=200, summary="Block a lost card")
async def block(request: Request, card_number: PathText, registry: Cards) -> dict:
    # Another member's card is "not found": block_card only looks among mine.
    return await registry.block_card(_me(request), card_number, f"member:{_me(request)}")


member_router = Router(
    path="/v1/me",
    route_handlers=[balance, history, tier, coupons, activate, transfer, cards, block],
    guards=[authenticate_member, strict_json_body],
    dependencies=SERVICES,
    tags=["member"],
    security=[{"bearer": []}],
)

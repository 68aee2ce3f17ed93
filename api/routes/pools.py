"""Family pools over HTTP (members/pools.py): a card holder opens a pool,
sees it (members, pooled miles, what expires when), leaves it, and, as an
adult of it, redeems the pool's miles at a partner (an Idempotency-Key, as
every member write); admins add a member to a pool as an adult or a child
(the service desk has the joining member's consent, a parent's for a child)
and any staff role sees a pool."""

from litestar import Request, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from api.auth import STAFF_ROLES, Principal, provide_principal, require_staff
from api.input_guard import IdempotencyKeyHeader, IdempotentOperation, RowId
from api.problems import ApiError
from api.routes.member import authenticate_member
from api.strict_body import strict_json_body
from ledger.idempotency import IdempotencyKey
from members.pools import (
    JoinInput,
    LeftPool,
    PooledRedemption,
    PooledRedemptionView,
    PoolInput,
    Pools,
    PoolView,
)


def _pools(request: Request) -> Pools:
    return Pools(request.app.state.ledger)


Service = NamedDependency[Pools]
Staff = NamedDependency[Principal]
SERVICES = {"pools": Provide(_pools, sync_to_thread=False)}


def _me(request: Request) -> str:
    return request.state.member_id


# -- card holders ---------------------------------------------------------------


@post("/pool", summary="Open a family pool, with me as its first adult")
async def open_pool(request: Request, data: JSONBody[PoolInput], pools: Service) -> PoolView:
    return await pools.open(_me(request), data, f"member:{_me(request)}")


@get("/pool", summary="My family pool: members, pooled miles, miles by expiry date")
async def my_pool(request: Request, pools: Service) -> PoolView:
    return await pools.pool_of(_me(request))


@post(
    "/pool/leave",
    status_code=200,
    summary="Leave my family pool (no other pool takes me for 6 months)",
)
async def leave(request: Request, pools: Service) -> LeftPool:
    return await pools.leave(_me(request), f"member:{_me(request)}")


@post(
    "/pool/redemptions",
    summary="Redeem the pool's miles at a partner, soonest-expiring first (adults only)",
    operation_class=IdempotentOperation,
)
async def redeem(
    request: Request,
    data: JSONBody[PooledRedemption],
    pools: Service,
    idempotency_key: IdempotencyKeyHeader = None,
) -> PooledRedemptionView:
    if not idempotency_key:
        raise ApiError("idempotency-key-missing", "pooled redemptions need an Idempotency-Key")
    me = _me(request)
    return await pools.redeem(me, data, IdempotencyKey(f"member:{me}", idempotency_key))


member_pools_router = Router(
    path="/v1/me",
    route_handlers=[open_pool, my_pool, leave, redeem],
    guards=[authenticate_member, strict_json_body],
    dependencies=SERVICES,
    tags=["member"],
    security=[{"bearer": []}],
)


# -- staff ------------------------------------------------------------------------


@get("/pools/{pool_id:int}", summary="A family pool: members, pooled miles, expiry dates")
async def pool(pool_id: RowId, pools: Service) -> PoolView:
    return await pools.pool(pool_id)


@post(
    "/pools/{pool_id:int}/members",
    summary="Add a member to a pool as an adult or a child, with their consent (admin)",
)
async def join(pool_id: RowId, data: JSONBody[JoinInput], staff: Staff, pools: Service) -> PoolView:
    staff.require_role("admin")
    return await pools.join(pool_id, data, f"staff:{staff.subject}")


staff_pools_router = Router(
    path="/v1/staff",
    route_handlers=[pool, join],
    guards=[require_staff(*STAFF_ROLES), strict_json_body],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False), **SERVICES},
    tags=["staff"],
    security=[{"bearer": []}],
)

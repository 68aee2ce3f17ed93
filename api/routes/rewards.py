"""The reward catalogue over HTTP (partners/rewards.py): card holders see the
catalogue, order an item with points (an Idempotency-Key, as every member
write), list their orders and cancel one not yet shipped; admins keep the
catalogue (items, prices, stock) and ship or cancel orders."""

from typing import Annotated

import msgspec
from litestar import Request, Router, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from api.auth import Principal, provide_principal, require_staff
from api.input_guard import IdempotencyKeyHeader, IdempotentOperation, PathText, RowId
from api.problems import ApiError
from api.routes.member import authenticate_member
from api.status_filter import status_filter
from api.strict_body import strict_json_body
from ledger.idempotency import IdempotencyKey
from partners.rewards import (
    ORDER_STATUSES,
    OrderView,
    RewardChange,
    RewardInput,
    Rewards,
    RewardView,
)


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    reward_id: str


def _rewards(request: Request) -> Rewards:
    return Rewards(request.app.state.ledger)


Catalogue = NamedDependency[Rewards]
Admin = NamedDependency[Principal]
SERVICES = {"rewards": Provide(_rewards, sync_to_thread=False)}


def _me(request: Request) -> str:
    return request.state.member_id


# -- card holders ---------------------------------------------------------------


@get("/rewards", summary="The reward catalogue: items, points prices, stock")
async def catalogue(rewards: Catalogue) -> list[RewardView]:
    return await rewards.catalogue(active_only=True)


@post(
    "/reward-orders",
    summary="Order a reward with points (one item; 409 when out of stock)",
    operation_class=IdempotentOperation,
)
async def order(
    request: Request,
    data: JSONBody[OrderRequest],
    rewards: Catalogue,
    idempotency_key: IdempotencyKeyHeader = None,
) -> OrderView:
    if not idempotency_key:
        raise ApiError("idempotency-key-missing", "reward orders need an Idempotency-Key header")
    me = _me(request)
    return await rewards.order(me, data.reward_id, IdempotencyKey(f"member:{me}", idempotency_key))


@get("/reward-orders", summary="My reward orders, newest first")
async def my_orders(request: Request, rewards: Catalogue) -> list[OrderView]:
    return await rewards.orders(member_id=_me(request))


@post(
    "/reward-orders/{order_id:int}/cancel",
    status_code=200,
    summary="Cancel my order while not shipped: points and stock come back (once)",
)
async def cancel_mine(request: Request, order_id: RowId, rewards: Catalogue) -> OrderView:
    me = _me(request)
    return await rewards.cancel(order_id, f"member:{me}", member_id=me)


member_rewards_router = Router(
    path="/v1/me",
    route_handlers=[catalogue, order, my_orders, cancel_mine],
    guards=[authenticate_member, strict_json_body],
    dependencies=SERVICES,
    tags=["member"],
    security=[{"bearer": []}],
)


# -- admins ---------------------------------------------------------------------


@post("/rewards", summary="Add an item to the reward catalogue")
async def create_reward(
    data: JSONBody[RewardInput], admin: Admin, rewards: Catalogue
) -> RewardView:
    return await rewards.create(data, f"staff:{admin.subject}")


@get("/rewards", summary="The whole catalogue, retired items included")
async def list_rewards(rewards: Catalogue) -> list[RewardView]:
    return await rewards.catalogue(active_only=False)


@patch("/rewards/{reward_id:str}", summary="Change an item: name, points price, stock, status")
async def change_reward(
    reward_id: PathText, data: JSONBody[RewardChange], admin: Admin, rewards: Catalogue
) -> RewardView:
    return await rewards.change(reward_id, data, f"staff:{admin.subject}")


@get("/reward-orders", summary="Reward orders, newest first (e.g. ?status=ordered to ship)")
async def list_orders(
    rewards: Catalogue,
    status: Annotated[str | None, QueryParameter(max_length=16)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[OrderView]:
    return await rewards.orders(
        status=status_filter(status, ORDER_STATUSES, "an order"), limit=limit
    )


@post("/reward-orders/{order_id:int}/ship", status_code=200, summary="Mark an order shipped")
async def ship(order_id: RowId, admin: Admin, rewards: Catalogue) -> OrderView:
    return await rewards.ship(order_id, f"staff:{admin.subject}")


@post(
    "/reward-orders/{order_id:int}/cancel",
    status_code=200,
    summary="Cancel an order not yet shipped: points and stock come back (once)",
)
async def cancel_any(order_id: RowId, admin: Admin, rewards: Catalogue) -> OrderView:
    return await rewards.cancel(order_id, f"staff:{admin.subject}")


admin_rewards_router = Router(
    path="/v1/admin",
    route_handlers=[create_reward, list_rewards, change_reward, list_orders, ship, cancel_any],
    guards=[require_staff("admin"), strict_json_body],
    dependencies={"admin": Provide(provide_principal, sync_to_thread=False), **SERVICES},
    tags=["admin"],
    security=[{"bearer": []}],
)

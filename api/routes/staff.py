"""Staff API (JWT, roles `admin` and `finance`): balances, entries, member
history, adjustments and reversals. With a replica configured, a member's
balances and history and journal entries are read there when it has what the
primary has (api/replica.py; `X-Read-From: replica|primary`)."""

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody, QueryParameter

from api.auth import STAFF_ROLES, Principal, provide_principal, require_staff
from api.deps import SERVICES
from api.entry_kinds import KindFilter, entry_kinds
from api.input_guard import IdempotencyKeyHeader, PathText, RowId
from api.replica import read_entry, read_history, read_member_balances
from api.strict_body import strict_json_body
from ledger.commands import Adjust, Reverse
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.views import AccountBalance, EntryView, HistoryPage, MemberBalances, Receipt
from members.registry import Members
from partners.programme import Programme


class AdjustmentRequest(msgspec.Struct, forbid_unknown_fields=True):
    member_id: str
    amount: int  # signed: positive credits the member, negative debits
    reason: str
    asset: str = "PTS"
    # Dated back (default: now): never into a closed period (422 period-closed).
    effective_at: datetime | None = None
    # The entry this corrects (404 entry-not-found when there is none); kept
    # in the new entry's breakdown as {"corrects_entry_id": ...}.
    corrects_entry_id: int | None = None


class ReversalRequest(msgspec.Struct, forbid_unknown_fields=True):
    entry_id: int
    reason: str
    amount: int | None = None  # default: everything left to reverse


Ledger = NamedDependency[LedgerService]
Staff = NamedDependency[Principal]
Registry = NamedDependency[Members]  # reads of an id no member has: 404 member-not-found


def _key(principal: Principal, key: str | None) -> IdempotencyKey | None:
    return IdempotencyKey(f"staff:{principal.subject}", key) if key else None


@get("/accounts/{address:str}/balance", summary="Balance of any account address")
async def account_balance(address: PathText, ledger: Ledger) -> AccountBalance:
    return await ledger.account_balance(address)


@get("/entries/{entry_id:int}", summary="One journal entry with its postings")
async def get_entry(request: Request, entry_id: RowId, ledger: Ledger) -> Response[EntryView]:
    read = await read_entry(request.app.state.replica, ledger, entry_id)
    return Response(read.value, headers={"X-Read-From": read.source})


@get("/members/{member_id:str}/balances", summary="A member's balances and expiring points")
async def member_balances(
    request: Request,
    member_id: PathText,
    ledger: Ledger,
    members: Registry,
    expiring_within_days: Annotated[int, QueryParameter(ge=1, le=3660)] = 90,
) -> Response[MemberBalances]:
    await members.member(member_id)
    replica = request.app.state.replica
    read = await read_member_balances(replica, ledger, member_id, expiring_within_days)
    return Response(read.value, headers={"X-Read-From": read.source})


@get("/members/{member_id:str}/history", summary="A member's entries, newest first")
async def member_history(
    request: Request,
    member_id: PathText,
    ledger: Ledger,
    members: Registry,
    limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    cursor: FromQuery[str | None] = None,
    kind: KindFilter = None,
) -> Response[HistoryPage]:
    kinds = entry_kinds(kind)  # before any lookup: a refused filter costs nothing
    await members.member(member_id)
    query = {"limit": limit, "cursor": cursor, "kinds": kinds}
    read = await read_history(request.app.state.replica, ledger, member_id, **query)
    return Response(read.value, headers={"X-Read-From": read.source})


@get("/members/{member_id:str}/tier", summary="A member's tier, progress and tier history")
async def member_tier(
    member_id: PathText, programme: NamedDependency[Programme], members: Registry
) -> dict:
    await members.member(member_id)
    return {
        "progress": await programme.tier_progress(member_id),
        "history": await programme.tier_history(member_id),
    }


@post("/adjustments", summary="Credit or debit a member, with a reason (admin)")
async def adjust(
    data: JSONBody[AdjustmentRequest],
    staff: Staff,
    ledger: Ledger,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Receipt:
    staff.require_role("admin")
    command = Adjust(
        data.member_id,
        data.amount,
        data.reason,
        data.asset,
        data.effective_at,
        data.corrects_entry_id,
    )
    return await ledger.adjust(command, f"staff:{staff.subject}", _key(staff, idempotency_key))


@post("/reversals", summary="Reverse an earn, burn or capture, fully or partly (admin)")
async def reverse(
    data: JSONBody[ReversalRequest],
    staff: Staff,
    ledger: Ledger,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Receipt:
    staff.require_role("admin")
    command = Reverse(data.entry_id, data.amount, reason=data.reason)
    return await ledger.reverse(command, f"staff:{staff.subject}", _key(staff, idempotency_key))


staff_router = Router(
    path="/v1/staff",
    route_handlers=[
        account_balance,
        get_entry,
        member_balances,
        member_history,
        member_tier,
        adjust,
        reverse,
    ],
    guards=[require_staff(*STAFF_ROLES), strict_json_body],
    dependencies={
        "staff": Provide(provide_principal, sync_to_thread=False),
        **SERVICES,
    },
    tags=["staff"],
    security=[{"bearer": []}],
)

"""Missing-points claims over HTTP (partners/claims.py): a card holder files
a claim for a purchase the partner did not send and sees its status; staff
list claims, and admins confirm (the purchase posts through the earn path,
once) or reject them with a reason."""

from typing import Annotated

import msgspec
from litestar import Request, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from api.auth import STAFF_ROLES, Principal, provide_principal, require_staff
from api.input_guard import RowId
from api.routes.member import authenticate_member
from api.status_filter import status_filter
from api.strict_body import strict_json_body
from partners.claims import STATUSES, ClaimInput, Claims, ClaimView


class Rejection(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


def _claims(request: Request) -> Claims:
    state = request.app.state
    return Claims(state.programme, state.settings.claim_window_days)


Service = NamedDependency[Claims]
Staff = NamedDependency[Principal]
SERVICES = {"claims": Provide(_claims, sync_to_thread=False)}


# -- card holders ---------------------------------------------------------------


@post("/claims", summary="Claim points for a purchase the partner did not send")
async def file_claim(request: Request, data: JSONBody[ClaimInput], claims: Service) -> ClaimView:
    return await claims.file(request.state.member_id, data)


@get("/claims", summary="My missing-points claims and their status, newest first")
async def my_claims(request: Request, claims: Service) -> list[ClaimView]:
    return await claims.claims(member_id=request.state.member_id)


member_claims_router = Router(
    path="/v1/me",
    route_handlers=[file_claim, my_claims],
    guards=[authenticate_member, strict_json_body],
    dependencies=SERVICES,
    tags=["member"],
    security=[{"bearer": []}],
)


# -- staff ------------------------------------------------------------------------


@get("/claims", summary="Missing-points claims, newest first (e.g. ?status=open)")
async def list_claims(
    claims: Service,
    status: Annotated[str | None, QueryParameter(max_length=16)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[ClaimView]:
    return await claims.claims(status=status_filter(status, STATUSES, "a claim"), limit=limit)


@post(
    "/claims/{claim_id:int}/confirm",
    status_code=200,
    summary="Confirm a claim: its purchase earns as the partner's send would have, once (admin)",
)
async def confirm(claim_id: RowId, staff: Staff, claims: Service) -> ClaimView:
    staff.require_role("admin")
    return await claims.confirm(claim_id, f"staff:{staff.subject}")


@post("/claims/{claim_id:int}/reject", status_code=200, summary="Reject a claim (admin)")
async def reject(
    claim_id: RowId, data: JSONBody[Rejection], staff: Staff, claims: Service
) -> ClaimView:
    staff.require_role("admin")
    return await claims.reject(claim_id, data.reason, f"staff:{staff.subject}")


staff_claims_router = Router(
    path="/v1/staff",
    route_handlers=[list_claims, confirm, reject],
    guards=[require_staff(*STAFF_ROLES), strict_json_body],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False), **SERVICES},
    tags=["staff"],
    security=[{"bearer": []}],
)

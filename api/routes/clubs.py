"""Brand clubs and the service module over HTTP (clubs/):

- card holders see their club memberships, join a club (pending payment until
  its fee is recorded) and cancel; they register the products they hold;
- admins create clubs, change their fee and points, and set a producer's
  service plan (its interval, bonus and dealers);
- staff with the `finance` or `admin` role record a fee payment, as the
  payment provider reported it: money, idempotent by the payment reference
  (the same payment again answers the stored one; another amount, member or
  club under the same reference is a 409);
- a dealer reports a service visit with a signed partner call (as every
  partner POST, with an Idempotency-Key): the bonus once per product and
  service interval.
"""

from litestar import Request, Response, Router, get, patch, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from api.auth import Principal, provide_principal, require_staff
from api.input_guard import PathText, SignedIdempotentOperation
from api.partner_auth import authenticate_partner
from api.partner_requests import idempotent
from api.routes.member import authenticate_member
from api.strict_body import strict_json_body
from clubs.club_views import (
    ClubChange,
    ClubInput,
    ClubView,
    MembershipView,
    PaymentInput,
    PaymentView,
)
from clubs.membership import Clubs
from clubs.servicing import (
    ProductInput,
    ProductView,
    ServicePlanInput,
    ServicePlanView,
    Servicing,
    VisitInput,
)


def _clubs(request: Request) -> Clubs:
    return Clubs(request.app.state.ledger)


def _servicing(request: Request) -> Servicing:
    return Servicing(request.app.state.ledger)


ClubService = NamedDependency[Clubs]
ServiceModule = NamedDependency[Servicing]
Staff = NamedDependency[Principal]
SERVICES = {
    "clubs": Provide(_clubs, sync_to_thread=False),
    "servicing": Provide(_servicing, sync_to_thread=False),
}


def _me(request: Request) -> str:
    return request.state.member_id


# -- card holders ---------------------------------------------------------------


@get("/clubs", summary="My club memberships: status, paid term, pending cancellation")
async def my_memberships(request: Request, clubs: ClubService) -> list[MembershipView]:
    return await clubs.memberships(_me(request))


@post(
    "/clubs/{code:str}/join",
    summary="Join a club: pending payment until its fee is recorded (again after cancelling)",
)
async def join(request: Request, code: PathText, clubs: ClubService) -> MembershipView:
    return await clubs.join(_me(request), code)


@post(
    "/clubs/{code:str}/cancel",
    status_code=200,
    summary="Cancel: a paid term keeps its benefits to its end (no refund); else at once",
)
async def cancel(request: Request, code: PathText, clubs: ClubService) -> MembershipView:
    return await clubs.cancel(_me(request), code)


@get("/products", summary="The products I registered for the producers' service bonus")
async def my_products(request: Request, servicing: ServiceModule) -> list[ProductView]:
    return await servicing.products(_me(request))


@post("/products", summary="Register a product I hold (vehicle or serial number)")
async def register_product(
    request: Request, data: JSONBody[ProductInput], servicing: ServiceModule
) -> ProductView:
    return await servicing.register(_me(request), data)


member_clubs_router = Router(
    path="/v1/me",
    route_handlers=[my_memberships, join, cancel, my_products, register_product],
    guards=[authenticate_member, strict_json_body],
    dependencies=SERVICES,
    tags=["member"],
    security=[{"bearer": []}],
)


# -- admins -----------------------------------------------------------------------


@post("/clubs", summary="Create a brand club: its brand partner, annual fee, term and points")
async def create_club(data: JSONBody[ClubInput], staff: Staff, clubs: ClubService) -> ClubView:
    return await clubs.create(data, f"staff:{staff.subject}")


@get("/clubs", summary="The clubs")
async def list_clubs(clubs: ClubService) -> list[ClubView]:
    return await clubs.clubs()


@patch("/clubs/{code:str}", summary="Change a club: name, fee (for payments from now), points")
async def change_club(
    code: PathText, data: JSONBody[ClubChange], staff: Staff, clubs: ClubService
) -> ClubView:
    return await clubs.change(code, data, f"staff:{staff.subject}")


@put(
    "/service-plans/{producer_id:str}",
    summary="Set a producer's service plan: interval, bonus per interval, its dealers",
)
async def put_service_plan(
    producer_id: PathText, data: JSONBody[ServicePlanInput], staff: Staff, servicing: ServiceModule
) -> ServicePlanView:
    return await servicing.put_plan(producer_id, data, f"staff:{staff.subject}")


admin_clubs_router = Router(
    path="/v1/admin",
    route_handlers=[create_club, list_clubs, change_club, put_service_plan],
    guards=[require_staff("admin"), strict_json_body],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False), **SERVICES},
    tags=["admin"],
    security=[{"bearer": []}],
)


# -- staff: fee payments -------------------------------------------------------------


@post(
    "/club-payments",
    summary="Record a club fee paid (money): once per payment reference (finance, admin)",
)
async def record_payment(
    data: JSONBody[PaymentInput], staff: Staff, clubs: ClubService
) -> PaymentView:
    return await clubs.pay(data, f"staff:{staff.subject}")


staff_clubs_router = Router(
    path="/v1/staff",
    route_handlers=[record_payment],
    guards=[require_staff("finance", "admin"), strict_json_body],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False), **SERVICES},
    tags=["staff"],
    security=[{"bearer": []}],
)


# -- dealers ----------------------------------------------------------------------------


@post(
    "/service-visits",
    summary="Report a service visit of a member's product: the bonus once per interval",
    operation_class=SignedIdempotentOperation,
)
async def service_visit(
    request: Request, data: JSONBody[VisitInput], servicing: ServiceModule
) -> Response:
    dealer_id = request.state.partner_id

    async def run(_key):
        return await servicing.visit(dealer_id, data, f"partner:{dealer_id}")

    return await idempotent(request, dealer_id, run)


partner_clubs_router = Router(
    path="/v1/partner",
    route_handlers=[service_visit],
    guards=[authenticate_partner, strict_json_body],
    dependencies=SERVICES,
    tags=["partner"],
    security=[{"hmac": []}],
)

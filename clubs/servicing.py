"""A producer's service module: members register the products they hold (a
vehicle's or an appliance's number), and a service visit at one of the
producer's dealers earns the producer's service bonus once per product and
service interval.

A service plan (per producer) says the interval in months, the bonus and
which partners are its dealers. Interval n of a product runs from n
intervals after its registration to n + 1 (clubs/terms.py): a visit in an
interval whose bonus was paid is recorded with no points, and an interval
without a visit earns nothing later ("on time" is within the interval).

The bonus is an earning at the dealer where the visit took place, funded by
the dealer (`partner:{dealer}:issued`, a promotion line of the dealer's
settlement): the dealer books the service and reports it. A producer that
wants to pay part of its dealers' offers does so with a co-funded promotion
(partners/rule_inputs.py `co_funder_id`). A visit is unique per dealer and its
reference (the same report again answers the stored visit; another visit
under the same reference is refused), and the bonus once per product and
interval is a unique index, so concurrent reports cannot pay twice.

Lock order: the product's row, then the member (the posting).
"""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from clubs.errors import (
    DealerNotAuthorised,
    InvalidServiceInput,
    ProductNotFound,
    ProductRegistered,
    ServicePlanNotFound,
    ServiceVisitExists,
)
from clubs.membership import active_member
from clubs.terms import interval_bounds, service_interval
from ledger.accounts import check_id
from ledger.commands import Earn, EarnLine
from ledger.database import begin
from ledger.errors import DuplicatePartnerReference
from ledger.service import LedgerService
from partners.audit import record_change
from partners.errors import PartnerNotFound
from partners.programme import MAX_REFERENCE

MAX_BONUS = 10**9
MAX_DEALERS = 1_000


class ServicePlanInput(msgspec.Struct, forbid_unknown_fields=True):
    interval_months: int
    bonus_points: int
    dealer_ids: list[str]


class ServicePlanView(msgspec.Struct, frozen=True):
    producer_id: str
    interval_months: int
    bonus_points: int
    dealer_ids: list[str]


class ProductInput(msgspec.Struct, forbid_unknown_fields=True):
    producer_id: str
    product_id: str  # the vehicle identification or serial number


class ProductView(msgspec.Struct, frozen=True):
    producer_id: str
    product_id: str
    member_id: str
    registered_at: datetime


class VisitInput(msgspec.Struct, forbid_unknown_fields=True):
    producer_id: str
    product_id: str
    reference: str  # the dealer's job or invoice number: unique per dealer
    visited_at: datetime


class VisitView(msgspec.Struct, frozen=True):
    dealer_id: str
    producer_id: str
    product_id: str
    member_id: str
    reference: str
    visited_at: datetime
    interval: int  # 1 for the first interval after the registration
    interval_from: datetime
    interval_to: datetime
    bonus_points: int  # 0: this interval's bonus was paid already
    entry_id: int | None


def _require(condition: bool, field: str, detail: str) -> None:
    if not condition:
        raise InvalidServiceInput(field, detail)


def _plan(row) -> ServicePlanView:
    return ServicePlanView(
        row.producer_id, row.interval_months, row.bonus_points, list(row.dealer_ids)
    )


def _product(row) -> ProductView:
    return ProductView(row.producer_id, row.product_id, row.member_id, row.registered_at)


VISIT = (
    "SELECT v.*, p.producer_id, p.product_id, p.member_id, p.registered_at, s.interval_months "
    "FROM service_visits v JOIN member_products p ON p.id = v.product "
    "JOIN service_plans s ON s.producer_id = p.producer_id "
)


def _visit(row) -> VisitView:
    start, end = interval_bounds(row.registered_at, row.interval_index, row.interval_months)
    return VisitView(
        row.dealer_id,
        row.producer_id,
        row.product_id,
        row.member_id,
        row.reference,
        row.visited_at,
        row.interval_index + 1,
        start,
        end,
        row.bonus_points,
        row.entry_id,
    )


def check_product_id(value: str) -> str:
    _require(
        isinstance(value, str)
        and 0 < len(value) <= 40
        and value.replace("-", "").isascii()
        and value.replace("-", "").isalnum(),
        "product_id",
        "1-40 letters, digits or '-'",
    )
    return value


class Servicing:
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        self.engine = ledger.engine

    async def put_plan(self, producer_id: str, plan: ServicePlanInput, actor: str):
        """Create or change a producer's service plan (admin)."""
        check_id("partner", producer_id)
        _require(1 <= plan.interval_months <= 120, "interval_months", "1 to 120 months")
        _require(0 < plan.bonus_points <= MAX_BONUS, "bonus_points", "a positive number")
        _require(len(plan.dealer_ids) <= MAX_DEALERS, "dealer_ids", f"at most {MAX_DEALERS}")
        dealers = sorted(set(plan.dealer_ids))
        for dealer in dealers:
            check_id("partner", dealer)
        _require(producer_id not in dealers, "dealer_ids", "the producer is not its own dealer")
        async with begin(self.engine) as conn:
            known = set(
                (
                    await conn.execute(
                        text("SELECT id FROM partners WHERE id = ANY(CAST(:ids AS text[]))"),
                        {"ids": [producer_id, *dealers]},
                    )
                ).scalars()
            )
            if producer_id not in known:
                raise PartnerNotFound(f"no partner {producer_id!r}", partner_id=producer_id)
            unknown = [d for d in dealers if d not in known]
            _require(not unknown, "dealer_ids", f"unknown partners {unknown}")
            before = (
                await conn.execute(
                    text("SELECT * FROM service_plans WHERE producer_id = :p FOR UPDATE"),
                    {"p": producer_id},
                )
            ).first()
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO service_plans (producer_id, interval_months, bonus_points, "
                        "dealer_ids, updated_by, updated_at) VALUES (:p, :months, :bonus, "
                        ":dealers, :actor, :now) ON CONFLICT (producer_id) DO UPDATE SET "
                        "interval_months = EXCLUDED.interval_months, "
                        "bonus_points = EXCLUDED.bonus_points, dealer_ids = EXCLUDED.dealer_ids, "
                        "updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at "
                        "RETURNING *"
                    ),
                    {
                        "p": producer_id,
                        "months": plan.interval_months,
                        "bonus": plan.bonus_points,
                        "dealers": dealers,
                        "actor": actor,
                        "now": self.ledger.clock(),
                    },
                )
            ).one()
            await record_change(
                conn,
                "service_plan",
                producer_id,
                "update" if before else "create",
                actor,
                msgspec.to_builtins(_plan(before)) if before else None,
                msgspec.to_builtins(_plan(row)),
            )
            return _plan(row)

    async def _plan_row(self, conn: AsyncConnection, producer_id: str):
        row = (
            await conn.execute(
                text("SELECT * FROM service_plans WHERE producer_id = :p"), {"p": producer_id}
            )
        ).first()
        if row is None:
            raise ServicePlanNotFound(
                f"producer {producer_id!r} has no service plan", producer_id=producer_id
            )
        return row

    # -- members' products --------------------------------------------------------

    async def register(self, member_id: str, product: ProductInput) -> ProductView:
        """Register a product the member holds; registering it again is the
        same answer, a product another member holds is refused."""
        check_product_id(product.product_id)
        async with begin(self.engine) as conn:
            await self._plan_row(conn, product.producer_id)
            await active_member(conn, member_id)
            await conn.execute(
                text(
                    "INSERT INTO member_products (member_id, producer_id, product_id, "
                    "registered_at) VALUES (:m, :p, :product, :now) "
                    "ON CONFLICT (producer_id, product_id) DO NOTHING"
                ),
                {
                    "m": member_id,
                    "p": product.producer_id,
                    "product": product.product_id,
                    "now": self.ledger.clock(),
                },
            )
            row = (
                await conn.execute(
                    text(
                        "SELECT * FROM member_products WHERE producer_id = :p "
                        "AND product_id = :product"
                    ),
                    {"p": product.producer_id, "product": product.product_id},
                )
            ).one()
            if row.member_id != member_id:
                raise ProductRegistered(
                    f"product {product.product_id!r} is registered to another member",
                    product_id=product.product_id,
                )
            return _product(row)

    async def products(self, member_id: str) -> list[ProductView]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM member_products WHERE member_id = :m "
                    "ORDER BY producer_id, product_id"
                ),
                {"m": member_id},
            )
            return [_product(r) for r in rows]

    # -- dealers' visits -------------------------------------------------------------

    async def visit(self, dealer_id: str, visit: VisitInput, actor: str) -> VisitView:
        """A dealer reports a service visit: the bonus, once per product and
        interval; the same report again answers the stored visit."""
        _require(
            0 < len(visit.reference) <= MAX_REFERENCE and visit.reference.isprintable(),
            "reference",
            f"1-{MAX_REFERENCE} printable characters",
        )
        check_product_id(visit.product_id)
        _require(visit.visited_at.tzinfo is not None, "visited_at", "needs a time zone")
        now = self.ledger.clock()
        _require(visit.visited_at <= now, "visited_at", "is in the future")

        async def body(conn: AsyncConnection) -> VisitView:
            plan = await self._plan_row(conn, visit.producer_id)
            if dealer_id not in plan.dealer_ids:
                raise DealerNotAuthorised(
                    f"partner {dealer_id!r} is not a dealer of {visit.producer_id!r}",
                    producer_id=visit.producer_id,
                )
            product = (
                await conn.execute(
                    text(
                        "SELECT * FROM member_products WHERE producer_id = :p "
                        "AND product_id = :product FOR UPDATE"
                    ),
                    {"p": visit.producer_id, "product": visit.product_id},
                )
            ).first()
            if product is None:
                raise ProductNotFound(
                    f"no member holds product {visit.product_id!r} of {visit.producer_id!r}",
                    product_id=visit.product_id,
                )
            stored = (
                await conn.execute(
                    text(VISIT + "WHERE v.dealer_id = :d AND v.reference = :ref"),
                    {"d": dealer_id, "ref": visit.reference},
                )
            ).first()
            if stored is not None:
                if (stored.product, stored.visited_at) != (product.id, visit.visited_at):
                    raise ServiceVisitExists(
                        f"visit {visit.reference!r} was reported for another product or time",
                        reference=visit.reference,
                    )
                return _visit(stored)
            _require(
                visit.visited_at >= product.registered_at,
                "visited_at",
                "is before the product's registration",
            )
            index = service_interval(product.registered_at, visit.visited_at, plan.interval_months)
            paid = (
                await conn.execute(
                    text(
                        "SELECT 1 FROM service_visits WHERE product = :p "
                        "AND interval_index = :n AND entry_id IS NOT NULL"
                    ),
                    {"p": product.id, "n": index},
                )
            ).first()
            entry_id, points = None, 0
            if paid is None:
                line = EarnLine(
                    plan.bonus_points,
                    reason=f"service bonus {visit.producer_id} interval {index + 1}",
                    kind="promotion",
                    source=f"service-{visit.producer_id}",
                )
                (posted,) = await self.ledger.earn_many_in(
                    conn,
                    [
                        Earn(
                            product.member_id,
                            dealer_id,
                            visit.reference,
                            (line,),
                            effective_at=visit.visited_at,
                        )
                    ],
                )
                if isinstance(posted, DuplicatePartnerReference):
                    raise posted
                entry_id, points = posted.entry_id, posted.points
            await conn.execute(
                text(
                    "INSERT INTO service_visits (product, dealer_id, reference, visited_at, "
                    "interval_index, entry_id, bonus_points, recorded_by, recorded_at) VALUES "
                    "(:product, :dealer, :ref, :visited, :n, :entry, :points, :actor, :now)"
                ),
                {
                    "product": product.id,
                    "dealer": dealer_id,
                    "ref": visit.reference,
                    "visited": visit.visited_at,
                    "n": index,
                    "entry": entry_id,
                    "points": points,
                    "actor": actor,
                    "now": now,
                },
            )
            return _visit(
                (
                    await conn.execute(
                        text(VISIT + "WHERE v.dealer_id = :d AND v.reference = :ref"),
                        {"d": dealer_id, "ref": visit.reference},
                    )
                ).one()
            )

        return await self.ledger.atomically(body)

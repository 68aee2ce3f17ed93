"""Plays a programme's story (programmes/story.py) over the HTTP API: the
real ASGI app in process, built with a clock each step sets to its date.
Tills, batches, till redemptions and service visits are signed partner
calls; coupons, reward orders, claims, pool actions, transfers and club
joins are member-token calls; shipping, claim confirmation, pool
membership, club fees and settlements are staff-token calls.

It lives with the tests, not in programmes/: it needs the app and a test
client, and programmes/ stays free of api/. The scheduled jobs have no
endpoint (the scheduler and `loyalty jobs run` start them), so a job's step
is played through the services, on the same database and date."""

from dataclasses import dataclass
from datetime import datetime
from types import ModuleType

import msgspec
from litestar.testing import AsyncTestClient

from api.auth import mint_token
from api.settings import Settings
from partners.client import PartnerAuth
from partners.money import units
from programmes import airline, club, coalition
from programmes.story import ConfirmClaim, FileClaim, ServicesPlayer, Step, euros, refused, signed

NO_ENDPOINT = (airline.ExpiryRun, club.RunJob)  # jobs: the scheduler's or the CLI's


class StoryClock:
    """The app's business time: the current step's date."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Refused(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


@dataclass(frozen=True)
class PartnerKey:
    key_id: str
    secret: str


def _body(value) -> object:
    return msgspec.to_builtins(value)


class HttpPlayer:
    """Plays one programme's steps over HTTP; `services` plays the steps
    without an endpoint (the jobs)."""

    def __init__(
        self,
        client: AsyncTestClient,
        settings: Settings,
        clock: StoryClock,
        programme: ModuleType,
        keys: dict[str, PartnerKey],
        services: ServicesPlayer,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.programme = programme
        self.keys = keys
        self.services = services
        self.staff = self._token(programme.ADMIN.removeprefix("staff:"), ["admin", "finance"])
        self.orders: dict[str, int] = {}  # the order's Idempotency-Key -> its id
        self.claims: dict[tuple[str, str], int] = {}
        self.pools: dict[str, int] = {}  # opener -> pool id

    def _token(self, subject: str, roles: list[str]) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint_token(self.settings, subject, roles)}

    async def _send(self, path: str, body=None, headers=None, auth=None) -> dict:
        answer = await self.client.post(path, json=body, headers=headers or {}, auth=auth)
        if answer.status_code >= 300:
            problem = answer.json()
            raise Refused(problem["type"].removeprefix("/problems/"))
        return answer.json()

    async def as_member(self, member: str, path: str, body=None, key: str | None = None) -> dict:
        headers = self._token(member, ["member"])
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self._send(path, body, headers)

    async def as_staff(self, path: str, body=None) -> dict:
        return await self._send(path, body, self.staff)

    async def as_partner(self, partner: str, path: str, body: dict, key: str) -> dict:
        signer = PartnerAuth(self.keys[partner].key_id, self.keys[partner].secret)
        return await self._send(path, body, {"Idempotency-Key": key}, signer)

    async def balances(self) -> dict[str, int]:
        found = {}
        for member in self.programme.MEMBERS:
            answer = await self.client.get(
                f"/v1/staff/members/{member}/balances", headers=self.staff
            )
            found[member] = answer.json()["balances"]["available"]
        return found

    async def play(self, step: Step) -> str:
        self.clock.now = step.at
        if isinstance(step.action, NO_ENDPOINT):
            return await self.services.play(step)
        try:
            return await self.act(step.at, step.action)
        except Refused as refusal:
            return refused(refusal.code)

    async def _earn(self, partner: str, card: str, reference: str, lines, coupons=()) -> dict:
        body = {
            "card_number": card,
            "reference": reference,
            "purchase": {
                "currency": "EUR",
                "lines": [{"amount_minor": a, "category": c} for a, c in lines],
            },
            "coupons": list(coupons),
        }
        return await self.as_partner(partner, "/v1/partner/earn", body, reference)

    async def _confirm(self, partner: str, receipt: str) -> str:
        claim_id = self.claims[(partner, receipt)]
        claim = await self.as_staff(f"/v1/staff/claims/{claim_id}/confirm")
        return signed(claim["points"] or 0)

    async def act(self, when: datetime, action: object) -> str:
        match action:
            case coalition.Till():
                receipt = await self._earn(
                    action.partner, action.card, action.reference, action.lines, action.coupons
                )
                return signed(receipt["earning"]["points"])
            case coalition.BatchFile():
                items = [
                    {
                        "card_number": item.card,
                        "reference": item.reference,
                        "purchase": {
                            "currency": "EUR",
                            "lines": [{"amount_minor": a, "category": c} for a, c in item.lines],
                            "occurred_at": when.isoformat(),
                        },
                        "coupons": list(item.coupons),
                    }
                    for item in action.items
                ]
                batch = await self.as_partner(
                    action.partner,
                    "/v1/partner/earnings/batch",
                    {"items": items},
                    f"batch-{action.items[0].reference}",
                )
                return "; ".join(
                    signed(r["receipt"]["earning"]["points"])
                    if r["status"] == 201
                    else refused(r["problem"]["type"].removeprefix("/problems/"))
                    for r in batch["results"]
                )
            case coalition.TillRedemption():
                held = await self.as_partner(
                    action.partner,
                    "/v1/partner/redemptions",
                    {
                        "card_number": action.card,
                        "reference": action.reference,
                        "currency": "EUR",
                        "basket_minor": action.basket_minor,
                        "points": action.points,
                        "expires_in_seconds": 600,
                    },
                    f"{action.reference}-authorise",
                )
                await self.as_partner(
                    action.partner,
                    f"/v1/partner/redemptions/{held['hold']['hold_id']}/capture",
                    {"reference": f"{action.reference}-capture"},
                    f"{action.reference}-capture",
                )
                off = units(held["value_minor"], "EUR")
                return f"{signed(-held['hold']['amount'])} ({off} EUR off)"
            case coalition.Activate():
                await self.as_member(action.member, f"/v1/me/coupons/{action.coupon}/activate")
                return "activated"
            case coalition.OrderReward():
                order = await self.as_member(
                    action.member, "/v1/me/reward-orders", {"reward_id": action.reward}, action.key
                )
                self.orders[action.key] = order["id"]
                return signed(-order["points"])
            case coalition.CancelOrder():
                order = await self.as_member(
                    action.member, f"/v1/me/reward-orders/{self.orders[action.key]}/cancel"
                )
                return f"{signed(order['points'])} (cancelled)"
            case coalition.ShipOrder():
                await self.as_staff(f"/v1/admin/reward-orders/{self.orders[action.key]}/ship")
                return "shipped"
            case FileClaim():
                claim = await self.as_member(action.member, "/v1/me/claims", _body(action.claim))
                self.claims[(claim["partner_id"], claim["receipt"])] = claim["id"]
                return f"claim open, expects {signed(claim['expected_points'])}"
            case ConfirmClaim():
                return await self._confirm(action.partner, action.receipt)
            case airline.Flight():
                receipt = await self._earn(
                    action.partner, action.card, action.ticket, action.segments
                )
                earning = receipt["earning"]
                result = f"{signed(earning['points'])}, {earning['qualifying_points']} QP"
                if receipt.get("new_tier") is not None:
                    result += f", now {airline.TIERS[receipt['new_tier']].name}"
                return result
            case airline.OpenPool():
                pool = await self.as_member(action.member, "/v1/me/pool", {"name": action.name})
                self.pools[action.member] = pool["id"]
                return "pool opened"
            case airline.JoinPool():
                pool = await self.as_staff(
                    f"/v1/staff/pools/{self.pools[action.opener]}/members",
                    {"member_id": action.member, "role": action.role},
                )
                return f"{len(pool['members'])} in the pool"
            case airline.RedeemPool():
                redemption = await self.as_member(
                    action.member,
                    "/v1/me/pool/redemptions",
                    {"partner_id": action.partner, "amount": action.miles},
                    action.key,
                )
                return ", ".join(
                    f"{part['member_id']} {signed(-part['amount'])}" for part in redemption["parts"]
                )
            case airline.LeavePool():
                left = await self.as_member(action.member, "/v1/me/pool/leave")
                return f"left; may join again from {left['may_join_from'][:10]}"
            case airline.SendMiles():
                await self.as_member(
                    action.sender,
                    "/v1/me/transfers",
                    {"to_card_number": airline.MEMBERS[action.receiver][1], "amount": action.miles},
                    action.key,
                )
                return f"{action.sender} {signed(-action.miles)}, {action.receiver} " + signed(
                    action.miles
                )
            case club.Join():
                joined = await self.as_member(action.member, f"/v1/me/clubs/{club.CLUB.code}/join")
                return joined["status"].replace("_", " ")
            case club.PayFee():
                paid = await self.as_staff(
                    "/v1/staff/club-payments",
                    {
                        "payment_reference": action.reference,
                        "club": club.CLUB.code,
                        "member_id": action.member,
                        "amount_minor": club.CLUB.fee_minor,
                        "currency": club.CLUB.currency,
                    },
                )
                welcome = paid["welcome_points"]
                return f"active to {paid['term_ends_at'][:10]}" + (
                    f", {signed(welcome)}" if welcome else ""
                )
            case club.Buy():
                receipt = await self._earn(
                    action.partner,
                    club.CARDS[action.member],
                    action.reference,
                    ((action.amount_minor, "general"),),
                )
                return signed(receipt["earning"]["points"])
            case club.RegisterCar():
                await self.as_member(
                    action.member,
                    "/v1/me/products",
                    {"producer_id": "autowerk", "product_id": club.CAR},
                )
                return f"car {club.CAR} registered"
            case club.ServiceVisit():
                visit = await self.as_partner(
                    action.dealer,
                    "/v1/partner/service-visits",
                    {
                        "producer_id": "autowerk",
                        "product_id": club.CAR,
                        "reference": action.reference,
                        "visited_at": when.isoformat(),
                    },
                    action.reference,
                )
                if visit["bonus_points"]:
                    return signed(visit["bonus_points"])
                return f"+0 (interval {visit['interval']} paid already)"
            case club.Settle():
                statement = await self.as_staff(
                    "/v1/finance/settlements/",
                    {"partner_id": action.partner, "period": action.period},
                )
                return f"statement: owes {euros(statement['net_minor'])}"
        raise TypeError(f"not a step this player knows: {action!r}")

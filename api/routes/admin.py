"""Admin API (staff JWT, role `admin`): the programme's parties and rules as
audited data: members (enrol, find, close, merge, erase, cards), partners and
their contract versions and keys, earn and burn rules per partner,
promotions, coupons, tiers; and a dry-run quote of what a purchase would earn."""

from typing import Annotated

import msgspec
from litestar import Router, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody, QueryParameter

from api.auth import Principal, provide_principal, require_staff
from api.deps import SERVICES
from api.input_guard import OptionalSearchText, PathText, RuleVersion
from api.strict_body import strict_json_body
from members.registry import (
    CloseInput,
    Closure,
    MemberEvent,
    MemberInput,
    MemberPage,
    Members,
    MemberView,
    MergeInput,
    Merger,
    ProfileInput,
)
from partners.contracts import Contract, ContractInput, CreditStanding
from partners.programme import Programme, PurchaseInput
from partners.receipts import EarningView
from partners.registry import PartnerInput, PartnerView, Registry
from partners.rule_inputs import (
    BurnRuleInput,
    CouponInput,
    EarnRuleInput,
    PromotionInput,
    TierInput,
)
from partners.rulebook import Rulebook
from partners.signing_keys import KeyView

Rules = NamedDependency[Rulebook]
Admin = NamedDependency[Principal]


class IssueCoupon(msgspec.Struct, forbid_unknown_fields=True):
    member_ids: list[str]


class QuoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    member_id: str
    partner_id: str
    purchase: PurchaseInput
    coupons: list[str] = []


def _actor(admin: Principal) -> str:
    return f"staff:{admin.subject}"


class StatusChange(msgspec.Struct, forbid_unknown_fields=True):
    status: str  # active | suspended


class CardRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_number: str


Partners = NamedDependency[Registry]
Registry_ = NamedDependency[Members]


@post("/members", summary="Enrol a member (without an id, a member number is assigned)")
async def enrol_member(data: JSONBody[MemberInput], members: Registry_, admin: Admin) -> MemberView:
    return await members.enrol(data, _actor(admin))


@get(
    "/members",
    summary="Find members: by id prefix, card number, e-mail or status; in id order, paged",
)
async def search_members(
    members: Registry_,
    prefix: OptionalSearchText = None,
    card: OptionalSearchText = None,
    email: OptionalSearchText = None,
    status: OptionalSearchText = None,
    after: OptionalSearchText = None,
    limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
) -> MemberPage:
    return await members.search(
        prefix=prefix, card=card, email=email, status=status, after=after, limit=limit
    )


@get("/members/{member_id:str}", summary="A member's registry record")
async def get_member(member_id: PathText, members: Registry_) -> MemberView:
    return await members.member(member_id)


@put("/members/{member_id:str}/profile", summary="Replace a member's profile fields")
async def update_profile(
    member_id: PathText, data: JSONBody[ProfileInput], members: Registry_, admin: Admin
) -> MemberView:
    return await members.update_profile(member_id, data, _actor(admin))


@post(
    "/members/{member_id:str}/close",
    status_code=200,
    summary="Close an account: points left forfeited or the close refused, as asked",
)
async def close_member(
    member_id: PathText, data: JSONBody[CloseInput], members: Registry_, admin: Admin
) -> Closure:
    return await members.close(member_id, data, _actor(admin))


@post(
    "/members/{member_id:str}/merge",
    status_code=200,
    summary="Merge this account into another account of the same person",
)
async def merge_member(
    member_id: PathText, data: JSONBody[MergeInput], members: Registry_, admin: Admin
) -> Merger:
    return await members.merge(member_id, data, _actor(admin))


@post(
    "/members/{member_id:str}/erase",
    status_code=200,
    summary="Erase a closed account's personal data (GDPR art. 17); the journal stays",
)
async def erase_member(member_id: PathText, members: Registry_, admin: Admin) -> MemberView:
    return await members.erase(member_id, _actor(admin))


@get("/members/{member_id:str}/events", summary="What happened to a member, by whom")
async def member_events(member_id: PathText, members: Registry_) -> list[MemberEvent]:
    return await members.events(member_id)


@get("/members/{member_id:str}/cards", summary="A member's cards")
async def member_cards(member_id: PathText, registry: Partners, members: Registry_) -> list[dict]:
    await members.member(member_id)
    return await registry.cards(member_id)


@post("/partners", summary="Register a partner with its contract")
async def create_partner(
    data: JSONBody[PartnerInput], registry: Partners, admin: Admin
) -> PartnerView:
    return await registry.create_partner(data, _actor(admin))


@get("/partners", summary="Every partner, with the contract terms in force now")
async def list_partners(registry: Partners) -> list[PartnerView]:
    return await registry.partners()


@get("/partners/{partner_id:str}", summary="A partner and the contract terms in force now")
async def get_partner(partner_id: PathText, registry: Partners) -> PartnerView:
    return await registry.partner(partner_id)


@get("/partners/{partner_id:str}/contracts", summary="Every version of a partner's contract")
async def list_contracts(partner_id: PathText, registry: Partners) -> list[Contract]:
    return await registry.contracts(partner_id)


@post(
    "/partners/{partner_id:str}/contracts",
    summary="A new version of a partner's contract, in force from its effective date",
)
async def update_contract(
    partner_id: PathText, data: JSONBody[ContractInput], registry: Partners, admin: Admin
) -> Contract:
    return await registry.update_contract(partner_id, data, _actor(admin))


@get(
    "/partners/{partner_id:str}/credit",
    summary="A partner's points liability against its credit limit and deposit",
)
async def partner_credit(
    partner_id: PathText, programme: NamedDependency[Programme]
) -> CreditStanding:
    return await programme.credit(partner_id)


@post(
    "/partners/{partner_id:str}/status", status_code=200, summary="Suspend or reactivate a partner"
)
async def set_partner_status(
    partner_id: PathText, data: JSONBody[StatusChange], registry: Partners, admin: Admin
) -> PartnerView:
    return await registry.set_status(partner_id, data.status, _actor(admin))


@post(
    "/partners/{partner_id:str}/keys",
    summary="Create an API key (the secret is shown this once; at most two active)",
)
async def create_key(partner_id: PathText, registry: Partners, admin: Admin) -> KeyView:
    return await registry.create_key(partner_id, _actor(admin))


@get("/partners/{partner_id:str}/keys", summary="A partner's keys (never their secrets)")
async def list_keys(partner_id: PathText, registry: Partners) -> list[KeyView]:
    return await registry.keys(partner_id)


@post(
    "/partners/{partner_id:str}/keys/{key_id:str}/revoke",
    status_code=200,
    summary="Revoke a key, at once",
)
async def revoke_key(
    partner_id: PathText, key_id: PathText, registry: Partners, admin: Admin
) -> KeyView:
    return await registry.revoke_key(partner_id, key_id, _actor(admin))


@post("/members/{member_id:str}/cards", summary="Issue a card to a member")
async def issue_card(
    member_id: PathText, data: JSONBody[CardRequest], registry: Partners, admin: Admin
) -> dict:
    return await registry.issue_card(member_id, data.card_number, _actor(admin))


@post(
    "/members/{member_id:str}/cards/{card_number:str}/block",
    status_code=200,
    summary="Block a card (lost or stolen)",
)
async def block_card(
    member_id: PathText, card_number: PathText, registry: Partners, admin: Admin
) -> dict:
    return await registry.block_card(member_id, card_number, _actor(admin))


@get("/categories", summary="Product categories rules may name")
async def categories(rules: Rules) -> list[dict]:
    return await rules.categories()


@post("/partners/{partner_id:str}/earn-rules", summary="New version of a partner's earn rule")
async def create_earn_rule(
    partner_id: PathText, data: JSONBody[EarnRuleInput], rules: Rules, admin: Admin
) -> dict:
    return await rules.create_earn_rule(partner_id, data, _actor(admin))


@get("/partners/{partner_id:str}/earn-rules", summary="Every version of a partner's earn rule")
async def list_earn_rules(partner_id: PathText, rules: Rules) -> list[dict]:
    return await rules.list_rules("earn_rules", partner_id)


@post(
    "/partners/{partner_id:str}/earn-rules/{version:int}/retire",
    status_code=200,
    summary="Retire a version of an earn rule",
)
async def retire_earn_rule(
    partner_id: PathText, version: RuleVersion, rules: Rules, admin: Admin
) -> dict:
    return await rules.retire_rule("earn_rules", partner_id, version, _actor(admin))


@post("/partners/{partner_id:str}/burn-rules", summary="New version of a partner's burn rule")
async def create_burn_rule(
    partner_id: PathText, data: JSONBody[BurnRuleInput], rules: Rules, admin: Admin
) -> dict:
    return await rules.create_burn_rule(partner_id, data, _actor(admin))


@get("/partners/{partner_id:str}/burn-rules", summary="Every version of a partner's burn rule")
async def list_burn_rules(partner_id: PathText, rules: Rules) -> list[dict]:
    return await rules.list_rules("burn_rules", partner_id)


@post(
    "/partners/{partner_id:str}/burn-rules/{version:int}/retire",
    status_code=200,
    summary="Retire a version of a burn rule",
)
async def retire_burn_rule(
    partner_id: PathText, version: RuleVersion, rules: Rules, admin: Admin
) -> dict:
    return await rules.retire_rule("burn_rules", partner_id, version, _actor(admin))


@post("/promotions", summary="Create a promotion")
async def create_promotion(data: JSONBody[PromotionInput], rules: Rules, admin: Admin) -> dict:
    return await rules.create_promotion(data, _actor(admin))


@get("/promotions", summary="Every promotion, with its budget used")
async def list_promotions(rules: Rules) -> list[dict]:
    return await rules.list_offers("promotions")


@post("/promotions/{code:str}/retire", status_code=200, summary="Retire a promotion")
async def retire_promotion(code: PathText, rules: Rules, admin: Admin) -> dict:
    return await rules.retire_offer("promotions", code, _actor(admin))


@post("/coupons", summary="Create a coupon")
async def create_coupon(data: JSONBody[CouponInput], rules: Rules, admin: Admin) -> dict:
    return await rules.create_coupon(data, _actor(admin))


@get("/coupons", summary="Every coupon")
async def list_coupons(rules: Rules) -> list[dict]:
    return await rules.list_offers("coupons")


@post("/coupons/{code:str}/issue", status_code=200, summary="Issue a coupon to members")
async def issue_coupon(
    code: PathText, data: JSONBody[IssueCoupon], rules: Rules, admin: Admin
) -> dict:
    return {"issued": await rules.issue_coupon(code, data.member_ids, _actor(admin))}


@post("/coupons/{code:str}/retire", status_code=200, summary="Retire a coupon")
async def retire_coupon(code: PathText, rules: Rules, admin: Admin) -> dict:
    return await rules.retire_offer("coupons", code, _actor(admin))


@put("/tiers/{code:str}", summary="Create or change a tier definition")
async def put_tier(code: PathText, data: JSONBody[TierInput], rules: Rules, admin: Admin) -> dict:
    return await rules.put_tier(code, data, _actor(admin))


@get("/tiers", summary="Tier definitions by rank")
async def list_tiers(rules: Rules) -> list[dict]:
    return await rules.list_tiers()


@get("/audit", summary="Who changed which rule, when, before and after")
async def audit(
    rules: Rules,
    entity: FromQuery[str | None] = None,
    entity_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[dict]:
    return await rules.audit(entity, entity_id, limit)


@post("/quote", status_code=200, summary="What a purchase would earn (nothing posted)")
async def quote(data: JSONBody[QuoteRequest], programme: NamedDependency[Programme]) -> EarningView:
    received_at = programme.ledger.clock()
    purchase = data.purchase.to_purchase(data.partner_id, received_at)
    return await programme.quote(data.member_id, purchase, tuple(data.coupons), received_at)


admin_router = Router(
    path="/v1/admin",
    route_handlers=[
        enrol_member,
        search_members,
        get_member,
        update_profile,
        close_member,
        merge_member,
        erase_member,
        member_events,
        member_cards,
        create_partner,
        list_partners,
        get_partner,
        list_contracts,
        update_contract,
        partner_credit,
        set_partner_status,
        create_key,
        list_keys,
        revoke_key,
        issue_card,
        block_card,
        categories,
        create_earn_rule,
        list_earn_rules,
        retire_earn_rule,
        create_burn_rule,
        list_burn_rules,
        retire_burn_rule,
        create_promotion,
        list_promotions,
        retire_promotion,
        create_coupon,
        list_coupons,
        issue_coupon,
        retire_coupon,
        put_tier,
        list_tiers,
        audit,
        quote,
    ],
    guards=[require_staff("admin"), strict_json_body],
    dependencies={
        "admin": Provide(provide_principal, sync_to_thread=False),
        **SERVICES,
    },
    tags=["admin"],
    security=[{"bearer": []}],
)

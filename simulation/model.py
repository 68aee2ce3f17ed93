"""The generated demo's members and what they do, month by month: a pure
model (plain data from a seed; no I/O, no clock) that simulation/loader.py
posts through the programme's real paths.

What it plants, so that the insights have something to find:

- **Heavy-tailed spend**: each member has a visit intensity and a basket
  scale drawn from log-normal distributions, so a few members bring most of
  the spend: the top 20 % of spenders hold a share within `TOP20_RANGE` of
  the spend in the 365 days up to the end (the tests check it).
- **Partner affinities**: 1 to 4 home partners per member, the first by
  popularity, then its pair (supermarket and fuel, pharmacy and fashion,
  electronics and airline) more often than not, then others by chance; a
  member buys only at home partners, so the cross-shopping matrix shows the
  pairs.
- **Seasonality**: a December peak everywhere, summer travel at the airline.
- **Cohorts**: `BASE_SHARE` of the members are there in the first month, the
  others enrol spread over the months after it, each with a purchase on the
  day of enrolment.
- **Planted churners**: `churn_percent` % of the members, enrolled early,
  stop buying at a chosen month and never come back, with a purchase in the
  month before; the months are chosen so that the lost-members query with
  `inactive_days`, as of the end, finds every one of them.
- Returns (a rate per partner, within its return window), redemptions
  (members who redeem say when, where and what share of their points; the
  loader burns that share of what is available then), a few transfers, and
  the offers of simulation/programme.py: in their months the members visit
  more (the uplift) and use the coupons they activated.

Each month is drawn from its own random stream (the seed and the month), so
the months are made one at a time and the same config always gives the same
plan."""

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from insights.reading import DEFAULT_WINDOW, add_months, month_start

# The share of spend the top 20 % of spenders hold (the 365 days to the end).
TOP20_RANGE = (Decimal("0.55"), Decimal("0.75"))
BASE_SHARE = 0.35  # members already enrolled in the first month
INTENSITY_SIGMA = 0.9  # log-normal spread of visits per member
INTENSITY_CAP = 12.0  # no member visits more than 12 times the median rate
BASKET_SIGMA = 0.45  # log-normal spread of a member's basket sizes
PAIR_CHANCE = 0.6  # a member's first home partner brings its pair
MORE_CHANCES = (0.35, 0.2)  # a third and a fourth home partner
REDEEMER_SHARE = 0.55  # members who ever redeem
REDEEM_CHANCE = 0.08  # a redeemer's chance to redeem in a month
TRANSFER_CHANCE = 0.0015  # an active member's chance to send points in a month
ACTIVATION_CHANCE = 0.35  # coupon holders who activate it

# Everywhere: December peak, a quiet January and February.
SEASON = {1: 0.85, 2: 0.9, 11: 1.1, 12: 1.4}
TRAVEL_SEASON = {1: 0.6, 2: 0.7, 6: 1.8, 7: 2.6, 8: 2.4, 12: 1.5}


@dataclass(frozen=True, slots=True)
class PartnerSpec:
    """How members buy at a partner (the contract and rules are in
    simulation/programme.py)."""

    id: str
    name: str
    popularity: int  # weight as a member's first home partner
    visits: float  # purchases a month of a median member at home there
    basket_eur: float  # median basket, main line
    basket_sigma: float
    category: str  # the main line's
    extra: tuple[str, float, int, int] | None = None  # category, chance, min, max EUR
    premium: tuple[str, float, float] | None = None  # category, chance, basket factor
    return_rate: float = 0.0
    return_days: int = 14  # returns come within this many days
    season: dict[int, float] = field(default_factory=lambda: SEASON)


PARTNERS = (
    PartnerSpec("supermarket", "FreshMart Supermarkets", 40, 0.9, 50, 0.5, "groceries",
                extra=("deposit", 0.25, 1, 3), return_rate=0.003),
    PartnerSpec("fuel", "Roadstar Fuel", 20, 0.55, 60, 0.3, "fuel",
                extra=("shop", 0.35, 2, 15)),
    PartnerSpec("pharmacy", "Vitalis Pharmacy", 20, 0.4, 22, 0.6, "drugstore",
                extra=("groceries", 0.25, 2, 10), return_rate=0.01, return_days=14),
    PartnerSpec("fashion", "Urban Threads", 10, 0.16, 70, 0.6, "fashion",
                return_rate=0.08, return_days=30),
    PartnerSpec("electronics", "Voltbox Electronics", 6, 0.05, 160, 0.9, "electronics",
                return_rate=0.05, return_days=30),
    PartnerSpec("airline", "Skylark Air", 4, 0.04, 240, 0.5, "flight-economy",
                premium=("flight-business", 0.15, 3.5), return_rate=0.02,
                return_days=30, season=TRAVEL_SEASON),
)  # fmt: skip
BY_ID = {p.id: p for p in PARTNERS}
PAIRS = {
    "supermarket": "fuel",
    "fuel": "supermarket",
    "pharmacy": "fashion",
    "fashion": "pharmacy",
    "electronics": "airline",
    "airline": "electronics",
}


@dataclass(frozen=True)
class DemoConfig:
    """What to generate: `members` over the `months` calendar months up to
    `end` (the last one up to `end` only)."""

    end: datetime
    members: int = 20_000
    months: int = 18
    seed: int = 1
    churn_percent: int = 10  # planted churners, % of the members
    inactive_days: int = 90  # the lost-members setting the churners are planted for
    expiry_months: int = 12  # points last this many months, to the end of that quarter

    def __post_init__(self) -> None:
        if self.end.tzinfo is None:
            raise ValueError("end needs a time zone")
        if not 1 <= self.members <= 10_000_000:
            raise ValueError("members: 1 to 10,000,000")
        if not 8 <= self.months <= 60:
            raise ValueError("months: 8 to 60")
        if not 0 <= self.churn_percent <= 50:
            raise ValueError("churn_percent: 0 to 50")
        if not churn_months(self):
            raise ValueError("no month leaves room for planted churners: more months")


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    card: str
    cohort: int  # the month index of the enrolment
    enrolled_at: datetime
    home: tuple[str, ...]  # the first is where the member enrolled
    intensity: float
    basket_scale: float
    redeemer: bool
    churn_month: int | None = None  # the first month without any purchase, for good

    def active_in(self, month: int) -> bool:
        return self.cohort <= month and (self.churn_month is None or month < self.churn_month)


@dataclass(frozen=True, slots=True)
class Sale:
    """A purchase to report: at `at`, by card, with its lines (minor units, category)."""

    member_id: str
    card: str
    partner_id: str
    at: datetime
    reference: str
    lines: tuple[tuple[int, str], ...]
    coupons: tuple[str, ...] = ()

    @property
    def total_minor(self) -> int:
        return sum(amount for amount, _ in self.lines)


@dataclass(frozen=True, slots=True)
class Return:
    partner_id: str
    reference: str  # the sale's
    return_reference: str
    at: datetime
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Redemption:
    """The member redeems `percent` % of the points available then (in the
    partner's steps, if that reaches the partner's minimum)."""

    member_id: str
    partner_id: str
    at: datetime
    percent: int


@dataclass(frozen=True, slots=True)
class Transfer:
    sender: str
    receiver: str
    at: datetime
    percent: int  # of the sender's available points


@dataclass(frozen=True, slots=True)
class Activation:
    member_id: str
    code: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Offers:
    """The months (indexes) of the programme's offers."""

    fresh_triple: int  # supermarket x3 on groceries, days 1-28, the partner pays
    double_points: int  # x2 everywhere, the whole month (a December when there is one)
    pharmacy_coupon: int  # 10x at the pharmacy, the partner pays
    bonus_coupon: int  # 300 points on a purchase of 20 EUR or more, the programme pays


@dataclass(frozen=True)
class Month:
    index: int
    start: datetime
    end: datetime
    enrolments: list[Member]  # by enrolment time
    activations: list[Activation]
    sales: list[Sale]  # by time
    returns: list[Return]  # by time; some fall in later months
    redemptions: list[Redemption]
    transfers: list[Transfer]


# -- time ---------------------------------------------------------------------


def month_bounds(config: DemoConfig, index: int) -> tuple[datetime, datetime]:
    """[start, end) of month `index` (0: the first); the last ends at `config.end`."""
    start = add_months(month_start(config.end), index - (config.months - 1))
    return start, min(add_months(start, 1), config.end)


def churn_months(config: DemoConfig) -> list[int]:
    """The months a planted churner may stop in: the month before holds its
    last purchase, inside the lost-members reference window (the 365 days
    before the cut-off) and before the cut-off (`end` - `inactive_days`)."""
    cutoff = config.end - timedelta(days=config.inactive_days)
    reference_start = cutoff - DEFAULT_WINDOW
    return [
        c
        for c in range(2, config.months)
        if month_bounds(config, c)[0] <= cutoff
        and month_bounds(config, c - 1)[0] >= reference_start
    ]


def offers(config: DemoConfig) -> Offers:
    last = config.months - 1
    decembers = [k for k in range(1, last) if month_bounds(config, k)[0].month == 12]
    return Offers(
        fresh_triple=config.months // 2,
        double_points=decembers[-1] if decembers else last - 1,
        pharmacy_coupon=last - 4,
        bonus_coupon=last - 2,
    )


# -- members ----------------------------------------------------------------------


def members(config: DemoConfig) -> list[Member]:
    """Every member, by id, with the planted churners marked."""
    rng = random.Random(f"{config.seed}:members")
    last = config.months - 1
    if config.end - month_bounds(config, last)[0] < timedelta(days=1):
        last -= 1  # the current month has barely begun: nobody enrols in it
    drawn = []
    for n in range(1, config.members + 1):
        cohort = 0 if rng.random() < BASE_SHARE else rng.randrange(1, last + 1)
        start, end = month_bounds(config, cohort)
        # Room for the enrolment day's purchase before the end.
        enrolled_at = start + (end - start - timedelta(minutes=10)) * rng.random()
        drawn.append(
            Member(
                id=f"D{n:07d}",
                card=f"7001{n:09d}",
                cohort=cohort,
                enrolled_at=enrolled_at.replace(microsecond=0),
                home=_home(rng),
                intensity=min(_lognormal(rng, INTENSITY_SIGMA), INTENSITY_CAP),
                basket_scale=_lognormal(rng, BASKET_SIGMA),
                redeemer=rng.random() < REDEEMER_SHARE,
            )
        )
    months = churn_months(config)
    wanted = round(config.members * config.churn_percent / 100)
    eligible = [i for i, m in enumerate(drawn) if m.cohort <= months[-1] - 2]
    for i in sorted(rng.sample(eligible, min(wanted, len(eligible)))):
        first = max(months[0], drawn[i].cohort + 2)
        drawn[i] = replace(drawn[i], churn_month=rng.randint(first, months[-1]))
    return drawn


def _lognormal(rng: random.Random, sigma: float) -> float:
    """A log-normal draw with mean 1."""
    return rng.lognormvariate(-sigma * sigma / 2, sigma)


def _home(rng: random.Random) -> tuple[str, ...]:
    weights = [p.popularity for p in PARTNERS]
    home = [rng.choices(PARTNERS, weights)[0].id]
    if rng.random() < PAIR_CHANCE:
        home.append(PAIRS[home[0]])
    for chance in MORE_CHANCES:
        if rng.random() < chance:
            others = [p for p in PARTNERS if p.id not in home]
            home.append(rng.choices(others, [p.popularity for p in others])[0].id)
    return tuple(home)


def churners(plan_members: Iterable[Member]) -> dict[str, int]:
    """The planted churners and the month each stops in."""
    return {m.id: m.churn_month for m in plan_members if m.churn_month is not None}


# -- months ----------------------------------------------------------------------


def months(config: DemoConfig, plan_members: list[Member]) -> Iterator[Month]:
    for index in range(config.months):
        yield month(config, plan_members, index)


def month(config: DemoConfig, plan_members: list[Member], index: int) -> Month:
    """Everything that happens in month `index`."""
    rng = random.Random(f"{config.seed}:month:{index}")
    start, end = month_bounds(config, index)
    length = add_months(start, 1) - start
    offer = offers(config)
    holders = coupon_holders(config, plan_members)
    enrolled = [m for m in plan_members if m.cohort <= index]
    receivers = [m for m in enrolled if m.cohort < index]  # enrolled before the month
    sales: list[Sale] = []
    activations: list[Activation] = []
    redemptions: list[Redemption] = []
    transfers: list[Transfer] = []
    for member in enrolled:
        if not member.active_in(index):
            continue
        since = member.enrolled_at if member.cohort == index else start
        bought = _visits(rng, member, index, since, end, length, offer)
        if member.churn_month == index + 1 and not bought:
            # A churner's last month always has a purchase.
            bought.append((member.home[0], _instant(rng, since, end)))
        if member.cohort == index:
            bought.append((member.home[0], member.enrolled_at + timedelta(minutes=5)))
        bought.sort(key=lambda visit: visit[1])
        codes = _coupon_uses(rng, member, index, start, end, offer, holders, activations)
        for partner_id, at in bought:
            lines = _lines(rng, BY_ID[partner_id], member.basket_scale)
            used = tuple(
                code
                for code, (activated, partner, minimum) in codes.items()
                if activated < at
                and (partner is None or partner == partner_id)
                and sum(a for a, _ in lines) >= minimum
            )
            for code in used:
                del codes[code]
            sales.append(
                Sale(member.id, member.card, partner_id, at, "", tuple(lines), tuple(sorted(used)))
            )
        if member.redeemer and index > member.cohort and rng.random() < REDEEM_CHANCE:
            redeemable = [p for p in member.home if p != "airline"] or ["airline"]
            redemptions.append(
                Redemption(
                    member.id,
                    rng.choice(redeemable),
                    _instant(rng, start, end),
                    100 if rng.random() < 0.7 else 50,
                )
            )
        if rng.random() < TRANSFER_CHANCE and receivers:
            receiver = rng.choice(receivers)
            if receiver.id != member.id:
                transfers.append(Transfer(member.id, receiver.id, _instant(rng, start, end), 50))
    sales.sort(key=lambda s: (s.at, s.member_id))
    # References in time order, unique across months (and so per partner).
    sales = [replace(s, reference=f"DEMO-{index:02d}-{n:07d}") for n, s in enumerate(sales, 1)]
    returns = _returns(rng, config, sales)
    return Month(
        index,
        start,
        end,
        sorted((m for m in enrolled if m.cohort == index), key=lambda m: (m.enrolled_at, m.id)),
        sorted(activations, key=lambda a: (a.at, a.member_id)),
        sales,
        returns,
        sorted(redemptions, key=lambda r: (r.at, r.member_id)),
        sorted(transfers, key=lambda t: (t.at, t.sender)),
    )


def _instant(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return (start + (end - start) * rng.random()).replace(microsecond=0)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method (means here stay small)."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _visits(
    rng: random.Random,
    member: Member,
    index: int,
    since: datetime,
    end: datetime,
    length: timedelta,
    offer: Offers,
) -> list[tuple[str, datetime]]:
    """The member's visits at home partners in [since, end)."""
    if since >= end:
        return []
    part = (end - since) / length  # of the whole month
    calendar = since.month
    visits = []
    for partner_id in member.home:
        spec = BY_ID[partner_id]
        boost = 1.0
        if index == offer.fresh_triple and partner_id == "supermarket":
            boost = 1.3
        elif index == offer.double_points:
            boost = 1.15
        mean = spec.visits * member.intensity * spec.season.get(calendar, 1.0) * boost * part
        visits += [(partner_id, _instant(rng, since, end)) for _ in range(_poisson(rng, mean))]
    return visits


def _lines(rng: random.Random, spec: PartnerSpec, scale: float) -> list[tuple[int, str]]:
    category, factor = spec.category, 1.0
    if spec.premium is not None and rng.random() < spec.premium[1]:
        category, factor = spec.premium[0], spec.premium[2]
    euros = rng.lognormvariate(math.log(spec.basket_eur), spec.basket_sigma) * scale * factor
    lines = [(max(100, round(euros * 100)), category)]
    if spec.extra is not None and rng.random() < spec.extra[1]:
        lines.append((rng.randint(spec.extra[2] * 100, spec.extra[3] * 100), spec.extra[0]))
    return lines


def coupon_holders(config: DemoConfig, plan_members: list[Member]) -> dict[str, frozenset[str]]:
    """Who each coupon is issued to (at the start of its month): the pharmacy's
    to its members, the bonus to a random 15 % of the members enrolled before."""
    offer = offers(config)
    rng = random.Random(f"{config.seed}:coupons")
    return {
        "PHARMACY-10X": frozenset(
            m.id for m in plan_members if "pharmacy" in m.home and m.cohort < offer.pharmacy_coupon
        ),
        "BONUS-300": frozenset(
            m.id for m in plan_members if m.cohort < offer.bonus_coupon and rng.random() < 0.15
        ),
    }


def _coupon_uses(
    rng: random.Random,
    member: Member,
    index: int,
    start: datetime,
    end: datetime,
    offer: Offers,
    holders: dict[str, frozenset[str]],
    activations: list[Activation],
) -> dict[str, tuple[datetime, str | None, int]]:
    """The coupons the member activates this month (appended to
    `activations`): code -> (activated at, the partner it is for, minimum basket)."""
    found = {}
    for code, month_index, partner, minimum in (
        ("PHARMACY-10X", offer.pharmacy_coupon, "pharmacy", 0),
        ("BONUS-300", offer.bonus_coupon, None, 2000),
    ):
        if index != month_index or member.id not in holders[code]:
            continue
        if rng.random() < ACTIVATION_CHANCE:
            at = _instant(rng, start, min(end, start + timedelta(days=21)))
            activations.append(Activation(member.id, code, at))
            found[code] = (at, partner, minimum)
    return found


def _returns(rng: random.Random, config: DemoConfig, sales: list[Sale]) -> list[Return]:
    """Some sales come back (whole, or half of the basket) within the
    partner's return days; none after the end."""
    returns = []
    for sale in sales:
        spec = BY_ID[sale.partner_id]
        if not spec.return_rate or rng.random() >= spec.return_rate:
            continue
        at = sale.at + timedelta(days=1 + (spec.return_days - 1) * rng.random())
        if at >= config.end:
            continue
        amount = sale.total_minor if rng.random() < 0.6 else max(1, sale.total_minor // 2)
        returns.append(
            Return(
                sale.partner_id,
                sale.reference,
                f"R{sale.reference}",
                at.replace(microsecond=0),
                amount,
            )
        )
    return sorted(returns, key=lambda r: (r.at, r.reference))


# -- what the plan adds up to (for the summary and the tests) ----------------------------


def net_spend(sales: Iterable[Sale], returns: Iterable[Return], start: datetime, end: datetime):
    """Each member's spend on purchases made in [start, end), net of their returns."""
    owner = {}
    spend: dict[str, int] = {}
    for sale in sales:
        if start <= sale.at < end:
            owner[(sale.partner_id, sale.reference)] = sale.member_id
            spend[sale.member_id] = spend.get(sale.member_id, 0) + sale.total_minor
    for back in returns:
        member_id = owner.get((back.partner_id, back.reference))
        if member_id is not None:
            spend[member_id] -= back.amount_minor
    return spend

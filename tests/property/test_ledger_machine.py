"""Stateful property test of the ledger and the programme against the real
PostgreSQL, with the production configuration (`Settings().ledger_config()`:
transfer minimum, daily limit, fee, hot slots, rolling:36 expiry), and once
more with a transfer fee.

Random sequences of: earn (pending and available), the programme's earn path
(rule, tier ladder, budgeted promotion), purchase returns, burn, authorise /
capture (full, partial) / void, transfers, reversals (full, partial) of
earnings and redemptions, adjustments, idempotent retries and reused keys,
a clock moving by minutes, days and months, the jobs (release pending,
expire holds, expire points, requalify tiers), and members leaving: closed
(points forfeited, or the close refused while any are left; open holds and
debt always refuse it) or merged into another (lots keep their expiry and
repay a debt of the survivor first; pending points, QP, status and returnable
purchases follow), after which everything posted to them is refused; a fresh
member may then take their seat. After every step the books are compared
with a plain Python model (tests/property/model.py): every member's available
/ pending / held / QP, their open lots, holds, tiers and status, the partner
and programme accounts their entries touch (program:expired included), the
promotion budget and every member's usage of it (returns give back their share),
the number of entries, and `verify` must be clean.

`pytest -s` prints what the runs did (operations by outcome, domain errors by
kind, paths of interest such as debt, expiry and requalification). For a longer
hunt: PROPERTY_MACHINE_EXAMPLES=N sets the number of examples, and
PROPERTY_NO_SHRINK=1 reports a failure as found (shrinking a long stateful run
against the database can take minutes)."""

import asyncio
import dataclasses
import itertools
import os
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from api.settings import Settings
from ledger.commands import Adjust, Authorise, Burn, Capture, Earn, Reverse, Transfer, Void
from ledger.database import create_engine
from ledger.errors import EntryNotFound, IdempotencyKeyReused, NotReversible
from ledger.expiry import RollingToQuarterEnd
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.verify import verify
from members.registry import CloseInput, MemberInput, Members, MergeInput
from partners import rule_reads
from partners.earning import EarnRule, Offer, Purchase, PurchaseLine, evaluate
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY, Clock, own_database, put_programme_tiers
from tests.property.model import PTS, QP, Book, TierDef
from tests.property.shop import ADMIN, create_shop

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

MEMBERS = 3  # seats: the members the rules pick (a fresh one may replace one who left)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
CATEGORIES = ("groceries", "electronics", "vouchers")
PROMOTION_BUDGET = 3000
PROMOTION_MEMBER_LIMIT = 1200
RETURN_WINDOW = timedelta(days=14)

member_index = st.integers(0, MEMBERS - 1)
pick = st.integers(0, 2**16)
share = st.integers(1, 100)
purchase_lines = st.lists(
    st.tuples(
        st.one_of(st.integers(1, 5_000), st.integers(5_000, 300_000)), st.sampled_from(CATEGORIES)
    ),
    min_size=1,
    max_size=3,
)
small_or_large = st.one_of(st.integers(1, 400), st.integers(400, 15_000))
opening_balance = small_or_large | st.integers(15_000, 45_000)
# After a member leaves: None keeps the seat theirs (what is asked of them is
# refused), a number enrols a fresh member there with that opening balance.
successor = st.none() | opening_balance
# Before a merge: (points, QP, seconds ago) the source earned, reported only
# now. Their lots expire before older ones (lot order is not expiry order) and
# their QP fall on the same day, other days of the month, other years (a merge
# moves QP dated at the times it was earned).
DAY = 86_400
late_earnings = st.lists(
    st.tuples(
        st.integers(1, 3_000),
        st.integers(0, 50),
        st.integers(60, DAY) | st.integers(DAY, 20 * DAY) | st.integers(20 * DAY, 1_200 * DAY),
    ),
    max_size=2,
)
# Before a merge, the source buys (points pending, the purchase returnable);
# after it, the partner may return that share (%) of it: from the survivor.
bought = st.none() | st.tuples(purchase_lines, st.none() | st.integers(1, 100))


def production_settings(fee_rate: str) -> Settings:
    """The production defaults, with only the transfer fee rate set."""
    settings_ = Settings(transfer_fee_rate=fee_rate)
    settings_.validate()
    return settings_


async def put_and_load_tiers(database_url: str) -> list[TierDef]:
    engine = create_engine(database_url, pool_size=1)
    try:
        await put_programme_tiers(engine)
        async with engine.connect() as conn:
            tiers = await rule_reads.tiers(conn)
    finally:
        await engine.dispose()
    return [
        TierDef(t.code, t.rank, t.qp_threshold, Decimal(t.earn_multiplier), t.expiry_protected)
        for t in tiers
    ]


# What the invariants read, in one round trip: our members' balances, open lots,
# holds, tiers and statuses; the non-member side of their entries; the number of
# their entries; the partner's balances and the promotion's budget used.
OURS = "SELECT DISTINCT entry_id FROM postings WHERE member_id = ANY(CAST(:m AS text[]))"
SNAPSHOT = f"""
SELECT
  (SELECT coalesce(json_agg(json_build_array(member_id, account, balance)), '[]')
     FROM balances WHERE member_id = ANY(CAST(:m AS text[])) AND slot = 0) AS balances,
  (SELECT coalesce(json_agg(json_build_array(account, asset, total)), '[]') FROM (
     SELECT account, asset, sum(amount) AS total FROM postings
     WHERE entry_id IN ({OURS}) AND member_id IS NULL GROUP BY 1, 2) t) AS accounts,
  (SELECT count(*) FROM ({OURS}) t) AS entries,
  (SELECT coalesce(json_agg(json_build_array(member_id, remaining, expires_at) ORDER BY id), '[]')
     FROM lots WHERE member_id = ANY(CAST(:m AS text[])) AND remaining > 0) AS lots,
  (SELECT coalesce(json_agg(json_build_array(id, status)), '[]')
     FROM holds WHERE member_id = ANY(CAST(:m AS text[]))) AS holds,
  (SELECT coalesce(json_agg(json_build_array(member_id, tier_code, valid_until)), '[]')
     FROM member_tiers WHERE member_id = ANY(CAST(:m AS text[]))) AS tiers,
  (SELECT coalesce(json_agg(json_build_array(id, status, merged_into)), '[]')
     FROM members WHERE id = ANY(CAST(:m AS text[]))) AS statuses,
  (SELECT budget_used FROM promotions WHERE code = :c) AS budget,
  (SELECT coalesce(json_agg(json_build_array(u.member_id, u.points)), '[]')
     FROM promotion_usage u JOIN promotions p ON p.id = u.promotion_id
     WHERE p.code = :c AND u.points <> 0) AS usage,
  (SELECT coalesce(json_agg(json_build_array(account, asset, total)), '[]') FROM (
     SELECT account, asset, sum(balance) AS total FROM balances
     WHERE account LIKE 'partner:' || :p || ':%' GROUP BY 1, 2) t) AS partner
"""


JOBS = ("release-pending", "expire-holds", "expire-points", "requalify-tiers")
UNCOUNTED = {"snapshot", "verify", "entry", "dispose", "merged_lots"}
totals: Counter = Counter()  # outcomes over all examples of a run, for the report


def build_machine(database_url: str, settings_: Settings, tiers: list[TierDef]):
    config = settings_.ledger_config()
    assert isinstance(config.expiry_policy, RollingToQuarterEnd)
    rules_ = config.transfers

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.runner = asyncio.Runner()
            self.engine = create_engine(database_url, pool_size=2)
            self.clock = Clock()
            self.ledger = LedgerService(self.engine, config, clock=self.clock)
            self.programme = Programme(self.ledger, settings_.tier_period)
            self.rulebook = Rulebook(self.ledger)
            run = self.run_id = uuid.uuid4().hex[:8]
            self.partner = f"mp-{run}"
            self.promotion = f"MP-{run}".upper()
            self.members = [f"mm-{run}-{i}" for i in range(MEMBERS)]  # the seats
            self.enrolled = list(self.members)  # everyone, in enrolment order
            self.seq = itertools.count()
            self.book = Book(
                self.members,
                self.partner,
                expiry_months=config.expiry_policy.months,
                transfer_min=rules_.min_points,
                transfer_fee_rate=rules_.fee_rate,
                transfer_daily_limit=rules_.daily_limit,
                tiers=tiers,
            )
            # (operation, call(other_payload) -> coroutine, first result)
            self.idempotent: list[tuple[str, object, object]] = []
            self.transfers: list[tuple[str, str]] = []  # (sender, receiver) that went through
            self.earn_rule: EarnRule | None = None
            self.offer: Offer | None = None
            self.ready = False

        # -- plumbing ---------------------------------------------------------

        def do(self, coroutine):
            name = coroutine.__qualname__.rsplit(".", 1)[-1]
            result = self.runner.run(coroutine)
            if name not in UNCOUNTED:
                self.book.counts[f"ok {name}"] += 1
            return result

        def teardown(self) -> None:
            totals.update(self.book.counts)
            self.do(self.engine.dispose())
            self.runner.close()

        def active(self, member: str) -> bool:
            return self.book.members[member].active

        def ref(self, prefix: str) -> str:
            return f"{prefix}-{next(self.seq)}"

        def key(self, caller: str | None = None) -> IdempotencyKey:
            return IdempotencyKey(
                caller or f"partner:{self.partner}", self.ref(f"key-{self.run_id}")
            )

        def refused(self, error, coroutine_factory) -> bool:
            """When the model predicts a refusal, the service must raise exactly it."""
            if error is None:
                return False
            with pytest.raises(error):
                self.do(coroutine_factory())
            self.book.counts[error.__name__] += 1
            return True

        def pick_hold(self, p: int, any_hold: bool) -> int:
            """An open hold, or (any_hold) any hold, resolved or not."""
            open_ = sorted(h for h, hold in self.book.holds.items() if hold.status == "open")
            hold_ids = open_ if open_ and not any_hold else sorted(self.book.holds)
            return hold_ids[p % len(hold_ids)]

        @property
        def now(self) -> datetime:
            return self.clock.now

        def distinct_later(self, delta: timedelta) -> datetime:
            # A distinct release time per earning, so releases happen in a known order.
            return self.now + delta + timedelta(seconds=next(self.seq) % 3600)

        # -- set-up: the parties, the start time, the partner's rule and a promotion

        @initialize(
            start_day=st.integers(0, 4 * 365),
            minute=st.integers(0, 24 * 60 - 1),
            amounts=st.lists(opening_balance, min_size=MEMBERS, max_size=MEMBERS),
        )
        def start(self, start_day, minute, amounts):
            # The partner registered (default contract) and the members enrolled.
            registry = Registry(self.engine, SecretBox(TEST_SECRET_KEY))
            self.runner.run(
                registry.create_partner(PartnerInput(id=self.partner, name=self.partner), ADMIN)
            )
            self.registry = Members(self.ledger, self.programme)
            for member in self.members:
                self.runner.run(self.registry.enrol(MemberInput(id=member), ADMIN))
            self.clock.now = EPOCH + timedelta(days=start_day, minutes=minute)
            valid_from = self.now - timedelta(days=1)
            self.earn_rule, self.offer = self.do(
                create_shop(
                    self.rulebook,
                    self.partner,
                    self.promotion,
                    valid_from,
                    self.now + timedelta(days=400),
                    PROMOTION_BUDGET,
                    PROMOTION_MEMBER_LIMIT,
                )
            )
            # Opening balances, so that spending and transfers mostly go through.
            for member, points in zip(self.members, amounts, strict=True):
                self.opening(member, points)
            self.ready = True

        def opening(self, member: str, points: int, qp: int = 0, earned_at=None) -> int:
            """Points to start with (earned now, or reported late: `earned_at`)."""
            reference = self.ref("opening")
            earned_at = earned_at or self.now
            command = Earn.simple(
                member, self.partner, reference, points, qp, effective_at=earned_at
            )
            receipt = self.do(self.ledger.earn(command))
            lines = [(PTS, points, "partner")] + ([(QP, qp, "program")] if qp else [])
            self.book.apply_earn(member, receipt.entry_id, lines, self.now, earned_at, None)
            return receipt.entry_id

        # -- earning ------------------------------------------------------------

        @rule(
            m=member_index,
            points=small_or_large,
            qp=st.integers(0, 50),
            pending_days=st.none() | st.integers(1, 20),
        )
        def earn(self, m, points, qp, pending_days):
            member = self.members[m]
            release_at = (
                None if pending_days is None else self.distinct_later(timedelta(days=pending_days))
            )
            key = self.key()

            def call(other: bool = False):
                return self.ledger.earn(
                    Earn.simple(
                        member, self.partner, key.key, points + other, qp, release_at=release_at
                    ),
                    key,
                )

            if self.refused(self.book.refusal_earn(member), call):
                return
            receipt = self.do(call())
            lines = [(PTS, points, "partner")] + ([(QP, qp, "program")] if qp else [])
            self.book.apply_earn(member, receipt.entry_id, lines, self.now, self.now, release_at)
            assert receipt.release_at == release_at
            self.idempotent.append(("earn", call, receipt))

        @rule(
            m=member_index,
            lines=purchase_lines,
            pending=st.booleans(),
        )
        def buy(self, m, lines, pending):
            self._buy(m, lines, pending)

        @rule(m=member_index, lines=purchase_lines, pending=st.booleans())
        def buy_more(self, m, lines, pending):
            self._buy(m, lines, pending)

        def _buy(self, m, lines, pending) -> str | None:
            """The programme's earn path: rule, tier bonus, budgeted promotion, QP,
            tier. Returns the purchase's reference (None: refused)."""
            member = self.members[m]
            model = self.book.members[member]
            purchase = Purchase(
                self.partner,
                self.now,
                "EUR",
                tuple(PurchaseLine(amount, category) for amount, category in lines),
            )
            reference = self.ref("purchase")
            release_at = self.distinct_later(RETURN_WINDOW) if pending else None
            tier = self.book.tier_of(member)
            offer = dataclasses.replace(
                self.offer,
                remaining_budget=PROMOTION_BUDGET - self.book.promotion_used,
                member_remaining=PROMOTION_MEMBER_LIMIT - self.book.promotion_used_by[member],
            )
            expected = evaluate(
                purchase, self.earn_rule, tier.code, tier.earn_multiplier, [offer], 0
            )
            key = self.key()

            def call(other: bool = False):
                return self.programme.earn_purchase(
                    member,
                    purchase,
                    reference if not other else reference + "-other",
                    release_at=release_at,
                    idempotency=key,
                )

            if self.refused(self.book.refusal_earn(member), call):
                return None
            receipt = self.do(call())
            got = [
                (ln.kind, ln.asset, ln.amount, ln.funder, ln.source) for ln in receipt.earning.lines
            ]
            want = [(ln.kind, ln.asset, ln.amount, ln.funder, ln.source) for ln in expected.lines]
            assert got == want, (got, want)
            assert receipt.earning.tier == tier.code
            assert (receipt.entry_id is None) == (not expected.lines)
            self.book.apply_earn(
                member,
                receipt.entry_id,
                [(ln.asset, ln.amount, ln.funder) for ln in expected.lines],
                self.now,
                purchase.occurred_at,
                release_at,
                kinds=[ln.kind for ln in expected.lines],
            )
            promoted = expected.points_from("promotion", self.promotion)
            self.book.promotion_used += promoted
            self.book.promotion_used_by[member] += promoted
            new_tier = None
            if expected.qualifying_points:
                new_tier = self.book.apply_tier_after_earning(
                    member, purchase.occurred_at, receipt.entry_id
                )
            assert receipt.new_tier == new_tier, (receipt.new_tier, new_tier)
            self.book.record_purchase(reference, member, receipt.entry_id, purchase.total_minor)
            balances = receipt.balances
            assert (balances.available, balances.pending, balances.held, balances.qp) == (
                model.available,
                model.pending,
                model.held,
                model.qp,
            )
            if new_tier:
                self.book.counts[f"tier-upgrade-{new_tier}"] += 1
            if promoted:
                self.book.counts["promotion-paid"] += 1
            self.idempotent.append(("earn_purchase", call, receipt))
            return reference

        @precondition(lambda self: self.book.purchases)
        @rule(p=pick, percent=st.integers(1, 120))
        def return_purchase(self, p, percent):
            references = sorted(self.book.purchases)
            self._return(references[p % len(references)], percent)

        @precondition(lambda self: self.book.purchases)
        @rule(percent=st.sampled_from([100, 100, 50, 90]))
        def return_latest_purchase(self, percent):
            """What a shop sees most: the last purchase (often one that just
            upgraded the member) comes back, whole or in part."""
            latest = max(self.book.purchases.values(), key=lambda p: p.entry_id or 0)
            self._return(latest.reference, percent)

        def _return(self, reference, percent):
            purchase = self.book.purchases[reference]
            left = purchase.total_minor - purchase.returned_minor
            amount = max(1, left * percent // 100)
            return_reference = self.ref("return")
            key = self.key()

            def call(other: bool = False):
                return self.programme.return_purchase(
                    self.partner, reference, return_reference, amount + other, idempotency=key
                )

            if self.refused(self.book.refusal_return(reference, amount), call):
                return
            receipt = self.do(call())
            history = len(self.book.members[purchase.member].tier_history)
            points = self.book.apply_return(reference, amount, self.now)
            assert receipt.points_reversed == points
            assert (receipt.entry_id is None) == (points == 0)
            if len(self.book.members[purchase.member].tier_history) > history:
                # The return's tier change names the return and points at its entry.
                last = self.do(self.programme.tier_history(purchase.member))[-1]
                old, new, *_ = self.book.members[purchase.member].tier_history[-1]
                assert (last["from_tier"], last["to_tier"]) == (old, new), last
                assert last["entry_id"] == receipt.entry_id, last
                assert return_reference in last["reason"], last
            self.idempotent.append(("return_purchase", call, receipt))

        # -- redemption ----------------------------------------------------------

        @rule(m=member_index, amount=small_or_large)
        def burn(self, m, amount):
            self._burn(self.members[m], amount)

        def _burn(self, member, amount):
            reference = self.ref("burn")
            key = self.key()

            def call(other: bool = False):
                return self.ledger.burn(Burn(member, self.partner, reference, amount + other), key)

            if self.refused(self.book.refusal_spend(member, amount), call):
                return
            receipt = self.do(call())
            self.book.apply_burn(member, amount, receipt.entry_id)
            self.idempotent.append(("burn", call, receipt))

        @rule(m=member_index, amount=small_or_large, ttl=st.none() | st.integers(60, 3600))
        def authorise(self, m, amount, ttl):
            member = self.members[m]
            command = Authorise(member, self.partner, amount, self.ref("hold"), ttl)
            if self.refused(
                self.book.refusal_spend(member, amount), lambda: self.ledger.authorise(command)
            ):
                return
            receipt = self.do(self.ledger.authorise(command))
            hold = receipt.hold
            expected_expiry = self.now + (
                config.hold_ttl if ttl is None else timedelta(seconds=ttl)
            )
            assert (hold.amount, hold.status, hold.expires_at) == (amount, "open", expected_expiry)
            self.book.apply_authorise(
                member, amount, receipt.entry_id, hold.hold_id, hold.expires_at
            )

        @precondition(lambda self: self.book.holds)
        @rule(
            p=pick,
            any_hold=st.booleans(),
            how=st.sampled_from(["full", "partial", "too-much"]),
            percent=share,
        )
        def capture(self, p, any_hold, how, percent):
            hold = self.book.holds[self.pick_hold(p, any_hold)]
            amount = {
                "full": None,
                "partial": max(1, hold.amount * percent // 100),
                "too-much": hold.amount + percent,
            }[how]
            self._capture(hold, amount)

        def _capture(self, hold, amount):
            command = Capture(hold.hold_id, self.partner, amount, self.ref("capture"))
            error = self.book.refusal_capture(hold.hold_id, amount, self.now)
            if self.refused(error, lambda: self.ledger.capture(command)):
                return
            receipt = self.do(self.ledger.capture(command))
            captured = self.book.apply_capture(hold.hold_id, amount, receipt.entry_id, self.now)
            assert receipt.amount == captured and receipt.hold.status == "captured"
            assert len(receipt.related_entry_ids) == (captured < hold.amount)

        @precondition(lambda self: any(h.status == "open" for h in self.book.holds.values()))
        @rule(percent=st.integers(1, 100))
        def capture_latest(self, percent):
            """What a till does: capture (part of) the hold it just took."""
            hold = max(
                (h for h in self.book.holds.values() if h.status == "open"), key=lambda h: h.hold_id
            )
            self._capture(hold, None if percent == 100 else max(1, hold.amount * percent // 100))

        @precondition(lambda self: self.book.holds)
        @rule(p=pick, any_hold=st.booleans())
        def void(self, p, any_hold):
            hold_id = self.pick_hold(p, any_hold)
            command = Void(hold_id, self.partner)
            if self.refused(self.book.refusal_void(hold_id), lambda: self.ledger.void(command)):
                return
            receipt = self.do(self.ledger.void(command))
            self.book.apply_void(hold_id, self.now)
            self.book.other_entries.append(receipt.entry_id)

        # -- transfers and adjustments ------------------------------------------

        @rule(
            a=member_index,
            offset=st.one_of(st.just(0), *[st.integers(1, MEMBERS - 1)] * 3),
            amount=st.one_of(st.integers(1, 150), st.integers(100, 21_000)),
        )
        def transfer(self, a, offset, amount):
            """To another member (offset 0: to oneself, refused)."""
            self._transfer(self.members[a], self.members[(a + offset) % MEMBERS], amount)

        @precondition(lambda self: self.transfers)
        @rule(p=pick, back=st.booleans(), amount=st.integers(100, 12_000))
        def transfer_again(self, p, back, amount):
            """Between the same two members again, or back: the sender's day
            fills up towards the daily limit."""
            sender, receiver = self.transfers[p % len(self.transfers)]
            self._transfer(*((receiver, sender) if back else (sender, receiver)), amount)

        def _transfer(self, sender, receiver, amount):
            key = self.key(f"member:{sender}")

            def call(other: bool = False):
                return self.ledger.transfer(Transfer(sender, receiver, amount + other), key)

            error = self.book.refusal_transfer(sender, receiver, amount, self.now)
            if self.refused(error, call):
                return
            receipt = self.do(call())
            fee = self.book.apply_transfer(sender, receiver, amount, receipt.entry_id, self.now)
            assert receipt.amount == amount
            self.transfers.append((sender, receiver))
            if fee:
                self.book.counts["transfer-with-fee"] += 1
            self.idempotent.append(("transfer", call, receipt))

        @rule(m=member_index, amount=st.integers(-300, 300).filter(bool))
        def adjust(self, m, amount):
            member = self.members[m]
            key = self.key(ADMIN)

            def call(other: bool = False):
                command = Adjust(member, amount, "property test" + " (again)" * other)
                return self.ledger.adjust(command, ADMIN, key)

            if self.refused(self.book.refusal_adjust(member, amount), call):
                return
            receipt = self.do(call())
            self.book.apply_adjust(member, amount, receipt.entry_id, self.now)
            self.idempotent.append(("adjust", call, receipt))

        # -- reversals ---------------------------------------------------------------

        def _reverse(self, entry_id: int, how: str, percent: int, left: int):
            amount = {
                "full": None,
                "partial": max(1, left * percent // 100),
                "too-much": left + percent,
            }[how]
            command = Reverse(entry_id, amount, partner_id=self.partner, reason="property test")
            call = lambda: self.ledger.reverse(command, f"partner:{self.partner}")  # noqa: E731
            if self.refused(self.book.refusal_reverse(entry_id, amount), call):
                return
            receipt = self.do(call())
            reversed_ = self.book.apply_reverse(entry_id, amount, self.now)
            assert receipt.amount == reversed_

        @precondition(lambda self: self.book.earnings)
        @rule(p=pick, how=st.sampled_from(["full", "partial", "too-much"]), percent=share)
        def reverse_earning(self, p, how, percent):
            entries = sorted(self.book.earnings)
            earning = self.book.earnings[entries[p % len(entries)]]
            self._reverse(earning.entry_id, how, percent, earning.points - earning.reversed)

        @precondition(lambda self: self.book.redemptions)
        @rule(p=pick, how=st.sampled_from(["full", "partial", "too-much"]), percent=share)
        def refund_redemption(self, p, how, percent):
            entries = sorted(self.book.redemptions)
            redemption = self.book.redemptions[entries[p % len(entries)]]
            left = redemption.points - redemption.reversed
            self._reverse(redemption.entry_id, how, percent, left)

        @precondition(lambda self: self.book.other_entries)
        @rule(p=pick, as_partner=st.booleans())
        def reverse_what_cannot_be_reversed(self, p, as_partner):
            """Holds, voids, transfers, adjustments, forfeits and merges are not
            reversible; a partner cannot reverse another's (or nobody's) entry."""
            entry_id = self.book.other_entries[p % len(self.book.other_entries)]
            entry = self.do(self.ledger.entry(entry_id))
            partner = self.partner if as_partner else None
            error = EntryNotFound if partner and entry.partner_id != partner else NotReversible
            with pytest.raises(error):
                self.do(self.ledger.reverse(Reverse(entry_id, partner_id=partner), ADMIN))
            self.book.counts[error.__name__] += 1

        # -- members leaving: closing, merging, and a fresh member in the seat -------

        @rule(
            m=member_index,
            balance=st.sampled_from(["forfeit", "refuse"]),
            spend_first=st.booleans(),
            then=successor,
        )
        def close(self, m, balance, spend_first, then):
            """Close an account: points left are forfeited to program:expired, or
            (refuse) the close is refused while any are left; open holds and a
            debt always refuse it. `spend_first`: the member redeems what is
            available first, as a member leaving does."""
            member = self.members[m]
            model = self.book.members[member]
            if spend_first and model.active and model.available > 0:
                self._burn(member, model.available)
            self._close(m, balance, then)

        def _close(self, m, balance, then):
            member = self.members[m]
            command = CloseInput("property test", balance)
            call = lambda: self.registry.close(member, command, ADMIN)  # noqa: E731
            if self.refused(self.book.refusal_close(member, balance), call):
                return
            closure = self.do(call())
            points = self.book.apply_close(member, self.now)
            assert closure.member.status == "closed"
            assert (closure.forfeit_entry_id is None) == (points == 0)
            if points:
                self.book.other_entries.append(closure.forfeit_entry_id)
                self.book.counts["closed, points forfeited"] += 1
            else:
                self.book.counts[f"closed with nothing left ({balance})"] += 1
            if then is not None:
                self._enrol(m, then)

        @rule(
            a=member_index,
            offset=st.one_of(st.just(0), *[st.integers(1, MEMBERS - 1)] * 5),
            late=late_earnings,
            purchase=bought,
            then=successor,
        )
        def merge(self, a, offset, late, purchase, then):
            """One person's two accounts become one: `a`'s into another's
            (offset 0: into itself, refused). Refused while `a` has open holds
            or a debt, or either member has left."""
            self._merge(a, (a + offset) % MEMBERS, late, purchase, then)

        @rule(
            a=member_index,
            offset=st.integers(1, MEMBERS - 1),
            debtor=st.sampled_from(["target", "source"]),
            owe=st.integers(1, 3_000),
            late=late_earnings,
            purchase=bought,
            then=successor,
        )
        def merge_with_a_member_in_debt(self, a, offset, debtor, owe, late, purchase, then):
            """A member who owes points (a return after spending) as the
            survivor: the carried lots repay the debt first, soonest-expiring
            first, and only what is left stays a lot. As the source: the
            merge, and a close, are refused."""
            b = (a + offset) % MEMBERS
            member = self.members[b if debtor == "target" else a]
            if self.active(member) and self.book.members[member].available >= 0:
                self._owe(member, owe)
            if debtor == "source":
                self._close(a, "forfeit", None)
            self._merge(a, b, late, purchase, then)

        def _owe(self, member: str, points: int) -> None:
            """Earn `points`, spend everything, and have that earning reversed."""
            entry_id = self.opening(member, points)
            self._burn(member, self.book.members[member].available)
            self._reverse(entry_id, "full", 100, points)
            assert self.book.members[member].available < 0

        def _merge(self, a: int, b: int, late, purchase, then) -> None:
            source, target = self.members[a], self.members[b]
            command = MergeInput(target, "property test")
            call = lambda: self.registry.merge(source, command, ADMIN)  # noqa: E731
            if self.refused(self.book.refusal_merge(source, target), call):
                return
            # What the source earns now changes nothing of that verdict.
            for points, qp, ago in late:
                self.opening(source, points, qp, self.now - timedelta(seconds=ago))
            reference = purchase and self._buy(a, purchase[0], pending=True)
            merger = self.do(call())
            moved = self.book.apply_merge(source, target, self.now)
            assert (merger.source.status, merger.source.merged_into) == ("merged", target)
            assert merger.target.status == "active"
            assert len(merger.entry_ids) == moved["entries"], (merger.entry_ids, moved)
            assert merger.moved["purchases"] == moved["purchases"], (merger.moved, moved)
            assert merger.moved["tier"] == moved["tier"], (merger.moved, moved)
            if moved["lots"]:
                # The lots the merge opened at the target: each with the expiry
                # of the source's lot it carries (soonest first).
                created = self.do(self.merged_lots(merger.entry_ids[0]))
                assert created == [(lot.remaining, lot.expires_at) for lot in moved["lots"]]
                self.book.counts["merge carried lots"] += 1
            self.book.other_entries.extend(merger.entry_ids)
            if reference and purchase[1]:
                self._return(reference, purchase[1])
            if then is not None:
                self._enrol(a, then)

        async def merged_lots(self, entry_id: int) -> list[tuple[int, datetime]]:
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT remaining, expires_at FROM lots WHERE source_entry_id = :e "
                        "ORDER BY id"
                    ),
                    {"e": entry_id},
                )
                return [(r.remaining, r.expires_at) for r in rows]

        @precondition(lambda self: not all(self.active(m) for m in self.members))
        @rule(p=pick, points=opening_balance)
        def enrol(self, p, points):
            """A fresh member takes the seat of one who left."""
            seats = [i for i, member in enumerate(self.members) if not self.active(member)]
            self._enrol(seats[p % len(seats)], points)

        def _enrol(self, seat: int, points: int) -> None:
            member = f"mm-{self.run_id}-{len(self.enrolled)}"
            view = self.do(self.registry.enrol(MemberInput(id=member), ADMIN))
            assert (view.id, view.status) == (member, "active")
            self.enrolled.append(member)
            self.book.add_member(member)
            self.members[seat] = member
            self.opening(member, points)

        # -- idempotency -----------------------------------------------------------------

        @precondition(lambda self: self.idempotent)
        @rule(p=pick)
        def retry_exactly(self, p):
            """Same key, same request: the first result again, nothing posted."""
            operation, call, first = self.idempotent[p % len(self.idempotent)]
            again = self.do(call())
            assert again == first, operation
            self.book.counts["idempotent-retry"] += 1

        @precondition(lambda self: self.idempotent)
        @rule(p=pick)
        def reuse_key_for_another_request(self, p):
            """Same key, other request: refused, nothing posted."""
            _, call, _ = self.idempotent[p % len(self.idempotent)]
            with pytest.raises(IdempotencyKeyReused):
                self.do(call(True))
            self.book.counts["IdempotencyKeyReused"] += 1

        # -- time and jobs ------------------------------------------------------------------

        @rule(unit=st.sampled_from(["minutes", "hours", "days"]), n=st.integers(1, 40))
        def time_passes(self, unit, n):
            """Minutes (holds expire), hours and days (pending points, the
            transfer day); the jobs run separately, so their backlog is tested."""
            self.clock.advance(**{unit: n})

        @rule(months=st.integers(1, 48), run_jobs=st.booleans())
        def months_pass(self, months, run_jobs):
            """Lots (rolling 36 months to the quarter's end) and statuses expire."""
            self.clock.advance(days=round(months * 30.44))
            if run_jobs:
                for job in JOBS:
                    self.run_job(job)

        @rule(job=st.sampled_from(JOBS))
        def job(self, job):
            self.run_job(job)

        def run_job(self, job):
            if job == "release-pending":
                self.do(self.ledger.release_pending())
                self.book.counts["released"] += self.book.apply_release_pending(self.now)
            elif job == "expire-holds":
                self.do(self.ledger.expire_holds())
                self.book.counts["holds-expired"] += self.book.apply_expire_holds(self.now)
            elif job == "expire-points":
                before = self.book.expired
                self.do(self.ledger.expire_points())
                self.book.apply_expire_points(self.now)
                self.book.counts["points-expired"] += self.book.expired - before
            else:
                self.do(self.programme.requalify_tiers())
                for _, old, new in self.book.apply_requalify(self.now):
                    self.book.counts[f"requalified {old}->{new}"] += 1

        # -- invariants ------------------------------------------------------------------

        async def snapshot(self) -> dict:
            """Everything the invariants compare, in one statement (one snapshot)."""
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(SNAPSHOT),
                        {"m": self.enrolled, "p": self.partner, "c": self.promotion},
                    )
                ).one()
            balances = {m: {} for m in self.enrolled}
            for member_id, account, balance in row.balances:
                balances[member_id][account.rsplit(":", 1)[1]] = balance
            lots = {m: [] for m in self.enrolled}
            for member_id, remaining, expires_at in row.lots:
                lots[member_id].append((remaining, datetime.fromisoformat(expires_at)))
            return dict(
                balances=balances,
                accounts={(a, asset): total for a, asset, total in row.accounts},
                entries=row.entries,
                lots=lots,
                holds={hold_id: status for hold_id, status in row.holds},
                tiers={
                    m: (code, until and datetime.fromisoformat(until))
                    for m, code, until in row.tiers
                },
                statuses={m: (status, into) for m, status, into in row.statuses},
                budget=row.budget,
                usage={m: points for m, points in row.usage},
                partner={(a, asset): total for a, asset, total in row.partner},
            )

        @invariant()
        def books_match_the_model(self):
            if not self.ready:
                return
            book = self.book
            book.check_internal()
            db = self.do(self.snapshot())
            for member_id, member in book.members.items():
                b = db["balances"][member_id]
                assert tuple(b.get(name, 0) for name in ("available", "pending", "held", "qp")) == (
                    member.available,
                    member.pending,
                    member.held,
                    member.qp,
                ), member_id
                model_lots = [
                    (lot.remaining, lot.expires_at) for lot in member.lots if lot.remaining > 0
                ]
                assert db["lots"][member_id] == model_lots, member_id
                tier = db["tiers"].get(member_id, ("base", None))
                assert tier == (member.tier, member.tier_valid_until), member_id
            expired = db["accounts"].get(("program:expired", PTS), 0)
            assert expired == book.expired, ("program:expired", expired, book.expired)
            expected_accounts = {k: v for k, v in book.accounts.items() if v}
            assert {k: v for k, v in db["accounts"].items() if v} == expected_accounts
            assert db["entries"] == book.entries
            assert db["holds"] == {h.hold_id: h.status for h in book.holds.values()}
            assert db["statuses"] == {
                m: (member.status, member.merged_into) for m, member in book.members.items()
            }
            assert db["budget"] == book.promotion_used <= PROMOTION_BUDGET
            # Per member: what the promotion paid them, net of what returns gave
            # back (a merge adds the source's to the survivor's).
            used_by = {m: v for m, v in book.promotion_used_by.items() if v}
            assert db["usage"] == used_by, (db["usage"], used_by)
            assert all(
                v <= PROMOTION_MEMBER_LIMIT
                for m, v in used_by.items()
                if not book.members[m].merged_from
            )
            partner_accounts = {
                k: v for k, v in expected_accounts.items() if k[0].startswith("partner:")
            }
            assert {k: v for k, v in db["partner"].items() if v} == partner_accounts

        @invariant()
        def ledger_verifies_clean(self):
            if not self.ready:
                return
            report = self.do(verify(self.engine))
            assert report.clean, report.render()

    return LedgerMachine


@pytest.fixture(scope="module")
def machine_database(server_url):
    """The machines' own database: every step verifies the whole database,
    which then holds only what the machines posted, not the whole suite's."""
    with own_database(server_url, "loyalty_machine") as url:
        yield url


@pytest.mark.parametrize(
    "fee_rate", ["production", "0.01"], ids=["production-defaults", "transfer-fee-1pct"]
)
def test_ledger_state_machine(machine_database, fee_rate):
    database_url = machine_database
    settings_ = Settings() if fee_rate == "production" else production_settings(fee_rate)
    tiers = asyncio.run(put_and_load_tiers(database_url))
    machine = build_machine(database_url, settings_, tiers)
    base = settings.default
    # Each step checks the whole database (`verify`), so examples are few and
    # long, the same in both profiles: the two machines are this suite's
    # longest tests, and CI's ten minutes have no room for more (a longer hunt:
    # PROPERTY_MACHINE_EXAMPLES). The fee variant explores transfers' fees, the
    # rest it shares with the production defaults: half as many examples.
    examples, steps = 16, 40
    if fee_rate != "production":
        examples //= 2
    if os.environ.get("PROPERTY_MACHINE_EXAMPLES"):  # a longer hunt, by hand
        examples = int(os.environ["PROPERTY_MACHINE_EXAMPLES"])
    if os.environ.get("PROPERTY_NO_SHRINK"):  # development only
        base = settings(base, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    run_state_machine_as_test(
        machine, settings=settings(base, max_examples=examples, stateful_step_count=steps)
    )
    print(f"\n{fee_rate}: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    totals.clear()

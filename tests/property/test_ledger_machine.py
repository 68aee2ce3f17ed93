"""Stateful property test: random sequences of earn / release / burn / hold /
capture / void / transfer / reverse / adjust against the real PostgreSQL,
checked after every step against a plain model and `verify`:
every entry balances per asset, every balance equals the sum of its postings,
lots add up to available, no member's available goes negative except through
a clawback, and idempotent retries post once."""

import asyncio
import itertools
import uuid
from datetime import timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger.commands import Adjust, Authorise, Burn, Capture, Earn, Reverse, Transfer, Void
from ledger.database import create_engine
from ledger.errors import HoldExpired, InsufficientPoints, ReversalExceedsOriginal
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerConfig, LedgerService
from ledger.verify import verify
from tests.conftest import Clock

MEMBERS = 3
PARTNER = "machine-partner"


def build_machine(database_url: str):
    class LedgerMachine(RuleBasedStateMachine):
        earnings = Bundle("earnings")
        redemptions = Bundle("redemptions")
        holds = Bundle("holds")

        def __init__(self) -> None:
            super().__init__()
            self.runner = asyncio.Runner()
            self.engine = create_engine(database_url, pool_size=2)
            self.clock = Clock()
            self.ledger = LedgerService(self.engine, LedgerConfig(), clock=self.clock)
            run = uuid.uuid4().hex[:8]
            self.members = [f"mm-{run}-{i}" for i in range(MEMBERS)]
            self.refs = (f"{run}-{n}" for n in itertools.count())
            self.available = dict.fromkeys(self.members, 0)
            self.pending = dict.fromkeys(self.members, 0)
            self.held = dict.fromkeys(self.members, 0)
            self.clawed = set()
            self.earn_state = {}  # entry -> [member, points, still pending, release_at, reversed]
            self.open_holds = {}  # hold id -> (member, amount, expires_at)
            self.redeemed = {}  # entry -> [member, amount, reversed]
            self.last_idempotent = None

        def do(self, coroutine):
            return self.runner.run(coroutine)

        def teardown(self) -> None:
            self.do(self.engine.dispose())
            self.runner.close()

        member = st.integers(0, MEMBERS - 1)

        @rule(target=earnings, m=member, points=st.integers(1, 300), pending=st.booleans())
        def earn(self, m, points, pending):
            member = self.members[m]
            release_at = self.clock.now + timedelta(days=10) if pending else None
            key = IdempotencyKey(f"partner:{PARTNER}", next(self.refs))
            command = Earn.simple(
                member, PARTNER, key.key, points, points // 10, release_at=release_at
            )
            receipt = self.do(self.ledger.earn(command, key))
            self.last_idempotent = ("earn", command, key, receipt)
            if pending:
                self.pending[member] += points
            else:
                self._credit(member, points)
            self.earn_state[receipt.entry_id] = [
                member,
                points,
                points if pending else 0,
                release_at,
                0,
            ]
            return receipt.entry_id

        def _credit(self, member, points):
            self.available[member] += points

        @rule(days=st.integers(1, 20))
        def time_passes(self, days):
            self.clock.advance(days=days)
            self.do(self.ledger.release_pending())
            self.do(self.ledger.expire_holds())
            for state in self.earn_state.values():
                member, _, still_pending, release_at, _ = state
                if still_pending and release_at <= self.clock.now:
                    self.pending[member] -= still_pending
                    self._credit(member, still_pending)
                    state[2] = 0
            for hold_id, (_, _, expires_at) in list(self.open_holds.items()):
                if expires_at <= self.clock.now:
                    self._return_hold(hold_id)

        def _return_hold(self, hold_id):
            member, amount, _ = self.open_holds.pop(hold_id)
            self.held[member] -= amount
            self._credit(member, amount)

        @rule(target=redemptions, m=member, amount=st.integers(1, 200))
        def burn(self, m, amount):
            member = self.members[m]
            command = Burn(member, PARTNER, next(self.refs), amount)
            if amount > self.available[member]:
                with pytest.raises(InsufficientPoints):
                    self.do(self.ledger.burn(command))
                return -1
            receipt = self.do(self.ledger.burn(command))
            self.available[member] -= amount
            self.redeemed[receipt.entry_id] = [member, amount, 0]
            return receipt.entry_id

        @rule(target=holds, m=member, amount=st.integers(1, 200))
        def authorise(self, m, amount):
            member = self.members[m]
            command = Authorise(member, PARTNER, amount)
            if amount > self.available[member]:
                with pytest.raises(InsufficientPoints):
                    self.do(self.ledger.authorise(command))
                return -1
            receipt = self.do(self.ledger.authorise(command))
            self.available[member] -= amount
            self.held[member] += amount
            self.open_holds[receipt.hold.hold_id] = (member, amount, receipt.hold.expires_at)
            return receipt.hold.hold_id

        @rule(target=redemptions, hold_id=consumes(holds), share=st.integers(1, 100))
        def capture(self, hold_id, share):
            if hold_id not in self.open_holds:
                return -1
            member, amount, expires_at = self.open_holds[hold_id]
            captured = max(1, amount * share // 100)
            command = Capture(hold_id, PARTNER, captured)
            if expires_at <= self.clock.now:
                with pytest.raises(HoldExpired):
                    self.do(self.ledger.capture(command))
                return -1
            receipt = self.do(self.ledger.capture(command))
            del self.open_holds[hold_id]
            self.held[member] -= amount
            self._credit(member, amount - captured)
            self.redeemed[receipt.entry_id] = [member, captured, 0]
            return receipt.entry_id

        @rule(hold_id=consumes(holds))
        def void(self, hold_id):
            if hold_id not in self.open_holds:
                return
            self.do(self.ledger.void(Void(hold_id, PARTNER)))
            self._return_hold(hold_id)

        @rule(a=member, b=member, amount=st.integers(1, 150))
        def transfer(self, a, b, amount):
            if a == b:
                return
            sender, receiver = self.members[a], self.members[b]
            command = Transfer(sender, receiver, amount)
            if amount > self.available[sender]:
                with pytest.raises(InsufficientPoints):
                    self.do(self.ledger.transfer(command))
                return
            self.do(self.ledger.transfer(command))
            self.available[sender] -= amount
            self._credit(receiver, amount)

        @rule(entry_id=earnings, share=st.integers(1, 100))
        def return_purchase(self, entry_id, share):
            member, points, still_pending, _, reversed_ = self.earn_state[entry_id]
            left = points - reversed_
            amount = max(1, left * share // 100)
            command = Reverse(entry_id, amount, partner_id=PARTNER)
            if left == 0:
                with pytest.raises(ReversalExceedsOriginal):
                    self.do(self.ledger.reverse(command, "test"))
                return
            self.do(self.ledger.reverse(command, "test"))
            from_pending = min(amount, still_pending)
            self.pending[member] -= from_pending
            self.earn_state[entry_id][2] -= from_pending
            self.earn_state[entry_id][4] += amount
            if amount - from_pending:
                self.available[member] -= amount - from_pending
                self.clawed.add(member)

        @rule(entry_id=redemptions, share=st.integers(1, 100))
        def refund_redemption(self, entry_id, share):
            if entry_id not in self.redeemed:
                return
            member, amount, reversed_ = self.redeemed[entry_id]
            left = amount - reversed_
            refund = max(1, left * share // 100)
            command = Reverse(entry_id, refund, partner_id=PARTNER)
            if left == 0:
                with pytest.raises(ReversalExceedsOriginal):
                    self.do(self.ledger.reverse(command, "test"))
                return
            self.do(self.ledger.reverse(command, "test"))
            self.redeemed[entry_id][2] += refund
            self._credit(member, refund)

        @rule(m=member, amount=st.integers(-100, 100).filter(bool))
        def adjust(self, m, amount):
            member = self.members[m]
            command = Adjust(member, amount, "machine adjustment")
            if amount < 0 and -amount > self.available[member]:
                with pytest.raises(InsufficientPoints):
                    self.do(self.ledger.adjust(command, "staff:machine"))
                return
            self.do(self.ledger.adjust(command, "staff:machine"))
            self._credit(member, amount) if amount > 0 else self.available.__setitem__(
                member, self.available[member] + amount
            )

        @precondition(lambda self: self.last_idempotent is not None)
        @rule()
        def retry_last_earning(self):
            _, command, key, first = self.last_idempotent
            again = self.do(self.ledger.earn(command, key))
            assert again.entry_id == first.entry_id  # posted once, same answer

        @invariant()
        def balances_match_the_model(self):
            for member in self.members:
                balances = self.do(self.ledger.balances(member))
                assert (balances.available, balances.pending, balances.held) == (
                    self.available[member],
                    self.pending[member],
                    self.held[member],
                ), member
                if member not in self.clawed:
                    assert balances.available >= 0

        @invariant()
        def ledger_verifies_clean(self):
            report = self.do(verify(self.engine))
            assert report.clean, report.render()

    return LedgerMachine


def test_ledger_state_machine(database_url):
    machine = build_machine(database_url)
    run_state_machine_as_test(machine, settings=settings(stateful_step_count=25))

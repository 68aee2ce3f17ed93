"""What one signed earn costs the database: statements, transactions and
connection checkouts of the whole request (guard, idempotency, earning), counted
on the app's engine with SQLAlchemy's events, per checkout: the earning's own
(the one that claims the idempotency key) and the request around it."""

import time
import uuid

from litestar.testing import AsyncTestClient
from sqlalchemy import event

from api.app import create_app
from tests.api.test_partner_api import earn_body, open_shop, shop  # noqa: F401  (fixture)


class Trips:
    """Statements and transactions by pool checkout, in order."""

    def __init__(self, engine) -> None:
        self.engine = engine.sync_engine
        self.checkouts: list[dict] = []  # {"statements": [...], "transactions": n}
        self._current: dict[int, dict] = {}  # DBAPI connection -> its checkout

    @property
    def statements(self) -> list[str]:
        return [s for c in self.checkouts for s in c["statements"]]

    @property
    def transactions(self) -> int:
        return sum(c["transactions"] for c in self.checkouts)

    def _of(self, conn) -> dict:
        return self._current[id(conn.connection.dbapi_connection)]

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self._of(conn)["statements"].append(statement)

    def _begin(self, conn) -> None:
        self._of(conn)["transactions"] += 1

    def _checkout(self, dbapi_connection, record, proxy) -> None:
        checkout = {"statements": [], "transactions": 0}
        self.checkouts.append(checkout)
        self._current[id(dbapi_connection)] = checkout

    def split(self) -> tuple[list[dict], dict, list[dict]]:
        """Checkouts before the earning's, the earning's, and after it."""
        (index,) = [
            i
            for i, c in enumerate(self.checkouts)
            if any("INSERT INTO idempotency_keys" in s for s in c["statements"])
        ]
        return self.checkouts[:index], self.checkouts[index], self.checkouts[index + 1 :]

    def __enter__(self) -> "Trips":
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine.pool, "checkout", self._checkout)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine.pool, "checkout", self._checkout)


async def _counted_earn(api_settings, shop):  # noqa: F811
    async with AsyncTestClient(create_app(api_settings)) as client:

        async def earn(reference: str):
            return await client.post(
                "/v1/partner/earn",
                json=earn_body(shop, reference, 1_000),
                headers={"Idempotency-Key": uuid.uuid4().hex},
                auth=shop.auth(),
            )

        warm = await earn("warm-" + uuid.uuid4().hex)  # definitions and keys cached
        assert warm.status_code == 201, warm.text
        with Trips(client.app.state.engine) as trips:
            answer = await earn("counted-" + uuid.uuid4().hex)
        assert answer.status_code == 201, answer.text
        before, earning, after = trips.split()
        print(
            f"\n{len(trips.statements)} statements, {trips.transactions} transactions, "
            f"{len(trips.checkouts)} checkouts; the earning's transaction: "
            f"{len(earning['statements'])} statements"
        )
        print("\n".join(s[:120] for s in trips.statements))
        return trips, before, earning, after


async def test_the_request_around_the_earning_is_one_statement(api_settings, shop):  # noqa: F811
    """Outside the earning's transaction: the guard's one autocommit statement
    (signature recorded, key and partner status, stored answer), nothing after
    (the ledger stored the result with the key). No pool pre-ping: a checkout
    costs no round trip."""
    trips, before, earning, after = await _counted_earn(api_settings, shop)
    (guard,) = before
    assert len(guard["statements"]) == 1, guard["statements"]
    assert "INSERT INTO signature_replays" in guard["statements"][0]
    assert "partner_requests" in guard["statements"][0]
    assert after == [], after
    assert len(trips.checkouts) == 2
    assert earning["transactions"] == 1
    assert trips.transactions == 2  # the earning's, and the guard's autocommit one
    assert not any("partner_requests" in s for s in earning["statements"])


async def test_a_signed_earn_is_one_transaction_of_a_few_statements(api_settings, shop):  # noqa: F811
    """Six statements in all (issue 11's target: at most eight): the guard's
    one, then in the earning's transaction the opening statement (the
    idempotency claim, the definitions version, card holder and registry
    row, and the member's lock when no budgeted promotion is at the shop),
    the member read (tier, balances, used references, period QP), the
    posting (entry, postings and balances in one statement), the new lot (at
    a partner with a return window there is none: five), and the purchase
    record with the stored result."""
    trips, *_ = await _counted_earn(api_settings, shop)
    assert len(trips.statements) == 6, trips.statements
    opening = next(s for s in trips.statements if "FROM cards" in s)
    assert "INSERT INTO idempotency_keys" in opening and "INSERT INTO balances" in opening
    last = trips.statements[-1]
    assert "INSERT INTO partner_purchases" in last and "UPDATE idempotency_keys" in last


async def test_a_pending_earning_is_written_with_its_entry(
    api_settings, engine, ledger, new_id, new_member
):
    """At a partner with a return window the points wait in pending: the
    pending earning is written by the posting statement itself, so the earn
    is five statements (none for the pending points)."""
    online = await open_shop(engine, ledger, new_id, new_member, return_window_days=14)
    trips, *_ = await _counted_earn(api_settings, online)
    assert len(trips.statements) == 5, trips.statements
    (posting,) = [s for s in trips.statements if "INSERT INTO pending_points" in s]
    assert "INSERT INTO postings" in posting
    assert (await ledger.balances(online.member_id)).pending == 20  # warm-up and counted


async def test_a_retry_of_a_success_is_answered_from_the_ledger(api_settings, shop):  # noqa: F811
    """Nothing stored after the success: the retry gets the ledger's stored
    receipt through its claim, the same 201 and body, marked replayed; it costs
    the guard's statement and one short transaction."""
    async with AsyncTestClient(create_app(api_settings)) as client:
        body = earn_body(shop, "retry-" + uuid.uuid4().hex, 1_000)
        key = uuid.uuid4().hex
        first = await client.post(
            "/v1/partner/earn", json=body, headers={"Idempotency-Key": key}, auth=shop.auth()
        )
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        with Trips(client.app.state.engine) as trips:
            again = await client.post(
                "/v1/partner/earn",
                json=body,
                headers={"Idempotency-Key": key},
                auth=shop.auth(clock=lambda: time.time() + 1),  # signed anew
            )
        assert again.status_code == 201, again.text
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert len(trips.checkouts) == 2
        assert [len(c["statements"]) for c in trips.checkouts] == [1, 2]  # guard; claim, read

"""Staff API: balances, entries, history and adjustments through HTTP."""

import pytest

from api import auth
from ledger.commands import Earn


async def test_adjustment_then_balance_entry_and_history(
    client, token, ledger, new_member, new_partner
):
    member = await new_member()
    response = await client.post(
        "/v1/staff/adjustments",
        headers=token(),
        json={"member_id": member, "amount": 40, "reason": "welcome bonus"},
    )
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["balances"]["available"] == 40

    balances = (await client.get(f"/v1/staff/members/{member}/balances", headers=token())).json()
    assert balances["balances"]["available"] == 40
    assert balances["expiring"] == []  # 36 months away

    account = (
        await client.get(f"/v1/staff/accounts/member:{member}:available/balance", headers=token())
    ).json()
    assert account["balances"][0] == {"asset": "PTS", "balance": 40, "version": 1}

    entry = (await client.get(f"/v1/staff/entries/{receipt['entry_id']}", headers=token())).json()
    assert entry["posted_by"] == "staff:alice" and entry["reason"] == "welcome bonus"
    assert sorted(p["amount"] for p in entry["postings"]) == [-40, 40]

    await ledger.earn(Earn.simple(member, await new_partner(), "r-1", 10))
    history = (
        await client.get(f"/v1/staff/members/{member}/history?limit=1", headers=token())
    ).json()
    assert [e["kind"] for e in history["entries"]] == ["earn"]
    rest = (
        await client.get(
            f"/v1/staff/members/{member}/history?limit=1&cursor={history['next_cursor']}",
            headers=token(),
        )
    ).json()
    assert [e["kind"] for e in rest["entries"]] == ["adjust"] and rest["next_cursor"] is None


async def test_idempotent_adjustment_over_http(client, token, new_member):
    member = await new_member()
    headers = {**token(), "Idempotency-Key": "adj-1"}
    body = {"member_id": member, "amount": 5, "reason": "goodwill"}
    first = await client.post("/v1/staff/adjustments", headers=headers, json=body)
    again = await client.post("/v1/staff/adjustments", headers=headers, json=body)
    assert first.json() == again.json()
    assert again.json()["balances"]["available"] == 5
    changed = await client.post(
        "/v1/staff/adjustments", headers=headers, json={**body, "amount": 6}
    )
    assert changed.status_code == 422
    assert changed.json()["type"] == "/problems/idempotency-key-reused"


async def test_finance_reads_but_cannot_adjust(client, token, new_member):
    finance = token("fiona", roles=("finance",))
    member = await new_member()
    assert (
        await client.get(f"/v1/staff/members/{member}/balances", headers=finance)
    ).status_code == 200
    response = await client.post(
        "/v1/staff/adjustments",
        headers=finance,
        json={"member_id": member, "amount": 5, "reason": "x"},
    )
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/missing-role"


async def test_staff_reversal(client, token, ledger, new_member, new_partner):
    member, partner = await new_member(), await new_partner()
    earned = await ledger.earn(Earn.simple(member, partner, "r-1", 90))
    response = await client.post(
        "/v1/staff/reversals",
        headers=token(),
        json={"entry_id": earned.entry_id, "amount": 30, "reason": "partner reported a return"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["balances"]["available"] == 60
    too_much = await client.post(
        "/v1/staff/reversals",
        headers=token(),
        json={"entry_id": earned.entry_id, "amount": 61, "reason": "x"},
    )
    assert too_much.status_code == 422
    assert too_much.json()["type"] == "/problems/reversal-exceeds-original"
    assert too_much.json()["reversible"] == 60
    for blank in ("", "   ", "\u200b", "--"):  # says why, as an adjustment's does
        unexplained = await client.post(
            "/v1/staff/reversals",
            headers=token(),
            json={"entry_id": earned.entry_id, "amount": 1, "reason": blank},
        )
        assert unexplained.status_code == 422, unexplained.text
        assert unexplained.json()["type"] == "/problems/reason-required"
    assert (await ledger.balances(member)).available == 60


async def test_a_token_naming_nobody_is_refused(client, token, monkeypatch):
    """A staff token whose subject is empty or blank would post entries by
    `staff:`, naming nobody: 401 token-invalid (`loyalty token` mints none)."""
    for subject in ("", " alice", "bob\n"):
        with pytest.raises(ValueError, match="sub claim"):
            token(subject)
        with monkeypatch.context() as minting:  # as another issuer might
            minting.setattr(auth, "is_subject", lambda value: True)
            headers = token(subject)
        response = await client.get("/v1/staff/jobs", headers=headers)
        assert response.status_code == 401, (subject, response.text)
        assert response.json()["type"] == "/problems/token-invalid"


async def test_health_and_openapi(client):
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "postgres": "ok", "redis": "ok"}
    schema = (await client.get("/docs/openapi.json")).json()
    assert "/v1/staff/adjustments" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200

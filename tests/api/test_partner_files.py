"""Partner transaction files over HTTP (`POST /v1/partner/files`): a signed
CSV or JSON Lines upload answers its summary and rejects; the signature
covers the file (a forged or altered upload is a 401 and posts nothing); an
upload over the body limit is a 413 that names the limit; a body of another
media type is a 415; the upload is idempotent under its key, and the same
file under a new key answers its earlier summary without posting again."""

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

from tests.api import test_partner_api
from tests.api.test_partner_api import Shop

shop = test_partner_api.shop  # the signed partner fixture, shared

HEADER = "card_number,reference,occurred_at,currency,amount_minor,category\n"


def csv_file(shop: Shop, *rows: tuple[str, int]) -> bytes:
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    lines = [f"{shop.card},{reference},{when},EUR,{amount},groceries" for reference, amount in rows]
    return (HEADER + "\n".join(lines) + "\n").encode()


async def upload(client, shop, body: bytes, media="text/csv", key=None, auth=None, name=None):
    headers = {"Content-Type": media, "Idempotency-Key": key or uuid.uuid4().hex}
    return await client.post(
        "/v1/partner/files" + (f"?name={name}" if name else ""),
        content=body,
        headers=headers,
        auth=auth or shop.auth(),
    )


async def test_a_signed_upload_answers_its_summary_and_rejects(client, shop, ledger, assert_clean):
    body = csv_file(shop, ("F-1", 1000), ("F-2", 2500), ("F-1", 700)) + b"bad,row\n"

    response = await upload(client, shop, body, key="day-1", name="day-1.csv")

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["file_name"] == "day-1.csv" and answer["format"] == "csv"
    assert {k: answer[k] for k in ("rows", "posted", "duplicates", "rejected", "points")} == {
        "rows": 4,
        "posted": 2,
        "duplicates": 1,
        "rejected": 1,
        "points": 35,
    }
    assert [(r["line"], r["reference"], r["code"]) for r in answer["rejects"]] == [
        (4, "F-1", "duplicate-partner-reference"),
        (5, None, "invalid-purchase"),
    ]
    assert "2 values, the header names 6 columns" in answer["rejects"][1]["detail"]
    assert (await ledger.balances(shop.member_id)).available == 35

    await asyncio.sleep(1.05)  # a retry is signed anew
    retry = await upload(client, shop, body, key="day-1", name="day-1.csv")
    assert retry.status_code == 200 and retry.json() == answer
    assert retry.headers["idempotent-replayed"] == "true"

    again = await upload(client, shop, body, key="day-1-again")
    assert again.status_code == 200 and again.json()["already_imported"] is True
    assert again.json()["import_id"] == answer["import_id"]
    assert again.json()["rejects"] == answer["rejects"]
    assert (await ledger.balances(shop.member_id)).available == 35
    await assert_clean()


async def test_a_json_lines_upload(client, shop, ledger):
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    item = {
        "card_number": shop.card,
        "reference": "J-1",
        "purchase": {
            "currency": "EUR",
            "occurred_at": when,
            "lines": [{"amount_minor": 1200, "category": "groceries"}] * 2,
        },
    }
    body = (json.dumps(item) + "\n" + json.dumps({**item, "reference": "J-2"}) + "\n").encode()

    response = await upload(client, shop, body, media="application/x-ndjson")

    assert response.status_code == 200, response.text
    assert (response.json()["posted"], response.json()["points"]) == (2, 48)
    assert (await ledger.balances(shop.member_id)).available == 48


async def test_a_forged_or_altered_upload_is_a_401_and_posts_nothing(client, shop, ledger):
    body = csv_file(shop, ("X-1", 5000))
    forged = dataclasses.replace(shop, secret="not-the-secret")
    response = await upload(client, shop, body, auth=forged.auth())
    assert (response.status_code, response.json()["type"]) == (401, "/problems/signature-invalid")

    # Signed for one file, sent with another: the signature covers the body.
    headers = {"Content-Type": "text/csv", "Idempotency-Key": "altered"}
    request = client.build_request("POST", "/v1/partner/files", content=body, headers=headers)
    signed = next(shop.auth().auth_flow(request))
    signed_headers = {k: v for k, v in signed.headers.items() if k.lower().startswith("x-loyalty")}
    altered = body.replace(b",5000,", b",9000,")
    response = await client.post(
        "/v1/partner/files", content=altered, headers={**headers, **signed_headers}
    )
    assert (response.status_code, response.json()["type"]) == (401, "/problems/signature-invalid")

    unsigned = await client.post("/v1/partner/files", content=body, headers=headers)
    assert unsigned.json()["type"] == "/problems/signature-missing"
    assert (await ledger.balances(shop.member_id)).available == 0


async def test_an_upload_over_the_limit_is_a_413_naming_it(client, shop, api_settings, ledger):
    rows = [(f"BIG-{i}", 100) for i in range(api_settings.max_body_bytes // 60 + 10)]
    body = csv_file(shop, *rows)
    assert len(body) > api_settings.max_body_bytes

    response = await upload(client, shop, body)

    assert response.status_code == 413
    problem = response.json()
    assert problem["type"] == "/problems/payload-too-large"
    assert f"{api_settings.max_body_bytes:,} bytes" in problem["detail"]
    assert "loyalty partner import" in problem["detail"]
    assert problem["limit_bytes"] == api_settings.max_body_bytes

    assert (await ledger.balances(shop.member_id)).available == 0


async def test_another_media_type_is_a_415(client, shop, ledger):
    body = csv_file(shop, ("M-1", 1000))
    for media in ("application/json", "text/csv; charset=latin-1", "text/plain"):
        response = await upload(client, shop, body, media=media)
        assert response.status_code == 415, (media, response.text)
        assert "text/csv" in response.json()["detail"]
    response = await upload(client, shop, b"card_number,reference\n")
    assert response.status_code == 422 and "missing: occurred_at" in response.json()["detail"]
    assert (await ledger.balances(shop.member_id)).available == 0

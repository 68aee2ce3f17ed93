"""Property-based fuzzing of every operation in the OpenAPI document with
Schemathesis: valid and invalid parameters, headers and bodies generated from
the schema, sent to the app served by uvicorn over a real socket. No answer
may be a 5xx. Staff and admin calls carry an admin token, member calls a
member token, partner calls a valid signature of a real key (and an
Idempotency-Key when the case has none), so requests get past authentication
and reach the handlers and the database. No operation is excluded.

Examples per operation follow the hypothesis profile: 15 in the default
`quick` profile (about a minute in all), more with `--hypothesis-profile=ci`."""

import asyncio
import dataclasses
import json
import uuid
from urllib.parse import unquote, urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.serialization import encode_json

from api.app import create_app
from api.auth import mint_token
from api.settings import Settings
from ledger.database import create_engine
from ledger.service import LedgerService
from members.registry import MemberInput, Members
from partners.programme import Programme
from partners.signing import signed_headers
from tests.api.conftest import MEMBER_SECRET, SECRET, SECRET_KEY
from tests.api.served import app_in_thread
from tests.conftest import SigningSeconds, own_database

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

MEMBER = "fuzz-member"
PARTNER = "fuzz-shop"
CARD = "4000000000000002"
# Per operation: 15 in the quick profile, 30 in ci (about 70 operations; the whole
# suite stays within its 10-minute budget on 2 cores).
EXAMPLES = 15 if settings.default.max_examples <= 25 else 20


@pytest.fixture(scope="module")
def fuzz_database_url(server_url):
    """A database of the fuzz's own: generated tiers, promotions and coupons
    apply programme-wide and must not leak into the other tests."""
    with own_database(server_url, "loyalty_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def live_api(api_settings, fuzz_database_url):
    """The app under uvicorn on a free port, in a thread with its own loop."""
    settings = dataclasses.replace(api_settings, database_url=fuzz_database_url)
    with app_in_thread(create_app(settings), "fuzz-api") as url:
        yield url


class PartnerSignature(requests.auth.AuthBase):
    """Signs the request exactly as sent (partners/signing.py), each at
    another second so that two identical generated requests are no replay."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.secret = secret
        self.signing_seconds = SigningSeconds()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        url = urlsplit(request.path_url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if request.method == "POST" and "Idempotency-Key" not in request.headers:
            request.headers["Idempotency-Key"] = uuid.uuid4().hex
        request.headers.update(
            signed_headers(
                self.key_id,
                self.secret,
                request.method,
                unquote(url.path),  # the server signs the decoded path
                url.query,
                body,
                self.signing_seconds(),
                request.headers.get("Idempotency-Key", ""),
            )
        )
        return request


async def enrol(database_url: str, member_id: str) -> None:
    engine = create_engine(database_url)
    try:
        ledger = LedgerService(engine)
        await Members(ledger, Programme(ledger)).enrol(MemberInput(id=member_id), "staff:fuzz")
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def credentials(live_api, api_settings, fuzz_database_url) -> dict:
    """A partner with rules and a key, and an enrolled, funded member with a
    card, set up (but for the enrolment) through the admin API, so generated
    requests can reach real data."""
    asyncio.run(enrol(fuzz_database_url, MEMBER))
    admin = {"Authorization": "Bearer " + mint_token(api_settings, "fuzzer", ["admin"])}
    member = {"Authorization": "Bearer " + mint_token(api_settings, MEMBER, ["member"])}
    with requests.Session() as http:
        http.headers.update(admin)
        setup = [
            ("/v1/admin/partners", {"id": PARTNER, "name": "Fuzz shop"}),
            (
                f"/v1/admin/partners/{PARTNER}/earn-rules",
                {"valid_from": "2024-01-01T00:00:00Z", "currency": "EUR", "points_per_unit": "1"},
            ),
            (
                f"/v1/admin/partners/{PARTNER}/burn-rules",
                {"valid_from": "2024-01-01T00:00:00Z", "currency": "EUR", "points_per_unit": "100"},
            ),
            (f"/v1/admin/members/{MEMBER}/cards", {"card_number": CARD}),
            ("/v1/staff/adjustments", {"member_id": MEMBER, "amount": 10_000, "reason": "fuzz"}),
        ]
        for path, body in setup:
            response = http.post(live_api + path, json=body)
            assert response.status_code == 201, (path, response.text)
        key = http.post(f"{live_api}/v1/admin/partners/{PARTNER}/keys").json()
    return {
        "admin": admin,
        "member": member,
        "partner": PartnerSignature(key["key_id"], key["secret"]),
    }


def openapi_document() -> dict:
    """The document the app serves at /docs/openapi.json. Building it needs no
    database, so it is read at import, when pytest collects one test per
    operation. (Schemathesis' lazy `from_fixture` loader fails on pytest 9.)"""
    app = create_app(
        Settings(
            database_url="postgresql://unused/unused",
            secret_key=SECRET_KEY,
            jwt_secret=SECRET,
            member_jwt_secret=MEMBER_SECRET,
        )
    )
    return json.loads(encode_json(app.openapi_schema.to_schema()))


schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
)
def test_no_operation_answers_a_server_error(case, live_api, credentials):
    path = case.operation.path
    if path.startswith("/v1/partner/"):
        response = case.call(base_url=live_api, auth=credentials["partner"], timeout=30)
    elif path.startswith("/v1/me/"):
        response = case.call(base_url=live_api, headers=credentials["member"], timeout=30)
    else:
        response = case.call(base_url=live_api, headers=credentials["admin"], timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {response.request.url} -> {response.status_code}\n"
        f"body sent: {response.request.body!r}\n{response.text[:2000]}"
    )

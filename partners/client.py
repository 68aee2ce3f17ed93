"""A small client for partners' developers: an httpx auth class that signs
every request as the programme expects (see partners/signing.py), its
Idempotency-Key header included, so set that header before sending.

    import httpx
    from partners.client import PartnerAuth

    auth = PartnerAuth("pk_live_...", "secret shown once at key creation")
    with httpx.Client(base_url="http://localhost:8000", auth=auth) as client:
        client.post("/v1/partner/earn", json={...}, headers={"Idempotency-Key": "..."})
"""

import time
from collections.abc import Callable, Generator

import httpx

from partners.signing import signed_headers


class PartnerAuth(httpx.Auth):
    requires_request_body = True

    def __init__(self, key_id: str, secret: str, clock: Callable[[], float] = time.time) -> None:
        self.key_id = key_id
        self.secret = secret
        self.clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            signed_headers(
                self.key_id,
                self.secret,
                request.method,
                request.url.path,
                request.url.query.decode(),
                request.content,
                self.clock(),
                request.headers.get("Idempotency-Key", ""),
            )
        )
        yield request

"""Locust scenarios against a running `loyalty serve --demo` (HTTP end to end):

    KEY=$(loyalty partner create-key drugstore) && eval "$KEY"
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
           --headless -u 50 -r 10 -t 60s

Card holders read their balance (served from the Redis cache) and history;
the drugstore's till sends signed, idempotent earnings. Member tokens are
minted as `loyalty token --role member` does, from the same LOYALTY_*
settings (LOYALTY_MEMBER_JWT_SECRET, or the development secret in .loyalty/).
Raise LOYALTY_MEMBER_RATE_LIMIT on the server for more than a few users per
member, or the card holders are mostly answered 429.
"""

import itertools
import json
import os
import random
import time
import uuid

from locust import HttpUser, between, task

from api.auth import mint_token
from api.settings import Settings
from partners.signing import signed_headers

MEMBERS = ("anna", "ben", "clara")
CARDS = ("6001000000001", "6001000000002", "6001000000003")
_references = itertools.count()


class CardHolder(HttpUser):
    wait_time = between(0.05, 0.2)
    weight = 4

    def on_start(self) -> None:
        settings = Settings.from_env()
        token = mint_token(
            settings, random.choice(MEMBERS), ["member"], settings.jwt_max_lifetime_seconds
        )
        self.client.headers["Authorization"] = f"Bearer {token}"

    @task(5)
    def balance(self) -> None:
        self.client.get("/v1/me/balance")

    @task(1)
    def history(self) -> None:
        self.client.get("/v1/me/history?limit=20")


class Till(HttpUser):
    wait_time = between(0.05, 0.2)
    weight = 1

    @task
    def earn(self) -> None:
        reference = f"LOCUST-{uuid.uuid4().hex[:8]}-{next(_references)}"
        body = json.dumps(
            {
                "card_number": random.choice(CARDS),
                "reference": reference,
                "purchase": {
                    "currency": "EUR",
                    "lines": [
                        {"amount_minor": random.randrange(100, 20000), "category": "groceries"}
                    ],
                },
            }
        ).encode()
        headers = signed_headers(
            os.environ["LOYALTY_KEY_ID"],
            os.environ["LOYALTY_KEY_SECRET"],
            "POST",
            "/v1/partner/earn",
            "",
            body,
            time.time(),
            reference,  # the Idempotency-Key is signed too
        )
        headers.update({"Idempotency-Key": reference, "content-type": "application/json"})
        self.client.post("/v1/partner/earn", data=body, headers=headers, name="/v1/partner/earn")

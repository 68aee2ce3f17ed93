"""Locust scenarios against a running `loyalty serve --demo` (HTTP end to end):

    export $(loyalty partner create-key drugstore | xargs)
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
           --headless -u 50 -r 10 -t 60s

Card holders read their balance (served from the Redis cache) and history;
the drugstore's till sends signed, idempotent earnings. Tokens are signed with
LOYALTY_JWT_SECRET, or the development secret in .loyalty/.
"""

import itertools
import json
import os
import random
import time
import uuid
from pathlib import Path

import jwt
from locust import HttpUser, between, task

from partners.signing import signed_headers

MEMBERS = ("anna", "ben", "clara")
CARDS = ("6001000000001", "6001000000002", "6001000000003")
_references = itertools.count()


def _secret() -> str:
    return (
        os.environ.get("LOYALTY_JWT_SECRET")
        or (Path(os.environ.get("LOYALTY_DATA_DIR", ".loyalty")) / "dev-jwt-secret")
        .read_text()
        .strip()
    )


class CardHolder(HttpUser):
    wait_time = between(0.05, 0.2)
    weight = 4

    def on_start(self) -> None:
        now = int(time.time())
        member = random.choice(MEMBERS)
        token = jwt.encode(
            {
                "sub": member,
                "roles": ["member"],
                "iss": "loyalty-dev",
                "aud": "loyalty-api",
                "iat": now,
                "exp": now + 3600,
            },
            _secret(),
            algorithm="HS256",
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
        )
        headers.update({"Idempotency-Key": reference, "content-type": "application/json"})
        self.client.post("/v1/partner/earn", data=body, headers=headers, name="/v1/partner/earn")

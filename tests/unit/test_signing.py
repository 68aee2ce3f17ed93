"""The canonical request and its signature (pure), and the README's test
vector checked against the code."""

import hashlib
import re
from pathlib import Path

import pytest

from partners.signing import (
    SignatureProblem,
    canonical_query,
    canonical_request,
    check_signature,
    check_timestamp,
    parse_headers,
    sign,
    signed_headers,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_canonical_request_format():
    canonical = canonical_request(
        "post", "/v1/partner/earn", "b=2&a=1&a=0", "1700000000", b"{}", "K-1"
    )
    assert canonical == "\n".join(
        [
            "POST",
            "/v1/partner/earn",
            "a=0&a=1&b=2",
            "1700000000",
            hashlib.sha256(b"{}").hexdigest(),
            "K-1",
        ]
    )
    without_key = canonical_request("GET", "/p", "", "1700000000", b"")
    assert without_key.endswith(hashlib.sha256(b"").hexdigest() + "\n")  # an empty last line


def test_the_readme_test_vector_matches_the_code():
    section = README.read_text().split("##### Test vector", 1)[1].split("\n#", 1)[0]
    inputs = dict(re.findall(r"^\| ([a-z ]+) \| `(.*)` \|$", section, re.MULTILINE))
    canonical, signature = re.findall(r"```text\n(.*?)\n```", section, re.DOTALL)
    assert set(inputs) == {
        "key id",
        "secret",
        "method",
        "path",
        "query",
        "timestamp",
        "idempotency key",
        "body",
    }
    body = inputs["body"].encode()
    assert (
        canonical_request(
            inputs["method"],
            inputs["path"],
            inputs["query"],
            inputs["timestamp"],
            body,
            inputs["idempotency key"],
        )
        == canonical
    )
    assert sign(inputs["secret"], canonical) == signature
    headers = signed_headers(
        inputs["key id"],
        inputs["secret"],
        inputs["method"],
        inputs["path"],
        inputs["query"],
        body,
        int(inputs["timestamp"]),
        inputs["idempotency key"],
    )
    assert headers == {
        "X-Loyalty-Key-Id": inputs["key id"],
        "X-Loyalty-Timestamp": inputs["timestamp"],
        "X-Loyalty-Signature": signature,
    }


def test_query_is_sorted_and_rfc3986_encoded():
    assert canonical_query("z=%20x&y=a+b&x=") == "x=&y=a%20b&z=%20x"


def test_signature_round_trip_and_tampering():
    headers = signed_headers("pk_1", "s3cret", "POST", "/p", "", b'{"a":1}', 1700000000, "K-1")
    timestamp = headers["X-Loyalty-Timestamp"]
    canonical = canonical_request("POST", "/p", "", timestamp, b'{"a":1}', "K-1")
    check_signature("s3cret", canonical, headers["X-Loyalty-Signature"])
    with pytest.raises(SignatureProblem) as problem:
        check_signature("s3cret", canonical.replace('"a":1', '"a":2'), sign("other", canonical))
    assert problem.value.code == "signature-invalid"
    other_key = canonical_request("POST", "/p", "", timestamp, b'{"a":1}', "K-2")
    with pytest.raises(SignatureProblem):
        check_signature("s3cret", other_key, headers["X-Loyalty-Signature"])


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "signature-missing"),
        ({"X-Loyalty-Key-Id": "k"}, "signature-malformed"),
        (
            {
                "X-Loyalty-Key-Id": "k",
                "X-Loyalty-Timestamp": "soon",
                "X-Loyalty-Signature": "0" * 64,
            },
            "signature-malformed",
        ),
        (
            {"X-Loyalty-Key-Id": "k", "X-Loyalty-Timestamp": "1", "X-Loyalty-Signature": "XYZ"},
            "signature-malformed",
        ),
    ],
)
def test_header_problems(headers, code):
    with pytest.raises(SignatureProblem) as problem:
        parse_headers(headers)
    assert problem.value.code == code


def test_clock_tolerance_edges():
    check_timestamp(1000, 1300)  # exactly 300 s late: accepted
    check_timestamp(1300, 1000)  # exactly 300 s early: accepted
    for now, told in ((1301, "301 s behind"), (699, "301 s ahead of"), (699.5, "301 s ahead of")):
        with pytest.raises(SignatureProblem) as problem:
            check_timestamp(1000, now)
        assert problem.value.code == "signature-stale"
        assert told in problem.value.detail  # never a figure inside the tolerance

"""An app on the test database and Redis, with a test client and token minting
(`token(subject, roles)`: a member token for the role member, else a staff one)."""

import shutil
import tempfile
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import mint_token
from api.settings import Settings
from tests.conftest import TEST_SECRET_KEY as SECRET_KEY

SECRET = "test-secret-" + "0123456789abcdef" * 4  # 75 bytes: long enough for HS512
MEMBER_SECRET = "test-member-secret-" + "fedcba9876543210" * 4  # the members' key, not staff's


@pytest.fixture(scope="session")
def api_settings(database_url, redis_url, tmp_path_factory) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        data_dir=tmp_path_factory.mktemp("data"),
        max_body_bytes=64_000,
        secret_key=SECRET_KEY,
        partner_rate_limit=1000,
        member_rate_limit=1000,
    )


@pytest.fixture
async def client(api_settings):
    async with AsyncTestClient(create_app(api_settings)) as client:
        yield client


@pytest.fixture
def token(api_settings):
    def make(subject: str = "alice", roles=("admin",), **overrides) -> dict[str, str]:
        return {
            "Authorization": "Bearer " + mint_token(api_settings, subject, list(roles), **overrides)
        }

    return make


@pytest.fixture(scope="module")
async def service(database_url, api_settings):
    """The real service with two workers, for the tests of one module."""
    from tests.api import served

    tmp = Path(tempfile.mkdtemp(prefix="loyalty-workers-"))
    running = served.Service(database_url, api_settings, tmp)
    try:
        await served.wait_ready(running.base, running.process, running.log)
        yield running
    finally:
        running.close()
        shutil.rmtree(tmp, ignore_errors=True)

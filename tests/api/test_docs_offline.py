"""The OpenAPI UI works offline: the app, served by uvicorn on a real port,
opened in a real Chromium (Playwright driving the system's /usr/bin/chromium),
renders its operations with every request the page makes going to the app
itself, none to a CDN or any other host.

Without /usr/bin/chromium the test is skipped, saying so; in CI (CI=true) it
fails instead, so CI cannot pass without having run it (.ci/run installs
Chromium)."""

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import async_playwright

from api.app import create_app
from tests.api.served import app_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
EARN_SUMMARY = "Award points for a purchase"  # api/routes/partner.py, POST /v1/partner/earn


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the browser test, not skip it")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def served_app(api_settings):
    """The app under uvicorn on a free port, in a thread with its own loop."""
    with app_in_thread(create_app(api_settings), "docs-app") as url:
        yield url


async def open_offline(
    chromium: Path, url: str, expect: str, screenshot: Path | None = None
) -> tuple[list[str], list[str]]:
    """Open `url`, wait until `expect` is visible; every URL the page asked
    for (documents, scripts, styles, images, fetches, web sockets) and every
    console error."""
    requested: list[str] = []
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("websocket", lambda socket: requested.append(socket.url))
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            response = await page.goto(url, wait_until="networkidle", timeout=60_000)
            assert response is not None and response.status == 200
            shown = page.get_by_text(expect).filter(visible=True).first
            await shown.wait_for(state="visible", timeout=60_000)
            if screenshot is not None:
                await page.screenshot(path=str(screenshot))
        finally:
            await browser.close()
    return requested, errors


def leaving(requested: list[str]) -> list[str]:
    return [
        url
        for url in requested
        if urlsplit(url).scheme not in ("data", "blob")
        and urlsplit(url).hostname not in LOCAL_HOSTS
    ]


@pytest.mark.parametrize("page", ["/docs", "/docs/swagger"])
async def test_the_docs_render_the_operations_without_leaving_the_host(
    chromium, served_app, page, tmp_path
):
    shot = tmp_path / "page.png"
    requested, errors = await open_offline(chromium, served_app + page, EARN_SUMMARY, shot)
    assert shot.stat().st_size > 0
    assert leaving(requested) == [], "the docs page loaded something from elsewhere"
    assert any("/docs/assets/" in url for url in requested), requested  # its own assets
    assert errors == [], errors


async def test_a_docs_asset_outside_the_list_is_not_served(client):
    # The package's demo pages point at a public pet store: not served.
    assert (await client.get("/docs/assets/index.html")).status_code == 404
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("page", ["/docs/redoc", "/docs/rapidoc", "/docs/x", "/docs/elements"])
async def test_an_unknown_docs_page_is_a_problem_404(client, page):
    response = await client.get(page, headers={"X-Request-Id": "docs-404"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert (body["status"], body["request_id"]) == (404, "docs-404")
    # The pages that exist are still served.
    assert (await client.get("/docs")).headers["content-type"].startswith("text/html")
    assert (await client.get("/docs/openapi.json")).status_code == 200

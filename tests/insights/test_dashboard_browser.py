"""The dashboard in a real browser: the app on the ten-member programme
(conftest.py), served by uvicorn on a real port and opened in Chromium
(Playwright driving the system's /usr/bin/chromium). A staff member signs
in through the form with a minted finance token; every chart is drawn with
data points, every heat-map cell is there, the console has no error, no
dialog opens, and every request the page makes goes to the app itself.
A screenshot of the whole page is kept under the test's tmp path.

Without /usr/bin/chromium the test is skipped, saying so; in CI (CI=true)
it fails instead (the chromium fixture of tests/api/test_docs_offline.py)."""

from playwright.async_api import async_playwright

from api.app import create_app
from api.auth import mint_token
from tests.api import test_docs_offline as docs
from tests.api.served import app_in_thread
from tests.insights import test_surfaces as surfaces

settings = surfaces.settings
chromium = docs.chromium

WINDOW = "from=2026-01-01&to=2026-07-01&as_of=2026-06-29"
CANVASES = ["lorenz", "top-shares", "rfm-segments", "churn", "tiers", "tier-movement", "expiry"]
DRAWN = """() => Array.from(document.querySelectorAll('canvas[data-config]')).map(canvas => {
    const chart = Chart.getChart(canvas);
    return [canvas.id.replace(/-chart$/, ''), chart ? chart.data.datasets[0].data.length : -1];
})"""


async def test_the_dashboard_draws_every_chart_from_the_apps_own_files(
    chromium, settings, tmp_path
):
    shot = tmp_path / "dashboard.png"
    requested: list[str] = []
    errors: list[str] = []
    dialogs: list[str] = []
    with app_in_thread(create_app(settings), "dashboard-app") as base:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), args=docs.CHROMIUM_ARGS, headless=True
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("request", lambda request: requested.append(request.url))
                page.on("websocket", lambda socket: requested.append(socket.url))
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "console",
                    lambda message: (
                        errors.append(message.text) if message.type == "error" else None
                    ),
                )
                page.on("dialog", lambda dialog: dialogs.append(dialog.message))

                # Not signed in: the login form, which comes back to the window asked for.
                await page.goto(f"{base}/dashboard?{WINDOW}")
                assert page.url.startswith(f"{base}/dashboard/login?next=")
                await page.fill("textarea[name=token]", mint_token(settings, "olga", ["finance"]))
                async with page.expect_navigation(wait_until="load"):
                    await page.click("button[type=submit]")
                assert page.url == f"{base}/dashboard?{WINDOW}"

                drawn = dict(await page.evaluate(DRAWN))
                assert drawn.keys() == set(CANVASES)
                assert all(points > 0 for points in drawn.values()), (drawn, errors)
                # Cohorts January to June, months 0 to 5; three partners squared.
                assert await page.locator("#cohort-heatmap td.heat").count() == 6 * 6
                assert await page.locator("#cross-shopping-heatmap td.heat").count() == 3 * 3
                assert await page.get_by_text("DS-DOUBLE").count() == 1
                await page.screenshot(path=str(shot), full_page=True)
            finally:
                await browser.close()
    assert shot.stat().st_size > 0
    assert docs.leaving(requested) == [], "the dashboard loaded something from elsewhere"
    assert any("/dashboard/static/chart.umd.min.js" in url for url in requested), requested
    assert (errors, dialogs) == ([], [])

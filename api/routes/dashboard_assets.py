"""The dashboard's static files, in the package (api/dashboard_static/) and
served by the app itself: nothing is fetched from a CDN, so the page works
offline and under its `script-src 'self'` policy.

- `chart.umd.min.js`: Chart.js 4.6.1 (MIT; its licence beside it,
  `chart.js-LICENSE.md`), the file `package/dist/chart.umd.min.js` of the
  npm registry's tarball https://registry.npmjs.org/chart.js/-/chart.js-4.6.1.tgz,
  whose integrity the registry records as
  sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==
  (shasum 40a924bc0b92544ed66fa3f4873981152fc62c52). The file is byte for
  byte the tarball's; its SHA-256 is `CHART_JS_SHA256` (a test checks it).
  Its last line names a source map that is not shipped: only a browser's
  developer tools ask for it.
- `dashboard.js`: draws each chart from the page's JSON blocks.
- `dashboard.css`: the page's styles.

Each URL carries a digest of the file's content (`?v=`), so a year-long
cache is safe: a changed file is a new URL."""

import hashlib
from functools import cache
from pathlib import Path

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import File

STATIC = Path(__file__).resolve().parents[1] / "dashboard_static"
ASSETS_PATH = "/dashboard/static"
CHART_JS = "chart.umd.min.js"
CHART_JS_VERSION = "4.6.1"
CHART_JS_SHA256 = "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2"
# name -> media type; nothing else in the directory is served.
ASSETS = {
    CHART_JS: "text/javascript",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "chart.js-LICENSE.md": "text/plain",
}
ONE_YEAR = 365 * 24 * 3600


@cache
def asset_url(name: str) -> str:
    """The file's URL with a digest of its content (read once per process)."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:16]
    return f"{ASSETS_PATH}/{name}?v={digest}"


# On the dashboard's router (api/routes/dashboard.py): ASSETS_PATH.
@get(
    "/static/{name:str}",
    include_in_schema=False,
    cache_control=CacheControlHeader(max_age=ONE_YEAR, public=True, immutable=True),
)
async def dashboard_asset(name: FromPath[str]) -> File:
    if name not in ASSETS:
        raise NotFoundException(f"no dashboard file {name!r}")
    return File(STATIC / name, media_type=ASSETS[name], content_disposition_type="inline")

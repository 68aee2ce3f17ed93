"""The OpenAPI UI, served whole by the app: nothing comes from a CDN, so the
docs work offline and show the same UI on every install.

The assets come from the PyPI package `openapi-ui-bundles`, pinned in
pyproject.toml (0.3.0: Swagger UI 5.17.14, Apache-2.0, its licence travelling
with the package). Pages:

- `/docs` and `/docs/swagger`: Swagger UI (the operations, try-it-out)
- `/docs/openapi.json`: the document itself

The page embeds the document; its scripts, style sheet and icon are the
handful of files listed in `ASSETS`, served under `/docs/assets/` (only those:
the package also carries demo pages that point at a public pet store). The
package's ReDoc is not offered: its page loads a logo from Redocly's CDN."""

from pathlib import Path

import openapi_ui_bundles
from litestar import Request, Router, get
from litestar._openapi.plugin import handle_schema_path_not_found
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin, SwaggerRenderPlugin
from litestar.params import FromPath
from litestar.response import File

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"

_SWAGGER = openapi_ui_bundles.swagger_ui.static_path
# name under /docs/assets/ -> (file, media type)
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_SWAGGER / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui-standalone-preset.js": (
        _SWAGGER / "swagger-ui-standalone-preset.js",
        "text/javascript",
    ),
    "swagger-ui.css": (_SWAGGER / "swagger-ui.css", "text/css"),
    "favicon-32x32.png": (_SWAGGER / "favicon-32x32.png", "image/png"),
}
_FAVICON = f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>"


@get(
    f"{ASSETS_PATH}/{{name:str}}",
    include_in_schema=False,
    # The files change only with the pinned package; an hour spares reloads.
    cache_control=CacheControlHeader(max_age=3600, public=True),
)
async def docs_asset(name: FromPath[str]) -> File:
    if name not in ASSETS:
        raise NotFoundException(f"no docs asset {name!r}")
    path, media_type = ASSETS[name]
    return File(path, media_type=media_type, content_disposition_type="inline")


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Swagger UI at the root of /docs and at /docs/swagger, loading only the
    app's own assets."""
    return [
        SwaggerRenderPlugin(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            path=["/", "/swagger"],
            favicon=_FAVICON,
        )
    ]


async def _no_html_not_found(request: Request) -> None:
    """Before Litestar's not-found page for an unknown /docs/... path is
    rendered: the app's problem 404 instead."""
    if getattr(request.route_handler, "fn", None) is handle_schema_path_not_found:
        raise NotFoundException(f"no docs page {request.url.path!r}")


def docs_router() -> Router:
    """The router the OpenAPI pages are served on (`OpenAPIConfig.openapi_router`):
    Litestar adds the pages and its not-found handler to it; an unknown page
    is answered as a problem."""
    return Router(
        DOCS_PATH,
        route_handlers=[],
        include_in_schema=False,
        before_request=_no_html_not_found,
    )

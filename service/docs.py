"""``/docs``: the Swagger UI page apiflask renders, with its scripts, styles and icon served by
careloop from the installed ``flask-swagger-ui`` package (pinned by pip, checked by its wheel's
hashes) instead of loaded from a CDN that could change them under the page."""

from __future__ import annotations

from importlib.resources import files

from apiflask import APIBlueprint, APIFlask, abort
from flask import send_from_directory

ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png")
"""The files of Swagger UI's distribution the page uses."""

ASSET_MAX_AGE = 24 * 3600
"""Seconds a browser may keep an asset (they change only with the installed package)."""

bp = APIBlueprint("docs_assets", __name__, url_prefix="/docs/assets", enable_openapi=False)


@bp.get("/<name>")
def asset(name: str):
    if name not in ASSETS:
        abort(404, "not found")
    return send_from_directory(str(files("flask_swagger_ui") / "dist"), name, max_age=ASSET_MAX_AGE)


def init_app(app: APIFlask) -> None:
    app.config.update(
        SWAGGER_UI_CSS="/docs/assets/swagger-ui.css",
        SWAGGER_UI_BUNDLE_JS="/docs/assets/swagger-ui-bundle.js",
        SWAGGER_UI_STANDALONE_PRESET_JS="/docs/assets/swagger-ui-standalone-preset.js",
        DOCS_FAVICON="/docs/assets/favicon-32x32.png",
    )
    app.register_blueprint(bp)

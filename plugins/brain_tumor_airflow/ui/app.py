"""The ops pages as a FastAPI app, mounted by the API server under ``/brain-tumor``.

Settings come from the API server's ``BRAIN_TUMOR_*`` environment, loaded at the first request
and cached. Pictures are streamed through this app (never a bucket URL or a signed link), and
every response says "research use, not for diagnosis".
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from brain_tumor_airflow.ui import pages
from brain_tumor_airflow.ui.auth import require_user

log = logging.getLogger(__name__)

PREFIX = "/brain-tumor"
NOTICE_HEADER = "X-Research-Use"
_HEADERS = {
    NOTICE_HEADER: "research use, not for diagnosis",
    "Cache-Control": "private, no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'self'",
}


@lru_cache(maxsize=1)
def ops_data() -> Any:
    """The pipeline's objects as the pages read them (settings and client built once)."""
    from brain_tumor.store.storage import ObjectStore
    from brain_tumor_airflow.storage import task_settings
    from brain_tumor_airflow.ui.data import OpsData

    settings = task_settings()
    log.info("ops pages read s3://%s/%s at %s", settings.s3_bucket, settings.s3_root,
             settings.s3_endpoint_url or "AWS S3")
    return OpsData(ObjectStore.from_settings(settings), settings)


def _alerts(data: Any) -> list[dict[str, Any]]:
    """The alerts every page shows."""
    from brain_tumor_airflow.ui.status import page_alerts, recent_runs

    try:
        runs = recent_runs()
    except Exception as exc:  # the pages stay useful without run states
        log.warning("ops pages: cannot read DAG runs from Airflow's database: %s", exc)
        runs = []
    return page_alerts(runs, data.registry()["events"], data.batches())


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=_HEADERS)


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def create_app() -> FastAPI:
    """The FastAPI app with every page; each route requires an Airflow login."""
    app = FastAPI(title="brain-tumor ops", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_user)])
    _add_error_pages(app)
    _add_pages(app)
    _add_files(app)
    return app


def _add_error_pages(app: FastAPI) -> None:
    """Answer missing objects, refused logins, unknown paths and malformed ones with a page."""
    from brain_tumor_airflow.ui.data import NotFound

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> HTMLResponse:
        return _html(pages.error_page(_base(request), 404, str(exc)), 404)

    @app.exception_handler(StarletteHTTPException)  # 401/403 from require_user, unknown paths
    async def http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return _html(pages.error_page(_base(request), exc.status_code, str(exc.detail)),
                     exc.status_code)

    @app.exception_handler(RequestValidationError)  # e.g. a slice number that is not a number
    async def bad_path(request: Request, exc: RequestValidationError) -> HTMLResponse:
        return _html(pages.error_page(_base(request), 404, "no such page"), 404)


def _add_pages(app: FastAPI) -> None:
    """The HTML pages: models, gates, trends, scoring, one study, one model card."""

    @app.get("/")
    def index(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{_base(request)}/models", headers=_HEADERS)

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request) -> HTMLResponse:
        data = ops_data()
        return _html(pages.models_page(_base(request), data.registry(), data.model_versions(),
                                       _alerts(data)))

    @app.get("/gates", response_class=HTMLResponse)
    def gates(request: Request) -> HTMLResponse:
        data = ops_data()
        return _html(pages.gates_page(_base(request), data.gate_results(), _alerts(data)))

    @app.get("/trends", response_class=HTMLResponse)
    def trends(request: Request) -> HTMLResponse:
        data = ops_data()
        return _html(pages.trends_page(_base(request), data.model_versions(),
                                       data.dataset_versions(), data.batches(), _alerts(data)))

    @app.get("/scoring", response_class=HTMLResponse)
    def scoring(request: Request) -> HTMLResponse:
        data = ops_data()
        champion = data.registry()["champion"]
        quarantined = data.quarantined_studies(champion) if champion else []
        return _html(pages.scoring_page(_base(request), data.batches(), data.scored_studies(),
                                        quarantined, _alerts(data)))

    @app.get("/scoring/{model_version}/{study_id}", response_class=HTMLResponse)
    def study(request: Request, model_version: str, study_id: str) -> HTMLResponse:
        data = ops_data()
        return _html(pages.study_page(_base(request), model_version,
                                      data.study(model_version, study_id), _alerts(data)))

    @app.get("/models/{model_version}/card", response_class=HTMLResponse)
    def card(request: Request, model_version: str) -> HTMLResponse:
        data = ops_data()
        return _html(pages.card_page(_base(request), model_version,
                                     data.model_card(model_version), _alerts(data)))


def _add_files(app: FastAPI) -> None:
    """The pictures, streamed from the bucket: evaluation plots, study overviews, overlays."""
    from brain_tumor_airflow.ui.data import NotFound

    @app.get("/files/models/{model_version}/plots/{name}")
    def plot(model_version: str, name: str) -> Response:
        return _png(ops_data().plot(model_version, name))

    @app.get("/files/scores/{model_version}/{study_id}/overview.png")
    def overview(model_version: str, study_id: str) -> Response:
        return _png(ops_data().study_picture(model_version, study_id, "overview.png"))

    @app.get("/files/scores/{model_version}/{study_id}/clinical/{field}")
    def clinical(model_version: str, study_id: str, field: str) -> Response:
        data, name, media = ops_data().study_file(model_version, study_id, field)
        return Response(data, media_type=media, headers={
            **_HEADERS, "Content-Disposition": f'attachment; filename="{study_id}-{name}"'})

    @app.get("/files/scores/{model_version}/{study_id}/overlays/{number}.png")
    def overlay(model_version: str, study_id: str, number: int) -> Response:
        if not 0 <= number < 10**6:
            raise NotFound(f"no slice {number}")
        return _png(ops_data().study_picture(model_version, study_id,
                                             f"overlays/{number}.png"))

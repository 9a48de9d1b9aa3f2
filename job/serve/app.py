"""The search page's web app (Starlette, served by uvicorn): one HTML page, a small JS file, and a JSON API.

    GET  /                          the page (static/index.html + app.js + style.css; no build step)
    GET  /api/info                  the run: images, model, index, filter menus (channels, locations, scenes)
    GET  /api/search?text=…&k=…     top-k for a text; or ?id=… (an image of the run); filters: where=SQL,
                                    channel=, location=, scene=, night=, rain=
    POST /api/search?k=…            top-k for the image in the request body (JPEG/PNG bytes), same filters
    GET  /api/thumb/{id}            a hit's thumbnail (JPEG)
    GET  /api/map                   the run's UMAP map (x, y, id, channel per point; the subset's picks: selected)
    GET  /api/duplicates?id=…       the duplicate group of an image: the image kept, every image that repeats it
                                    (kind exact | still | near, cosine); a group of one when it repeats nothing
    GET  /api/rare?k=…&offset=…     images by descending uniqueness (rarest first), same filters as search
    GET  /api/selection             the diverse subset (job curate --select N) in pick order
    GET  /api/quality               the run's scores (job eval): per task and vector column, MAP@100 vs chance
    GET  /api/quality.png           its per-category figure

The last three need a curated run (``job curate``); without one they answer 404 with the command that makes it,
and ``/api/info`` says so (``curation: null``, ``curate_hint``); the quality routes likewise need ``job eval``'s
``eval/`` (``quality: false``, ``quality_hint``).

Bad requests get a 4xx with ``{"error": "…"}``; a fault of the run's data a 500 with its reason; nothing
else ever leaves the server (no tracebacks). Nothing is written to the run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import DataError, NotFound, UsageError
from .service import IMAGE_BYTES_MAX, SearchService

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _usage_error(request: Request, exc: Exception) -> Response:
    return _error(404 if isinstance(exc, NotFound) else 400, str(exc))


async def _data_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return _error(500, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def create_app(service: SearchService) -> Starlette:
    """The ASGI app over an opened run (``SearchService``)."""

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def info(request: Request) -> Response:
        return JSONResponse(service.info())

    def search_get(request: Request) -> Response:
        return JSONResponse(service.search(service.parse(request.query_params)))

    async def search_post(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > IMAGE_BYTES_MAX:
            return _error(413, f"the image is {declared} bytes; at most {IMAGE_BYTES_MAX} are accepted")
        body = await request.body()
        if not body:
            return _error(400, "POST an image (JPEG or PNG bytes) as the request body")
        query = service.parse(request.query_params, image=body)
        from starlette.concurrency import run_in_threadpool

        result: dict[str, Any] = await run_in_threadpool(service.search, query)
        return JSONResponse(result)

    def thumb(request: Request) -> Response:
        data = service.thumbnail(request.path_params["id"])
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    def map_points(request: Request) -> Response:
        return JSONResponse(service.map_points())

    def duplicates(request: Request) -> Response:
        return JSONResponse(service.duplicates(request.query_params))

    def rare(request: Request) -> Response:
        return JSONResponse(service.rare(request.query_params))

    def selection(request: Request) -> Response:
        return JSONResponse(service.selection())

    def quality(request: Request) -> Response:
        return JSONResponse(service.quality.quality())

    def quality_png(request: Request) -> Response:
        return Response(service.quality.figure(), media_type="image/png", headers={"Cache-Control": "max-age=60"})

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/search", search_get, methods=["GET"]),
        Route("/api/search", search_post, methods=["POST"]),
        Route("/api/thumb/{id}", thumb),
        Route("/api/map", map_points),
        Route("/api/duplicates", duplicates),
        Route("/api/rare", rare),
        Route("/api/selection", selection),
        Route("/api/quality", quality),
        Route("/api/quality.png", quality_png),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Any] = {UsageError: _usage_error, DataError: _data_error, HTTPException: _http_error,
                                Exception: _unexpected}
    return Starlette(routes=routes, exception_handlers=handlers)


def serve(run: str, *, host: str = "127.0.0.1", port: int = 8000, device: str | None = None) -> None:
    """Open the run, then serve the page until interrupted (uvicorn)."""
    import uvicorn

    service = SearchService(run, device=device)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can search the run (no authentication)", host)
    log.info("search page: http://%s:%d/", host if ":" not in host else f"[{host}]", port)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")

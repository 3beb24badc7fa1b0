"""The web app of `fastslow serve`: a JSON API (documented by its OpenAPI spec) and a page.

`create_app(searcher, token)` builds a FastAPI app over one loaded `Searcher` (models and
index loaded once); it opens no socket, so tests drive it with Starlette's TestClient and
`fastslow serve` hands it to uvicorn. Every answer that is not a success is JSON
`{"error": message}` with a 4xx status (a bad parameter, an unknown key, a file that is
gone or no longer the indexed one, a missing token); anything unexpected is logged with
its traceback on the server and answered 500 with one line, never a traceback.

With a `token`, every route but `/static/` and the spec needs it: an `Authorization:
Bearer T` header, or `?token=T` for the URLs a browser loads itself (images, video); the
page passes it on in the links it renders.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import mimetypes
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, get_type_hints

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastslow_cli import __version__
from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.search.heatmap import overlay_png
from fastslow_cli.search.searcher import Result, check_query
from fastslow_cli.serve.items import KEY_PATTERN, Item, ItemTable, MediaRefused
from fastslow_cli.serve.view import SearchView, ServerLinks, card, render

if TYPE_CHECKING:
    from fastslow_cli.search.searcher import Searcher

log = logging.getLogger("fastslow.serve")

MAX_K = 1000  # results per query; the HNSW depth is capped at the index size anyway
MAX_RERANK = 1000
MAX_FRAMES = 256  # `extract --frames` samples at most this many per video


Q = Annotated[str, Query(description="What to look for, in words.", max_length=1000)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="Results to return.")]
Rerank = Annotated[int, Query(ge=0, le=MAX_RERANK, description="Re-rank the Fast top K with the Slow model (0: off).")]
Alpha = Annotated[float | None, Query(ge=0, le=1, description="Weight of the Fast score in re-ranking.")]
MinScore = Annotated[float | None, Query(ge=0, le=1, description="Keep results whose relevance is at least this.")]
Key = Annotated[str, Path(pattern=KEY_PATTERN, description="An item's opaque key (from /api/search).")]
TokenIndex = Annotated[int | None, Query(ge=0, description="One word of the query (default: the whole query).")]
Format = Annotated[Literal["png", "json"], Query(description="png: over the thumbnail; json: the grid per word and frame.")]
Frame = Annotated[int | None, Query(ge=0, le=MAX_FRAMES - 1, description="Sampled frame (default: 0).")]
Token = Annotated[str | None, Query(alias="token", description="The server's token (for URLs a browser loads).")]
Authorization = Annotated[str | None, Header(description="Bearer TOKEN")]


class ErrorBody(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    items: int
    index: str
    rerank: bool
    calibrated: bool
    version: str


class FrameOut(BaseModel):
    frame: int
    time: float
    title: str
    thumb_url: str


def _result_fields() -> dict[str, Any]:
    """`Result`'s fields as `search --json` writes them: the API's results are those plus the
    fields below, defined once (a field added to `Result` reaches the spec and the fuzz tests)."""
    hints = get_type_hints(Result)
    return {f.name: (hints[f.name], ...) for f in dataclasses.fields(Result)}


ResultOut = create_model(
    "ResultOut",
    **_result_fields(),
    name=(str, ...),
    key=(str, ...),
    thumb_url=(str, ...),
    media_url=(Optional[str], ...),
    best_frame=(int, ...),
    frames=(list[FrameOut], ...),
)


class SearchOut(BaseModel):
    query: str
    k: int
    rerank: int
    alpha: float | None
    min_score: float | None
    results: list[ResultOut]


class ApiError(Exception):
    """Answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": "error"} for s in statuses}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "header"))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(searcher: Searcher, token: str | None = None) -> FastAPI:
    """The app over `searcher`; with `token`, every API call and the page must present it."""
    items = ItemTable(searcher.index.items)
    links = ServerLinks(token)
    # One search at a time, always on the same thread: the models are shared and the cores few,
    # and glibc gives each thread that allocates its own malloc arena, so searches spread over
    # the request thread pool grew the heap by an arena per thread (bench_serve, README).
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastslow-search")

    def on_worker(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return worker.submit(fn, *args, **kwargs).result()
    index_name = searcher.index.directory.name
    update_hint = "fastslow index update" + ("" if index_name == "default" else f" --index {index_name}")

    def check_token(
        token_param: Token = None, authorization: Authorization = None) -> None:
        if token is None:
            return
        given = token_param
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given is None or not secrets.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "this server needs its token: send `Authorization: Bearer TOKEN` or add ?token=TOKEN "
                                "(the one given to `fastslow serve --token`)")

    app = FastAPI(
        title="fastslow", version=__version__, docs_url=None, redoc_url=None,
        description="Text-to-visual search over one index: Fast retrieval, optional Slow re-ranking.",
        dependencies=[Depends(check_token)],
    )
    static_dir = resources.files("fastslow_cli.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such page or API route: see /openapi.json" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__} (the server log has the details)"},
                            status_code=500)

    def run_search(q: str, k: int, rerank: int, alpha: float | None, min_score: float | None) -> list:
        try:
            return on_worker(searcher.search, q, k=k, rerank=rerank, alpha=alpha, min_score=min_score)
        except UsageError as exc:
            raise ApiError(400, str(exc)) from None
        except FastslowError as exc:  # e.g. --min-score on an uncalibrated model: the workspace must change
            raise ApiError(409, str(exc)) from None

    def heat_tokens(q: str, results: list) -> list[str] | None:
        """The query's words as the Slow model reads them (the word chooser), None without heat maps."""
        if not results or not searcher.draws_heatmaps:
            return None
        return list(on_worker(heat, check_query(q), results[0].id).tokens)

    def item_of(key: str) -> Item:
        item = items.get(key)
        if item is None:
            raise ApiError(404, f"no indexed item has key {key!r}: take keys from /api/search results")
        return item

    @app.get("/api/health", response_model=Health, responses=_errors(400, 401))
    def health() -> dict[str, Any]:
        """Liveness and what this server answers from."""
        fast_cal, _ = searcher.calibrations()
        return {"status": "ok", "items": len(items), "index": index_name, "rerank": searcher.slow is not None,
                "calibrated": fast_cal is not None, "version": __version__}

    @app.get("/api/search", response_model=SearchOut, responses=_errors(400, 401, 409))
    def search(q: Q, k: K = 10, rerank: Rerank = 0, alpha: Alpha = None, min_score: MinScore = None) -> dict[str, Any]:
        """Results in rank order, each with `search --json`'s fields, its Fast rank and its image URLs."""
        results = run_search(q, k, rerank, alpha, min_score)
        return {"query": q, "k": k, "rerank": rerank, "alpha": alpha, "min_score": min_score,
                "results": [card(r, items.by_id[r.id], links) for r in results]}

    thumb_types = {"image/jpeg": {}, "image/webp": {}}

    @app.get("/api/items/{key}/thumb", response_class=Response, responses={
        200: {"content": thumb_types, "description": "the thumbnail"}, **_errors(400, 401, 404)})
    def thumb(key: Key, frame: Frame = None) -> Response:
        """An item's stored thumbnail (one per image, one per sampled video frame)."""
        item = item_of(key)
        reader = searcher.thumbnails
        data = reader.get(item.id, frame or 0)
        if data is None:
            if frame and frame >= max(len(item.timestamps), 1):
                raise ApiError(404, f"item {key} has {max(len(item.timestamps), 1)} frame(s): frame {frame} does not exist")
            raise ApiError(404, f"no thumbnail stored for item {key}: run `fastslow extract` on its folder "
                                f"(or `{update_hint}`) to make them")
        return Response(data, media_type=reader.mime, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/items/{key}/media", response_class=FileResponse, responses={
        200: {"content": {"image/*": {}, "video/*": {}, "application/octet-stream": {}}, "description": "the file"},
        206: {"content": {"image/*": {}, "video/*": {}, "application/octet-stream": {}}, "description": "a byte range"},
        **_errors(400, 401, 403, 404, 502)})
    def media(key: Key) -> FileResponse:
        """The indexed file itself, with HTTP range requests (a browser seeks in a video); an
        object at a URL is fetched first (502 when its store cannot be reached)."""
        item = item_of(key)
        try:
            path = items.media_path(item, update_hint)
        except MediaRefused as exc:
            raise ApiError(exc.status, str(exc)) from None
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind)

    @functools.lru_cache(maxsize=64)
    def heat(q: str, item_id: str) -> Any:  # switching words re-reads one computed map
        return searcher.heatmap(q, item_id)

    @app.get("/api/items/{key}/heatmap", response_class=Response, responses={
        200: {"content": {"image/png": {}, "application/json": {}}, "description": "PNG overlay, or the JSON grid"},
        **_errors(400, 401, 404)})
    def heatmap(key: Key, q: Q, token_index: TokenIndex = None, frame: Frame = None, format: Format = "png") -> Response:
        """Where the Slow model looked for the query (or its word `token_index`) in this item:
        a PNG over the frame's thumbnail, or the whole JSON grid (`format=json`)."""
        item = item_of(key)
        try:
            maps = on_worker(heat, check_query(q), item.id)
        except UsageError as exc:
            raise ApiError(400, str(exc)) from None
        if format == "json":
            return JSONResponse(maps.to_json())
        frames, tokens = maps.maps.shape[:2]
        frame = frame or 0
        if frame >= frames:
            raise ApiError(400, f"frame {frame}: item {key} has {frames} frame(s) (0 to {frames - 1})")
        if token_index is not None and token_index >= tokens:
            raise ApiError(400, f"token_index {token_index}: the query reads as {tokens} word(s) {maps.tokens}")
        picture = searcher.thumbnails.get(item.id, frame)
        if picture is None:
            raise ApiError(404, f"no thumbnail stored for item {key} to draw the heat map on: run `fastslow extract` "
                                f"on its folder (or `{update_hint}`); format=json gives the grid alone")
        grid = maps.query_map[frame] if token_index is None else maps.maps[frame, token_index]
        return Response(overlay_png(picture, grid), media_type="image/png")

    @app.get("/", response_class=HTMLResponse, responses={
        200: {"content": {"text/html": {}}, "description": "the page"},
        400: {"description": "a bad parameter: the page with the error, or JSON when the URL itself is invalid",
              "content": {"text/html": {}, "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
        **_errors(401, 409)})
    def page(q: Annotated[str, Query(max_length=1000)] = "", k: K = 24, rerank: Rerank = 0, alpha: Alpha = None,
             min_score: MinScore = None) -> HTMLResponse:
        """The web page: search box, sliders and result cards (rendered here, the same view as `search --html`)."""
        view, status = SearchView(q), 200
        if q.strip():
            try:
                results = run_search(q, k, rerank, alpha, min_score)
                view.cards = [card(r, items.by_id[r.id], links) for r in results]
                view.tokens = heat_tokens(q, results)
            except ApiError as exc:
                view.error, status = exc.message, exc.status
        fast_cal, _ = searcher.calibrations()
        html = render([view], params={"k": k, "rerank": rerank, "alpha": alpha, "min_score": min_score}, items=len(items),
                      static=False, token=token, slow=searcher.slow is not None, calibrated=fast_cal is not None)
        return HTMLResponse(html, status_code=status)

    app.openapi = lambda: _spec(app)  # type: ignore[method-assign]
    return app


def _spec(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, without the 422 answers it documents by default: validation errors
    are answered 400 `{"error": ...}` here (documented on each route)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in spec["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = spec
    return app.openapi_schema

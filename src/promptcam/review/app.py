"""The review web application (Starlette).

Why Starlette: it is the ASGI toolkit FastAPI itself is built on, without FastAPI's pydantic and
OpenAPI layers that a handful of HTML pages and two JSON calls do not need; it brings Jinja2
templates (autoescaped), a static-file handler that refuses paths outside its folder and a test
client, and runs on uvicorn. Every file it serves is looked up by item id in the review database; no
request ever names a path. Who may use the page is ``access``'s business (Host, token, Origin).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from promptcam.core.errors import ImageError, PromptCamError
from promptcam.core.untrusted import UntrustedJSONError

from .access import Access, AccessMiddleware
from .index import ResultsSource, build_index, decode_json
from .media import (
    DISPLAY_SIZE,
    MEDIA_TYPES,
    THUMB_SIZE,
    Explainer,
    cache_name,
    clip_still,
    display_photo,
    thumbnail,
)
from .query import BadRequest, Filters, ReviewStore

HERE = Path(__file__).parent
LOG = logging.getLogger("promptcam.review")
SECURITY_HEADERS = {
    # scripts and styles from this server only (no inline script runs, so injected markup cannot act)
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_BODY = 4096
REFRESH_SECONDS = 3.0  # how often, at most, a request looks whether the results changed


class Review:
    """What the handlers share: the review database, the cache folder and the optional explainer."""

    def __init__(self, source: ResultsSource, explainer: Explainer | None = None,
                 refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.source = source
        self.store = ReviewStore(source.review_db)
        self.explainer = explainer
        self.refresh_seconds = refresh_seconds
        self._checked = time.monotonic()
        self._refreshing = threading.Lock()

    @property
    def class_names(self) -> Sequence[str] | None:
        return self.explainer.class_names if self.explainer is not None else None

    def refresh(self) -> None:
        """Index what the results gained (a running watcher's new rows) since they were last indexed.

        Looks at most every ``refresh_seconds``, in one request at a time (the others go on with the
        index as it is); a failure is logged and the index stays as it was.
        """
        if time.monotonic() - self._checked < self.refresh_seconds or not self._refreshing.acquire(blocking=False):
            return
        try:
            build_index(self.source, class_names=self.class_names, log=LOG.info)
        except (PromptCamError, sqlite3.Error, OSError) as exc:
            LOG.warning("could not index the new results of %s: %s", self.source.path, exc)
        finally:
            self._checked = time.monotonic()
            self._refreshing.release()

    def item(self, request: Request) -> dict[str, Any]:
        item_id = request.path_params["item_id"]
        item = self.store.item(item_id) if 0 < item_id < 2**63 else None  # SQLite integers are 64-bit
        if item is None:
            raise HTTPException(404, f"no result with id {request.path_params['item_id']}")
        return item

    def event(self, request: Request) -> dict[str, Any]:
        number = request.path_params["event_id"]
        event = self.store.event(number) if 0 < number < 2**63 else None
        if event is None:
            raise HTTPException(404, f"no event with id {number}")
        return event


def create_app(source: ResultsSource, *, explainer: Explainer | None = None, access: Access | None = None,
               refresh_seconds: float = REFRESH_SECONDS) -> Starlette:
    """The ASGI app for an indexed ``source`` (see ``index.build_index``).

    Args:
        source: The results and their review database.
        explainer: Computes any class's heatmap (``--model``); None hides that control.
        access: Host, token and Origin rules (``Access.for_bind``); None checks nothing (tests).
        refresh_seconds: How often, at most, the results are looked at again for new ones.
    """
    review = Review(source, explainer, refresh_seconds)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    templates = Jinja2Templates(env=env)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def grid(request: Request) -> Response:
        review.refresh()
        filters = Filters.from_query(request.query_params)
        by_event = filters.by == "event"
        classes = review.store.classes()
        return page(request, "events.html" if by_event else "grid.html", {
            "page": review.store.event_page(filters) if by_event else review.store.page(filters), "filters": filters,
            "classes": classes, "sources": review.store.sources(), "results": str(source.path),
            "data": {"classes": classes}})

    def item_page(request: Request) -> Response:
        review.refresh()
        item = review.item(request)
        filters = Filters.from_query(request.query_params)
        previous, following = review.store.neighbours(item, filters)
        detections = _stored_list(item["detections"])
        clip = item["media"] == "video"
        # a clip's boxes lie on its frames, not on the strip shown
        data = {"id": item["id"], "previous": previous, "next": following, "query": filters.query_string(),
                "verdict": item["verdict"], "label": item["label"], "predicted": item["top1"],
                "classes": review.store.classes(), "explain": review.explainer is not None and not clip,
                "boxes": [] if clip else [d["bbox"] for d in detections if isinstance(d, dict)
                                          and _is_box(d.get("bbox"))]}
        return page(request, "item.html", {
            "item": item, "top_k": _stored_list(item["top_k"]), "filters": filters, "data": data,
            "trait_heads": _stored_list(item["trait_heads"]), "event": review.store.event_of(item),
            "frames": [f for f in _stored_list(item["frames"]) if isinstance(f, dict)],
            "decisive": [n for n in _stored_list(item["decisive_frames"]) if isinstance(n, int)],
            "detections": [_describe(d, data["classes"]) for d in detections if isinstance(d, dict)]})

    def send_file(path: str | Path | None, what: str) -> Response:
        if path is None or not Path(path).is_file():
            raise HTTPException(404, f"{what} not found on disk")
        suffix = Path(path).suffix.lower()
        return FileResponse(path, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                            headers={"Cache-Control": "private, max-age=300"})

    def clip_picture(item: dict[str, Any], longest: int) -> Path:
        """What shows a clip: the strip of its decisive frames, else (a blank clip) its first frame."""
        if item["heatmap"] and Path(item["heatmap"]).is_file():
            return (Path(item["heatmap"]) if longest > THUMB_SIZE
                    else thumbnail(item["heatmap"], source.cache_dir, cache_name(item, "strip")))
        return clip_still(item["image"], source.cache_dir, cache_name(item, f"still{longest}"), longest)

    def thumb(request: Request) -> Response:
        item = review.item(request)
        if not item["image"]:
            raise HTTPException(404, "this result names no photo")
        if item["media"] == "video":
            return send_file(clip_picture(item, THUMB_SIZE), "thumbnail")
        return send_file(thumbnail(item["image"], source.cache_dir, cache_name(item, "thumb")), "thumbnail")

    def heatmap_thumb(request: Request) -> Response:
        item = review.item(request)
        if not item["heatmap"] or not Path(item["heatmap"]).is_file():
            raise HTTPException(404, "this result has no heatmap")
        return send_file(thumbnail(item["heatmap"], source.cache_dir, cache_name(item, "heatthumb")), "thumbnail")

    def photo(request: Request) -> Response:
        item = review.item(request)
        if not item["image"]:
            raise HTTPException(404, "this result names no photo")
        if item["media"] == "video":
            return send_file(clip_picture(item, DISPLAY_SIZE), "clip strip")
        return send_file(display_photo(item["image"], source.cache_dir, cache_name(item, "photo")), "photo")

    def heatmap(request: Request) -> Response:
        return send_file(review.item(request)["heatmap"], "heatmap")

    def traits(request: Request) -> Response:
        return send_file(review.item(request)["traits"], "trait contact sheet")

    def explain(request: Request) -> Response:
        item = review.item(request)
        if review.explainer is None:
            raise HTTPException(404, "start promptcam-review with --model to compute other classes' heatmaps")
        index = request.path_params["class_index"]
        if not 0 <= index < len(review.explainer.class_names):
            raise HTTPException(404, f"no class with index {index}")
        if not item["image"]:
            raise HTTPException(404, "this result names no photo")
        name = cache_name(item, f"{review.explainer.tag}.class{index}")
        path = review.explainer.heatmap(item["image"], index, source.cache_dir, name)
        return send_file(path, "heatmap")

    async def set_review(request: Request) -> Response:
        item = review.item(request)
        if request.method == "DELETE":
            review.store.unreview(item)
            return JSONResponse({"id": item["id"], "verdict": None, "label": None})
        label = await _label(request)
        verdict = review.store.review(item, label)
        return JSONResponse({"id": item["id"], "verdict": verdict, "label": label})

    async def set_event_review(request: Request) -> Response:
        """One action for a whole event: its label on every one of its files (DELETE: every review removed)."""
        event = review.event(request)
        if request.method == "DELETE":
            review.store.unreview_event(event)
            return JSONResponse({"id": event["id"], "verdict": None, "label": None, "files": len(event["files"])})
        return JSONResponse(review.store.review_event(event, await _label(request)))

    routes = [
        Route("/", grid),
        Route("/item/{item_id:int}", item_page),
        Route("/thumb/{item_id:int}", thumb),
        Route("/thumb/{item_id:int}/heatmap", heatmap_thumb),
        Route("/photo/{item_id:int}", photo),
        Route("/heatmap/{item_id:int}", heatmap),
        Route("/traits/{item_id:int}", traits),
        Route("/explain/{item_id:int}/{class_index:int}", explain),
        Route("/api/review/{item_id:int}", set_review, methods=["POST", "DELETE"]),
        Route("/api/event/{event_id:int}", set_event_review, methods=["POST", "DELETE"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=_security_headers)]
    if access is not None:  # inside the security headers: its refusals get them too
        middleware.append(Middleware(AccessMiddleware, access=access))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        HTTPException: _error_handler(templates), BadRequest: _error_handler(templates, 400),
        ImageError: _error_handler(templates, 404), PromptCamError: _error_handler(templates, 422),
        Exception: _error_handler(templates, 500)})
    app.state.review = review
    return app


async def _label(request: Request) -> str:
    """The class name of a review request: a JSON body ``{"label": NAME}``."""
    # JSON only: a cross-site form cannot send it without a CORS preflight, which this server never grants
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send the review as application/json")
    body = await _read_body(request, MAX_BODY)
    try:
        label = decode_json(body, "request body")["label"]
    except (UntrustedJSONError, KeyError, TypeError):
        raise BadRequest('body must be JSON {"label": "<class name>"}') from None
    if not isinstance(label, str):
        raise BadRequest("label must be a class name (text)")
    return label


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass ``limit`` bytes: by its
    Content-Length before anything is read, else (chunked) when more than that has arrived."""
    length = request.headers.get("content-length")
    if length is not None and not (length.isascii() and length.isdigit()):
        raise BadRequest("Content-Length must be a number of bytes")
    if length is not None and int(length) > limit:
        raise HTTPException(413, "request body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, "request body too large")
    return bytes(body)


def _stored_list(text: str | None) -> list[Any]:
    """A JSON list the index stored (checked when indexed; anything else reads as empty)."""
    try:
        value = decode_json(text, "review index") if text else []
    except UntrustedJSONError:
        return []
    return value if isinstance(value, list) else []


def _describe(detection: dict[str, Any], classes: list[str]) -> str:
    """One line per detection: its category, confidence and best class (when it was classified)."""
    parts = [f"category {detection.get('category', '?')}"]
    if isinstance(detection.get("conf"), int | float):
        parts.append(f"conf {detection['conf']:.2f}")
    best = (detection.get("classifications") or [None])[0]
    try:
        parts.append(f"{classes[int(best[0])]} {float(best[1]) * 100:.1f}%")
    except (TypeError, ValueError, IndexError, KeyError):
        pass  # not classified (a person, a vehicle, or below the crop threshold)
    return " · ".join(parts)


def _is_box(bbox: Any) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
            and list(bbox) != [0, 0, 1, 1])


async def _security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
    response = await call_next(request)
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def _error_handler(templates: Jinja2Templates, status: int | None = None) -> Callable[[Request, Exception], Response]:
    """A short, escaped error page (JSON for API calls); never a traceback."""

    def handle(request: Request, exc: Exception) -> Response:
        code = status or getattr(exc, "status_code", 500)
        if code >= 500:
            LOG.exception("internal error on %s", request.url.path, exc_info=exc)
            message = "internal error (see the server's log)"
        else:
            message = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if code == 405:
            message = "method not allowed"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=code)
        if request.url.path.startswith(("/thumb/", "/photo/", "/heatmap/", "/traits/", "/explain/", "/static/")):
            return PlainTextResponse(message, status_code=code)
        return templates.TemplateResponse(request, "error.html", {"status": code, "message": message},
                                          status_code=code)

    return handle


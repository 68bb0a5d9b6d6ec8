"""The HTTP server: ``POST /ground``, ``GET /health``, ``GET /methods`` and the web page at ``/``.

Requests are checked cheaply first (text, method name, JSON fields, upload size and type) so a
bad request never loads a model. Decoding and inference run in worker threads, bounded by a
limiter, so the event loop keeps answering (``/health`` stays instant while a model computes)
and at most ``concurrency`` images are held decoded at once; models come from a shared
:class:`~refground.serve.models.GrounderCache` and serialise their own forwards.

The operator decides what is served: a default method plus any ``also`` methods, each with
options of any kind. A request picks among those and may adjust only the options on the
allowlist of :mod:`refground.serve.options`, so it can never make the server load something
else, touch a file or reveal one: failures below the request checks (model loading, datasets,
caches) reach the client as a generic message and the log in full.
"""

from __future__ import annotations

import difflib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel

from refground.api import check_boxes, check_text
from refground.defaults import DEFAULT_METHOD
from refground.errors import (
    BoxError,
    ConfigError,
    ImageError,
    InputError,
    RefgroundError,
    UnknownNameError,
    validation_problems,
)
from refground.methods.base import METHODS
from refground.serve.errors import (
    GENERIC_MESSAGE,
    BadOptionValueError,
    MethodNotServedError,
    OptionsNotAllowedError,
    ServerBusyError,
    ServerFaultError,
    is_client_error,
    scrub,
    status_for,
)
from refground.serve.models import GrounderCache, GrounderLike
from refground.serve.options import check_client_options, describe_allowed, echo
from refground.serve.uploads import (
    BodyLimitMiddleware,
    decode_image,
    parse_boxes,
    parse_options,
    read_upload,
)
from refground.types import Prediction

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeConfig:
    """Server settings; the defaults suit a single-user machine with a few GB of memory."""

    method: str = DEFAULT_METHOD
    options: dict[str, Any] = field(default_factory=dict)  # the operator's: any option
    #: More methods to serve, each with the operator's options for it.
    also: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000  # a decoded RGB image of this size is 75 MB (300 MB as floats)
    max_boxes: int = 100
    concurrency: int = 4  # requests decoding or computing at once; the rest wait
    max_queue: int = 64  # waiting requests beyond this get 503
    max_models: int = 4
    #: True: requests may set the allowlisted options (serve.options); False: none at all.
    allow_client_options: bool = True

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_boxes", "concurrency", "max_models"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be 0 or more, got {self.max_queue}")
        if self.method in self.also:
            raise ConfigError(f"{self.method} is the default method; serve it once (its "
                              "options go in options, not also)")
        for name in self.served:
            METHODS.get(name)  # an unknown name fails here, listing the known ones

    @property
    def served(self) -> dict[str, dict[str, Any]]:
        """Every served method and the operator's options for it, the default first."""
        return {self.method: dict(self.options),
                **{name: dict(options) for name, options in self.also.items()}}


class CandidateOut(BaseModel):
    box: list[float]
    score: float | None
    label: str | None = None


class GroundResponse(BaseModel):
    box: list[float]
    score: float | None
    candidates: list[CandidateOut]
    fallback: str | None
    method: str
    width: int
    height: int
    expression: str
    seconds: float


class Detail(BaseModel):
    detail: str


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity; a score that is not finite is reported as null."""
    return float(value) if math.isfinite(value) else None


def to_response(prediction: Prediction, method: str, width: int, height: int,
                expression: str, seconds: float) -> GroundResponse:
    return GroundResponse(
        box=[float(v) for v in prediction.box], score=finite(prediction.score),
        candidates=[CandidateOut(box=[float(v) for v in c.box], score=finite(c.score),
                                 label=c.label) for c in prediction.candidates],
        fallback=prediction.fallback, method=method, width=width, height=height,
        expression=expression, seconds=round(seconds, 4))


class GroundService:
    """The request-independent half of ``POST /ground``: what runs in a worker thread."""

    def __init__(self, config: ServeConfig, cache: GrounderCache) -> None:
        self.config = config
        self.cache = cache
        self.limiter = anyio.CapacityLimiter(config.concurrency)
        self.served = config.served

    def resolve(self, method: str | None, options: dict[str, Any]
                ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The method to run, its options (the operator's, then the request's allowed ones
        over them) and the request's own options, checked."""
        name = method.strip() if method and method.strip() else self.config.method
        if name not in self.served:
            served = ", ".join(self.served)
            if name in METHODS.names():
                raise MethodNotServedError(
                    f"this server does not serve {name}; it serves {served} (the operator "
                    "chooses them: refground serve --method M --also M2)")
            close = difflib.get_close_matches(name, list(self.served), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown method {echo(name)}.{hint} This server serves: "
                                   f"{served}")
        if options and not self.config.allow_client_options:
            raise OptionsNotAllowedError("this server does not accept method options from "
                                         "clients; leave 'options' out")
        client = check_client_options(name, options)
        return name, {**self.served[name], **client}, client

    def load(self, method: str, options: dict[str, Any], client: dict[str, Any]
             ) -> GrounderLike:
        """The model from the cache. Every failure here is about the server (its model
        files, its options), except a ConfigError on a request's options, which the method
        refused in combination with the operator's ones: neither message reaches the client
        (both can hold the operator's paths), the log gets it in full."""
        try:
            return self.cache.get(method, options)
        except Exception as exc:
            if client and isinstance(exc, ConfigError):
                logger.warning("%s refused the request's options %s: %s", method, client, exc)
                raise BadOptionValueError(f"{method} on this server cannot run with the "
                                          f"options {echo(client)}; leave them out or change "
                                          "them") from None
            logger.exception("cannot load %s", method)
            raise ServerFaultError(f"the server cannot load {method}; its log has the "
                                   "details") from None

    async def ground(self, data: bytes, expression: str, method: str, options: dict[str, Any],
                     client: dict[str, Any], boxes: list[list[float]] | None) -> GroundResponse:
        if self.limiter.statistics().tasks_waiting >= self.config.max_queue:
            raise ServerBusyError(f"{self.config.max_queue} requests are already waiting; "
                                  "retry in a few seconds")
        job = partial(self.run, data, expression, method, options, client, boxes)
        return await anyio.to_thread.run_sync(job, limiter=self.limiter)

    def run(self, data: bytes, expression: str, method: str, options: dict[str, Any],
            client: dict[str, Any], boxes: Sequence[Sequence[float]] | None) -> GroundResponse:
        """Decode, check boxes against the image, get the model, ground (in a worker thread).

        The upload is decoded once, here, and handed on in memory: nothing is written to disk.
        Boxes are checked before the model is fetched, so a bad request never loads one."""
        start = time.perf_counter()
        image = decode_image(data, self.config.max_pixels)
        if boxes is not None:
            check_boxes(boxes, image.width, image.height)
        model = self.load(method, options, client)
        prediction = self.predict(model, method, image, expression, boxes)
        return to_response(prediction, method, image.width, image.height, expression,
                           time.perf_counter() - start)

    def predict(self, model: GrounderLike, method: str, image: Image.Image, expression: str,
                boxes: Sequence[Sequence[float]] | None) -> Prediction:
        """``model.ground`` on the decoded upload. What the request got wrong (no boxes for a
        method that needs them, an image the method cannot use) keeps its message, with the
        image's description replaced; anything else deliberate (a dataset or cache the
        operator configured, a missing extra) is the server's and is logged, not shown."""
        try:
            return model.ground(image, expression, boxes=boxes)
        except (BoxError, ImageError, InputError) as exc:
            kind = next(k for k in (BoxError, ImageError, InputError) if isinstance(exc, k))
            raise kind(scrub(str(exc), {str(image): "the uploaded image"})) from None
        except RefgroundError:
            logger.exception("%s failed on a request", method)
            raise ServerFaultError(f"the server failed to run {method} on this request; its "
                                   "log has the details") from None


def install_error_handlers(app: FastAPI) -> None:
    """Deliberate errors -> 4xx with their message; anything else -> logged, generic 500."""

    @app.exception_handler(RefgroundError)
    async def refground_error(request: Request, exc: RefgroundError) -> JSONResponse:
        if not is_client_error(exc):  # a server-side message (paths, listings): log only
            logger.error("error in %s %s", request.method, request.url.path, exc_info=exc)
            return JSONResponse({"detail": GENERIC_MESSAGE}, status_code=500)
        status = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid request: {validation_problems(exc)}"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error in %s %s", request.method, request.url.path,
                     exc_info=exc)
        return JSONResponse({"detail": GENERIC_MESSAGE}, status_code=500)


def method_summary(name: str) -> str:
    """The registered method's one-line summary ("" for a name the registry lacks)."""
    try:
        return str(getattr(METHODS.get(name), "summary", ""))
    except UnknownNameError:
        return ""


def create_app(config: ServeConfig | None = None, cache: GrounderCache | None = None) -> FastAPI:
    """The FastAPI app. Pass ``cache`` to share models (or preload them) across apps."""
    config = config or ServeConfig()
    METHODS.names()  # import every method module now, not inside the event loop later
    service = GroundService(config, cache or GrounderCache(max_models=config.max_models))
    for name, options in config.served.items():
        service.cache.pin(name, options)  # requests' option variants never evict these

    app = FastAPI(title="refground", summary="Ground a referring expression in an image: "
                  "image + text -> one box.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, image_limit=config.max_upload_bytes)
    install_error_handlers(app)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Detail, "description": text} for code, text in (
            (403, "option or method not allowed"), (413, "upload too large"),
            (415, "not a supported image"), (422, "bad input"), (500, "server fault"),
            (503, "busy"))}

    @app.post("/ground", response_model=GroundResponse, responses=errors)
    async def ground(
        image: Annotated[UploadFile | None, File(description="The image (PNG, JPEG, ...).")] = (
            None),
        text: Annotated[str, Form(description="The referring expression.")] = "",
        method: Annotated[str | None, Form(description="One of the methods this server "
                                                       "serves (GET /methods) [server "
                                                       "default].")] = None,
        options: Annotated[str | None, Form(description="Method options as a JSON object: "
                                                        "only those GET /methods lists for "
                                                        "the method.")] = None,
        boxes: Annotated[str | None, Form(description="Candidate boxes as JSON "
                                                      "[[x0, y0, x1, y1], ...] in pixels: "
                                                      "needed by methods with "
                                                      "proposals='gt'.")] = None,
    ) -> GroundResponse:
        """The box ``text`` refers to in ``image``, its score and the ranked candidates."""
        if image is None:  # first: a request that is not a multipart form lacks everything
            raise InputError("no image: send multipart/form-data with the picture as the file "
                             "field 'image' and the expression as the field 'text'")
        expression = check_text(text)
        name, merged, client = service.resolve(method, parse_options(options))
        candidates = parse_boxes(boxes, config.max_boxes)
        data = await read_upload(image, config.max_upload_bytes)
        return await service.ground(data, expression, name, merged, client, candidates)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Answers at once, even while models compute: for load balancers and start-up waits."""
        stats = service.limiter.statistics()
        # method names only: the options of a loaded model can name the operator's files
        return {"status": "ok", "method": config.method,
                "models": [method for method, _ in service.cache.loaded()],
                "running": stats.borrowed_tokens, "waiting": stats.tasks_waiting}

    @app.get("/methods")
    async def methods() -> dict[str, Any]:
        """The methods this server serves, its default, and the options a request may set
        for each (none when the server was started with --no-client-options)."""
        allowed = config.allow_client_options
        return {"methods": list(service.served), "default": config.method,
                "summaries": {name: method_summary(name) for name in service.served},
                "client_options": allowed,
                "options": {name: describe_allowed(name) if allowed else {}
                            for name in service.served}}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

"""The HTTP server: ``POST /ground``, ``GET /health``, ``GET /methods`` and the web page at ``/``.

Requests are checked cheaply first (text, method name, JSON fields, upload size and type) so a
bad request never loads a model. Decoding and inference run in worker threads, bounded by a
limiter, so the event loop keeps answering (``/health`` stays instant while a model computes)
and at most ``concurrency`` images are held decoded at once; models come from a shared
:class:`~refground.serve.models.GrounderCache` and serialise their own forwards.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
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
from pydantic import BaseModel

from refground.api import check_boxes, check_text
from refground.errors import ConfigError, InputError, RefgroundError, validation_problems
from refground.methods.base import METHODS
from refground.serve.errors import OptionsNotAllowedError, ServerBusyError, status_for
from refground.serve.models import GrounderCache
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

    method: str = "visual-prompt"
    options: dict[str, Any] = field(default_factory=dict)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000  # a decoded RGB image of this size is 75 MB (300 MB as floats)
    max_boxes: int = 100
    concurrency: int = 4  # requests decoding or computing at once; the rest wait
    max_queue: int = 64  # waiting requests beyond this get 503
    max_models: int = 4
    allow_client_options: bool = True  # False: clients may pick a method, not its options

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_boxes", "concurrency", "max_models"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be 0 or more, got {self.max_queue}")


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
        # each upload's file is deleted after its request; the empty directory goes at exit
        self.workdir = tempfile.TemporaryDirectory(prefix="refground-serve-")

    def resolve(self, method: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The method to run and its options: the server's own options apply to its default
        method, and a client's options (when allowed) override them."""
        name = method.strip() if method and method.strip() else self.config.method
        METHODS.get(name)  # unknown name: UnknownNameError listing the known ones
        if options and not self.config.allow_client_options:
            raise OptionsNotAllowedError("this server does not accept method options from "
                                         "clients; leave 'options' out")
        base = self.config.options if name == self.config.method else {}
        return name, {**base, **options}

    async def ground(self, data: bytes, expression: str, method: str, options: dict[str, Any],
                     boxes: list[list[float]] | None) -> GroundResponse:
        if self.limiter.statistics().tasks_waiting >= self.config.max_queue:
            raise ServerBusyError(f"{self.config.max_queue} requests are already waiting; "
                                  "retry in a few seconds")
        job = partial(self.run, data, expression, method, options, boxes)
        return await anyio.to_thread.run_sync(job, limiter=self.limiter)

    def run(self, data: bytes, expression: str, method: str, options: dict[str, Any],
            boxes: Sequence[Sequence[float]] | None) -> GroundResponse:
        """Decode, check boxes against the image, get the model, ground (in a worker thread)."""
        start = time.perf_counter()
        image, rotated = decode_image(data, self.config.max_pixels)
        if boxes is not None:
            check_boxes(boxes, image.width, image.height)
        model = self.cache.get(method, options)
        # A file of our own, deleted afterwards: handing the Grounder in-memory images would
        # keep a PNG of every upload in its work directory for the life of the server.
        with tempfile.NamedTemporaryFile(dir=self.workdir.name, suffix=".png" if rotated
                                         else ".img") as stream:
            if rotated:
                image.save(stream, format="PNG")
            else:
                stream.write(data)
            stream.flush()
            prediction = model.ground(Path(stream.name), expression, boxes=boxes)
        return to_response(prediction, method, image.width, image.height, expression,
                           time.perf_counter() - start)


def install_error_handlers(app: FastAPI) -> None:
    """Deliberate errors -> 4xx with their message; anything else -> logged, generic 500."""

    @app.exception_handler(RefgroundError)
    async def refground_error(request: Request, exc: RefgroundError) -> JSONResponse:
        status = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid request: {validation_problems(exc)}"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error; the server log has the details"},
                            status_code=500)


def create_app(config: ServeConfig | None = None, cache: GrounderCache | None = None) -> FastAPI:
    """The FastAPI app. Pass ``cache`` to share models (or preload them) across apps."""
    config = config or ServeConfig()
    METHODS.names()  # import every method module now, not inside the event loop later
    service = GroundService(config, cache or GrounderCache(max_models=config.max_models))

    app = FastAPI(title="refground", summary="Ground a referring expression in an image: "
                  "image + text -> one box.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, image_limit=config.max_upload_bytes)
    install_error_handlers(app)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Detail, "description": text} for code, text in (
            (403, "options not allowed"), (413, "upload too large"),
            (415, "not a supported image"), (422, "bad input"), (503, "busy"))}

    @app.post("/ground", response_model=GroundResponse, responses=errors)
    async def ground(
        image: Annotated[UploadFile | None, File(description="The image (PNG, JPEG, ...).")] = (
            None),
        text: Annotated[str, Form(description="The referring expression.")] = "",
        method: Annotated[str | None, Form(description="Registered method name "
                                                       "[server default].")] = None,
        options: Annotated[str | None, Form(description="Method options as a JSON "
                                                        "object.")] = None,
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
        name, merged = service.resolve(method, parse_options(options))
        candidates = parse_boxes(boxes, config.max_boxes)
        data = await read_upload(image, config.max_upload_bytes)
        return await service.ground(data, expression, name, merged, candidates)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Answers at once, even while models compute: for load balancers and start-up waits."""
        stats = service.limiter.statistics()
        return {"status": "ok", "method": config.method,
                "models": [f"{m} {o}" for m, o in service.cache.loaded()],
                "running": stats.borrowed_tokens, "waiting": stats.tasks_waiting}

    @app.get("/methods")
    async def methods() -> dict[str, Any]:
        """Registered method names and the server's default."""
        return {"methods": METHODS.names(), "default": config.method}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

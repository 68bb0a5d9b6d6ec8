"""Turning an untrusted request into checked inputs: bounded bytes, a decodable image, JSON.

Everything a client sends is limited before it costs memory or time: the request body by its
declared length and by counting bytes as they arrive (a client may lie or send chunks), the
image by its pixel count before decoding (a few KB of PNG can declare a 50000x50000 image), and
its format by a whitelist (Pillow can open formats such as EPS that run external programs).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refground.errors import BoxError, ImageError, InputError
from refground.images import load_image
from refground.serve.errors import MediaTypeError, UploadTooLargeError

#: Pillow formats the server decodes; anything else is refused as an unsupported media type.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: Declared part types that may hold an image (browsers and curl send these for unknown files).
GENERIC_TYPES = ("", "application/octet-stream")
#: Room for the form fields and multipart framing beside the image in one request body.
FORM_ALLOWANCE = 256 * 1024
CHUNK = 64 * 1024
#: EXIF orientation -> the transpose that makes the image upright (1 and unknown values: none).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def too_large_message(size: str, image_limit: int) -> str:
    return (f"the upload is {size}; this server accepts images up to {image_limit:,} bytes "
            f"({image_limit / 2**20:.1f} MiB): send a smaller or more compressed image")


class BodyLimitMiddleware:
    """Refuses request bodies over ``image_limit + FORM_ALLOWANCE`` with 413, before or while
    reading them.

    A declared ``Content-Length`` over the limit is answered at once without reading; otherwise
    the bytes are counted as the app receives them, and the first chunk past the limit raises a
    413 ``HTTPException`` inside the app (FastAPI re-raises those from body parsing).
    """

    def __init__(self, app: ASGIApp, image_limit: int) -> None:
        self.app = app
        self.image_limit = image_limit
        self.max_bytes = image_limit + FORM_ALLOWANCE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(
                {"detail": too_large_message(f"{int(declared):,} bytes", self.image_limit)},
                status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large_message(
                        f"over {self.max_bytes:,} bytes", self.image_limit))
            return message

        await self.app(scope, counting_receive, send)


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The uploaded file's bytes, refusing a declared non-image type or too many bytes."""
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared not in GENERIC_TYPES and not declared.startswith("image/"):
        raise MediaTypeError(f"the 'image' upload has content type {declared!r}; send an image "
                             f"({', '.join(IMAGE_FORMATS)})")
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise UploadTooLargeError(too_large_message(f"over {max_bytes:,} bytes", max_bytes))
        chunks.append(chunk)
    if size == 0:
        raise InputError("the 'image' upload is empty; choose an image file")
    return b"".join(chunks)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The upload as an upright RGB image (turned by its EXIF orientation, if it has one).

    Browsers display photos upright, so boxes drawn on the page and boxes typed by the user are
    in upright coordinates; the model must see the same pixels.
    """
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            if probe.width * probe.height > max_pixels:
                raise ImageError(f"the image has {probe.width}x{probe.height} pixels, more "
                                 f"than the server's limit of {max_pixels:,}; resize it first")
            # only EXIF read with the header: PNG's getexif() would decode the whole image
            has_exif = "exif" in probe.info or probe.format == "TIFF"
            orientation = probe.getexif().get(0x0112, 1) if has_exif else 1
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise MediaTypeError("the upload is not an image the server can read; send one of "
                             f"{', '.join(IMAGE_FORMATS)}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"the image is too large to decode ({exc}); the server's limit is "
                         f"{max_pixels:,} pixels") from None
    except Exception as exc:  # hostile bytes make Pillow raise anything
        raise ImageError(f"the image is corrupt: {corruption(exc)}") from None
    try:
        image = load_image(data, max_pixels=max_pixels)
    except Exception as exc:  # as above (load_image wraps only some kinds)
        cause = exc.__cause__ if isinstance(exc, ImageError) and exc.__cause__ else exc
        raise ImageError(f"the image is corrupt: {corruption(cause)}") from None
    if orientation not in UPRIGHT:
        return image
    return image.transpose(UPRIGHT[orientation])


def corruption(exc: BaseException) -> str:
    """What Pillow said about bytes it could not decode (they were in memory: no path)."""
    return str(exc) or type(exc).__name__


def parse_json(raw: str, field: str, example: str) -> Any:
    """A form field's JSON. Python's parser raises ValueError beyond JSONDecodeError (an
    integer of more than 4300 digits) and RecursionError on deep nesting: all are bad input."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = exc if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise InputError(f"{field} is not valid JSON ({reason}); send {example}") from None


def parse_options(raw: str | None) -> dict[str, Any]:
    """The ``options`` form field: a JSON object of method options (empty or absent: none)."""
    if raw is None or not raw.strip():
        return {}
    options = parse_json(raw, "options", 'an object such as {"stroke": 4}')
    if not isinstance(options, dict):
        raise InputError(f"options must be a JSON object of method options, got "
                         f"{type(options).__name__}")
    return options


def parse_boxes(raw: str | None, max_boxes: int) -> list[list[float]] | None:
    """The ``boxes`` form field: JSON ``[[x0, y0, x1, y1], ...]`` in pixels, or None if absent."""
    if raw is None or not raw.strip():
        return None
    boxes = parse_json(raw, "boxes", "[[x0, y0, x1, y1], ...] in pixels")
    if not isinstance(boxes, list) or not boxes:
        raise BoxError("boxes must be a non-empty JSON list [[x0, y0, x1, y1], ...]; leave it "
                       "out to let the method propose boxes")
    if len(boxes) > max_boxes:
        raise BoxError(f"{len(boxes)} candidate boxes, more than the server's limit of "
                       f"{max_boxes}")
    for index, box in enumerate(boxes):
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool)
                        and math.isfinite(v) for v in box)):
            raise BoxError(f"candidate box {index} is {json.dumps(box)}; each box must be four "
                           "finite numbers [x0, y0, x1, y1] in pixels")
    return [[float(v) for v in box] for box in boxes]

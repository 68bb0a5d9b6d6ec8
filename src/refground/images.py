"""Reading images safely: one place that turns a file into an RGB PIL image or a clear error,
and a batch of samples into their decoded images, each decoded once."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from refground.errors import ImageError
from refground.types import ImageSource, Sample

# Decompression bombs: PIL warns above this many pixels and raises above twice it; we refuse
# anything above it outright, so a hostile file cannot exhaust memory.
MAX_PIXELS = 64_000_000

ImageInput = str | Path | bytes | Image.Image


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``source`` (a path, encoded bytes or a PIL image) as a fully decoded RGB image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError(f"image not found: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
            with stream, Image.open(stream) as image:
                if image.width * image.height > max_pixels:
                    raise ImageError(
                        f"image {name} has {image.width}x{image.height} pixels, more than the "
                        f"limit of {max_pixels}; resize it first"
                    )
                image.load()
                return image.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"cannot read image {name}: {exc}") from exc


def decode_images(samples: Sequence[Sample]) -> list[Image.Image]:
    """Each sample's image as RGB, decoded once per distinct image of the batch.

    Datasets give several expressions per image, and a batch often holds them together; an
    image that arrived decoded (:class:`~refground.types.ImageSource` with pixels, as the
    Python API and the server hand them over) is not decoded again. Every consumer of a batch
    (proposer, renderer, collator) takes its pixels from here.
    """
    decoded: dict[str, Image.Image] = {}
    for sample in samples:
        if sample.image.key not in decoded:
            decoded[sample.image.key] = open_image(sample.image)
    return [decoded[sample.image.key] for sample in samples]


def open_image(source: ImageSource) -> Image.Image:
    """A source's RGB pixels: the decoded ones it carries, else its file, decoded."""
    if source.decoded is not None:
        return source.decoded
    if source.path is None:
        raise ImageError(f"image {source.key} has neither a file nor decoded pixels")
    return load_image(source.path)

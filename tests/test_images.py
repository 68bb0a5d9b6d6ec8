"""Image loading: every unreadable input is one clear ImageError, never a PIL traceback."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from refground.errors import ImageError
from refground.images import load_image


def png_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_paths_bytes_and_pil_give_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    path.write_bytes(png_bytes((40, 30), "L"))
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 30)


def test_missing_corrupt_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="image not found"):
        load_image(tmp_path / "nope.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match=r"cannot read image .*garbage\.png"):
        load_image(garbage)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes((200, 200))[:60])
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(truncated)


def test_decompression_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(png_bytes((300, 300)), max_pixels=10_000)

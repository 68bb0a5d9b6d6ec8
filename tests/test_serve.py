"""The HTTP server: same answers as the Python API, 4xx (never 500) on bad input, shared models,
and an event loop that keeps answering while a model computes."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'refground[serve]'")

from fastapi.testclient import TestClient
from PIL import Image

from refground.api import Grounder
from refground.defaults import DEFAULT_METHOD
from refground.errors import ConfigError
from refground.methods import METHODS
from refground.serve import GrounderCache, ServeConfig, create_app
from refground.serve.models import model_key
from refground.types import Candidate, Prediction, Sample
from tests.conftest import synthref_split


@pytest.fixture(scope="module")
def synth_sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """A SynthRef test sample with several annotated objects (candidate boxes)."""
    return next(s for s in synthref_split(tmp_path_factory) if len(s.annotations) >= 3)


def boxes_of(sample: Sample) -> list[list[float]]:
    return [list(a.box) for a in sample.annotations]


class CountingLoader:
    """Grounder.load that counts its calls, so tests can see models are built once."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, method: str, **options: Any) -> Grounder:
        self.calls += 1
        return Grounder.load(method, **options)


@pytest.fixture(scope="module")
def real(one_thread: None) -> Iterator[tuple[TestClient, GrounderCache, CountingLoader]]:
    """A visual-prompt server with the shipped SynthRef CLIP."""
    loader = CountingLoader()
    cache = GrounderCache(loader=loader)
    with TestClient(create_app(ServeConfig(method="visual-prompt"), cache)) as client:
        yield client, cache, loader


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 40)
              ) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png(side: int = 48) -> bytes:
    """A PNG that does not compress well (a few KB for 48x48)."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose header claims ``width`` x ``height``: a decompression bomb's
    header, a few hundred bytes long."""
    data = bytearray(png_bytes((8, 8)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts at byte 16
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # its CRC
    return bytes(data)


def post(client: TestClient, image: bytes | None = None, content_type: str = "image/png",
         **fields: str) -> Any:
    files = None if image is None else {"image": ("upload.png", image, content_type)}
    return client.post("/ground", files=files, data={"text": "the red square", **fields})


def test_ground_returns_what_the_python_api_returns(real: Any, synth_sample: Sample) -> None:
    client, cache, loader = real
    boxes = boxes_of(synth_sample)
    response = post(client, synth_sample.image_path.read_bytes(),
                    text=synth_sample.expression, boxes=str(boxes))
    assert response.status_code == 200, response.text
    body = response.json()
    direct = Grounder.load("visual-prompt").ground(synth_sample.image_path,
                                                   synth_sample.expression, boxes=boxes)
    assert body["box"] == list(direct.box)
    assert body["score"] == pytest.approx(direct.score, abs=1e-6)
    assert [c["box"] for c in body["candidates"]] == [list(c.box) for c in direct.candidates]
    assert (body["width"], body["height"]) == (synth_sample.width, synth_sample.height)
    assert body["method"] == "visual-prompt" and body["fallback"] is None
    # a second request, options spelled differently, reuses the loaded model
    again = post(client, synth_sample.image_path.read_bytes(), text=synth_sample.expression,
                 boxes=str(boxes), options="{ }")
    assert again.json()["box"] == body["box"]
    assert loader.calls == 1 and cache.builds[model_key("visual-prompt", {})] == 1


BOMB = png_claiming(100_000, 100_000)  # 10^10 pixels: Pillow refuses to even open it
BIG = png_claiming(6_000, 6_000)  # 36 MP: opens, but over the server's 25 MP limit

BAD_INPUTS = {
    # name: (image bytes or None, content type, fields, status, words the message must hold)
    "not an image": (b"just some text, no pixels", "image/png", {}, 415, "not an image"),
    "text/plain": (b"hello", "text/plain", {}, 415, "content type 'text/plain'"),
    "corrupt": (noisy_png()[:300], "image/png", {}, 422, "truncated"),
    "decompression bomb": (BOMB, "image/png", {}, 422, "too large"),
    "over max pixels": (BIG, "image/png", {}, 422, "6000x6000 pixels, more than"),
    "no image": (None, "image/png", {}, 422, "no image"),
    "empty file": (b"", "image/png", {}, 422, "empty"),
    "empty text": (png_bytes(), "image/png", {"text": "   "}, 422, "expression is empty"),
    "2000-char text": (png_bytes(), "image/png", {"text": "x" * 2000}, 422, "2000 characters"),
    "unknown method": (png_bytes(), "image/png", {"method": "visual-promt"}, 422,
                       "Did you mean 'visual-prompt'"),
    "options not JSON": (png_bytes(), "image/png", {"options": "{stroke: 4"}, 422,
                         "options is not valid JSON"),
    "options not object": (png_bytes(), "image/png", {"options": "[1, 2]"}, 422,
                           "JSON object"),
    "unknown option": (png_bytes(), "image/png",
                       {"options": '{"strok": 4}', "boxes": "[[0, 0, 8, 8]]"}, 403,
                       "did you mean 'stroke'"),
    "option out of bounds": (png_bytes(), "image/png",
                             {"options": '{"stroke": 1e9}', "boxes": "[[0, 0, 8, 8]]"}, 422,
                             "stroke of visual-prompt must be number in (0, 50]"),
    "boxes not JSON": (png_bytes(), "image/png", {"boxes": "[[0, 0, 8, 8]"}, 422,
                       "boxes is not valid JSON"),
    "box of 3 numbers": (png_bytes(), "image/png", {"boxes": "[[0, 0, 8]]"}, 422,
                         "four finite numbers"),
    "box outside image": (png_bytes((64, 48)), "image/png", {"boxes": "[[0, 0, 80, 20]]"}, 422,
                          "outside the 64x48 image"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_with_a_message(real: Any, case: str) -> None:
    """TestClient re-raises server exceptions, so none of these can be a hidden 500."""
    image, content_type, fields, status, words = BAD_INPUTS[case]
    response = post(real[0], image, content_type, **fields)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_without_boxes_the_servers_detector_proposes_the_candidates(
        real: Any, synth_sample: Sample) -> None:
    client = real[0]
    response = post(client, synth_sample.image_path.read_bytes(), text=synth_sample.expression)
    assert response.status_code == 200, response.text
    candidates = response.json()["candidates"]
    assert len(candidates) >= len(synth_sample.annotations)
    assert {c["label"] for c in candidates} == {"object"}
    # a plain grey image (SynthRef's background range) has no objects: the method's own
    # whole-image fallback, said so
    blank = post(client, png_bytes((64, 48), (128, 128, 128)))
    assert blank.status_code == 200, blank.text
    assert blank.json()["fallback"] == "whole-image"
    assert blank.json()["box"] == [0.0, 0.0, 64.0, 48.0]


def test_upload_limits_count_bytes_not_only_headers(real: Any) -> None:
    config = ServeConfig(max_upload_bytes=2_000)
    with TestClient(create_app(config, real[1])) as client:
        # a 5 KB file inside a body the middleware lets through: counted while read
        noisy = noisy_png()
        assert len(noisy) > 2_000
        response = post(client, noisy)
        assert response.status_code == 413
        assert "images up to 2,000 bytes" in response.json()["detail"]
        # a body declared larger than the limit: refused before reading it
        response = post(client, b"\0" * 600_000)
        assert response.status_code == 413 and "600," in response.json()["detail"]
        # a chunked body with no Content-Length: refused while counting
        chunks = (b"\0" * 100_000 for _ in range(6))
        response = client.post("/ground", content=chunks,
                               headers={"content-type": "multipart/form-data; boundary=x"})
        assert response.status_code == 413 and "over" in response.json()["detail"]


def test_client_options_can_be_switched_off(real: Any) -> None:
    config = ServeConfig(allow_client_options=False)
    with TestClient(create_app(config, real[1])) as client:
        response = post(client, png_bytes(), options='{"stroke": 9}', boxes="[[0, 0, 8, 8]]")
        assert response.status_code == 403 and "options" in response.json()["detail"]


class SlowGrounder:
    """Answers the first box after waiting for ``release`` (signalling ``entered``)."""

    def __init__(self, entered: threading.Event | None = None,
                 release: threading.Event | None = None) -> None:
        self.entered, self.release = entered, release

    def ground(self, image: Any, text: str, boxes: Any = None) -> Prediction:
        if self.entered is not None and self.release is not None:
            self.entered.set()
            assert self.release.wait(10)
        box = tuple(boxes[0]) if boxes else (0.0, 0.0, 1.0, 1.0)
        return Prediction("0", box, 1.0, (Candidate(box, 1.0, "object"),))


def test_health_answers_while_a_request_computes() -> None:
    entered, release = threading.Event(), threading.Event()
    cache = GrounderCache(loader=lambda method, **options: SlowGrounder(entered, release))
    results: dict[str, Any] = {}
    with TestClient(create_app(ServeConfig(method="visual-prompt"), cache)) as client:
        slow = threading.Thread(target=lambda: results.update(
            ground=post(client, png_bytes(), boxes="[[1, 2, 3, 4]]")))
        slow.start()
        try:
            assert entered.wait(10), "the slow request never reached the model"
            health = threading.Thread(target=lambda: results.update(health=client.get("/health")))
            health.start()
            health.join(5)
            assert not health.is_alive(), "/health waited for the computing request"
            assert results["health"].json()["running"] == 1
        finally:
            release.set()
            slow.join(10)
    assert results["ground"].status_code == 200
    assert results["ground"].json()["box"] == [1, 2, 3, 4]


def test_a_full_queue_answers_503_at_once() -> None:
    entered, release = threading.Event(), threading.Event()
    cache = GrounderCache(loader=lambda method, **options: SlowGrounder(entered, release))
    config = ServeConfig(concurrency=1, max_queue=1)
    results: list[Any] = []
    with TestClient(create_app(config, cache)) as client:
        threads = [threading.Thread(target=lambda: results.append(
            post(client, png_bytes(), boxes="[[1, 2, 3, 4]]"))) for _ in range(2)]
        try:
            threads[0].start()
            assert entered.wait(10)
            threads[1].start()
            deadline = time.monotonic() + 10
            while client.get("/health").json()["waiting"] < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.02)
            busy = post(client, png_bytes(), boxes="[[1, 2, 3, 4]]")
            assert busy.status_code == 503 and "waiting" in busy.json()["detail"]
            assert busy.headers["retry-after"] == "5"
        finally:
            release.set()
            for thread in threads:
                thread.join(10)
    assert [r.status_code for r in results] == [200, 200]


def test_a_model_is_built_once_under_concurrent_requests() -> None:
    builds: list[str] = []

    def slow_loader(method: str, **options: Any) -> SlowGrounder:
        builds.append(f"{method} {sorted(options)}")
        time.sleep(0.3)  # long enough for every request to arrive while it builds
        return SlowGrounder()

    cache = GrounderCache(loader=slow_loader)
    with TestClient(create_app(ServeConfig(method="visual-prompt"), cache)) as client:
        spellings = ['{"stroke": 4, "blur_radius": 2}', '{"blur_radius": 2, "stroke": 4}']
        responses: list[Any] = []
        threads = [threading.Thread(target=lambda o=spellings[i % 2]: responses.append(
            post(client, png_bytes(), options=o, boxes="[[0, 0, 8, 8]]"))) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert [r.status_code for r in responses] == [200] * 6
        assert builds == ["visual-prompt ['blur_radius', 'stroke']"]
        post(client, png_bytes(), options='{"stroke": 5}', boxes="[[0, 0, 8, 8]]")
        assert len(builds) == 2 and len(cache.loaded()) == 2


def test_cache_drops_the_least_recently_used_model() -> None:
    cache = GrounderCache(loader=lambda method, **options: SlowGrounder(), max_models=2)
    first = cache.get("a")
    cache.get("b")
    assert cache.get("a") is first  # "a" is now the most recently used
    cache.get("c")
    assert cache.loaded() == [("a", "{}"), ("c", "{}")]
    with pytest.raises(ConfigError, match="plain JSON"):
        cache.get("a", {"x": float("nan")})


def test_photos_are_grounded_upright(real: Any) -> None:
    """A JPEG rotated by EXIF is decoded as browsers show it: 40x20 stored, 20x40 seen."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 90, 200)).save(buffer, format="JPEG", exif=exif)
    cache = GrounderCache(loader=lambda method, **options: SlowGrounder())
    with TestClient(create_app(ServeConfig(method="visual-prompt"), cache)) as client:
        response = post(client, buffer.getvalue(), "image/jpeg", boxes="[[0, 0, 20, 40]]")
        assert response.status_code == 200, response.text
        assert (response.json()["width"], response.json()["height"]) == (20, 40)


def test_unexpected_errors_are_logged_and_generic(caplog: pytest.LogCaptureFixture) -> None:
    def broken(method: str, **options: Any) -> SlowGrounder:
        raise RuntimeError("disk on fire")

    app = create_app(ServeConfig(method="visual-prompt"), GrounderCache(loader=broken))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = post(client, png_bytes(), boxes="[[0, 0, 8, 8]]")
    assert response.status_code == 500
    assert "disk on fire" not in response.json()["detail"]
    assert "disk on fire" in caplog.text


def test_page_methods_health_and_docs(real: Any) -> None:
    client = real[0]
    page = client.get("/")
    assert page.status_code == 200
    for element in ('id="image"', 'id="text"', 'id="submit"', 'id="canvas"', 'id="score"',
                    'id="error"', 'id="boxes"', 'id="method"'):
        assert element in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    methods = client.get("/methods").json()
    assert "visual-prompt" in methods["methods"] and methods["default"] == "visual-prompt"
    assert methods["summaries"]["visual-prompt"] == METHODS.get("visual-prompt").summary
    assert 'id="summary"' in page.text and 'id="grid"' not in page.text
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/ground" in client.get("/openapi.json").json()["paths"]


def test_the_default_server_method_is_graph_resolve_and_every_method_says_what_it_is() -> None:
    assert ServeConfig().method == "graph-resolve" == DEFAULT_METHOD
    for name in METHODS.names():
        if name != "tiny-test":  # registered by a test helper
            assert len(METHODS.get(name).summary) > 20, name


def test_static_files_ship_with_the_package() -> None:
    from refground.serve.app import STATIC

    assert {p.name for p in Path(STATIC).iterdir()} >= {"index.html", "app.js", "style.css"}


def test_client_options_are_options_of_the_methods_schemas() -> None:
    """The allowlist only narrows each method's option schema: every name is an option of its
    method, and its rule accepts the method's default."""
    from refground.methods import method_type
    from refground.serve.options import CLIENT_OPTIONS

    for method, rules in CLIENT_OPTIONS.items():
        fields = method_type(method).config_type.model_fields
        for option, rule in rules.items():
            assert option in fields, (method, option)
            default = fields[option].default
            rule.check(list(default) if isinstance(default, tuple) else default)

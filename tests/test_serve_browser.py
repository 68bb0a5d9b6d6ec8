"""The web page in a real browser: `refground serve` in a subprocess, driven by headless
Chromium through Playwright; the box the page draws must be the box the API returns."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refground.types import Sample
from tests.conftest import synthref_split

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'refground[serve]'")
httpx = pytest.importorskip("httpx", reason="needs httpx (installed with fastapi's test client)")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """An attribute expression ("the small red circle") in an image of three or more objects."""
    return next(s for s in synthref_split(tmp_path_factory)
                if len(s.annotations) >= 3 and s.expression_type == "attribute")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`refground serve` on a free loopback port; yields its URL once /health answers."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "refground", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def ground_api(server: str, sample: Sample, boxes: str | None = None) -> list[float]:
    data = {"text": sample.expression, **({"boxes": boxes} if boxes else {})}
    api = httpx.post(f"{server}/ground", timeout=120, data=data,
                     files={"image": ("image.png", sample.image_path.read_bytes(), "image/png")})
    assert api.status_code == 200, api.text
    return [float(v) for v in api.json()["box"]]


def drawn_box(page: Any) -> list[float]:
    page.wait_for_function("document.getElementById('canvas').dataset.box", timeout=120_000)
    assert page.is_hidden("#error")
    return [float(v) for v in page.get_attribute("#canvas", "data-box").split(",")]


def iou(a: list[float], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_page_grounds_from_text_alone_and_draws_the_box_the_api_returns(
        server: str, sample: Sample) -> None:
    """The default server (graph-resolve, the shipped detector finding the boxes): a SynthRef
    image and its expression, no boxes; then the same with the annotated boxes given."""
    assert sample.gt_box is not None
    expected = ground_api(server, sample)
    assert iou(expected, sample.gt_box) >= 0.5
    boxes = json.dumps([list(a.box) for a in sample.annotations])
    expected_given = ground_api(server, sample, boxes)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server)
            # the menu lists the served methods (here only the default one) and says what it is
            page.wait_for_selector("#method option[value='graph-resolve']", state="attached")
            assert page.input_value("#method") == "graph-resolve"
            assert "scene graph" in page.text_content("#summary") or \
                "relations" in page.text_content("#summary")
            page.set_input_files("#image", str(sample.image_path))
            page.fill("#text", sample.expression)

            # text alone: the server's detector proposes the candidates
            page.click("#submit")
            drawn = drawn_box(page)
            assert drawn == pytest.approx(expected)
            assert iou(drawn, sample.gt_box) >= 0.5
            assert "score" in page.text_content("#score")
            # the chosen box's edges are stroked pure red (SynthRef's red shapes are not)
            x0, y0, x1, y1 = (round(v) for v in expected)
            middle_x, middle_y = (x0 + x1) // 2, (y0 + y1) // 2
            edges = [[x0 + 1, middle_y], [x1 - 2, middle_y], [middle_x, y0 + 1],
                     [middle_x, y1 - 2]]
            pixels = page.evaluate(
                "(points) => points.map(([x, y]) => Array.from(document.getElementById('canvas')"
                ".getContext('2d').getImageData(x, y, 1, 1).data))", edges)
            assert pixels == [[255, 0, 0, 255]] * 4, pixels
            size = page.evaluate("[document.getElementById('canvas').width, "
                                 "document.getElementById('canvas').height]")
            assert size == [sample.width, sample.height]

            # candidate boxes typed in: the method chooses among them
            page.fill("#boxes", boxes)
            page.click("#submit")
            assert drawn_box(page) == pytest.approx(expected_given)
        finally:
            browser.close()

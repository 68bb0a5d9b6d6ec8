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
    return next(s for s in synthref_split(tmp_path_factory) if len(s.annotations) >= 3)


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


def test_page_draws_the_box_the_api_returns(server: str, sample: Sample) -> None:
    boxes = json.dumps([list(a.box) for a in sample.annotations])
    api = httpx.post(f"{server}/ground", timeout=60, data={"text": sample.expression,
                                                           "boxes": boxes},
                     files={"image": ("image.png", sample.image_path.read_bytes(), "image/png")})
    assert api.status_code == 200, api.text
    expected = api.json()["box"]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server)
            # the menu lists the served methods (here only the default one)
            page.wait_for_selector("#method option[value='visual-prompt']", state="attached")
            assert page.input_value("#method") == "visual-prompt"
            page.set_input_files("#image", str(sample.image_path))
            page.fill("#text", sample.expression)

            # without candidate boxes the default (proposals='gt') method explains what it needs
            page.click("#submit")
            page.wait_for_selector("#error:not([hidden])")
            assert "boxes" in page.text_content("#error")

            page.fill("#boxes", boxes)
            page.click("#submit")
            page.wait_for_function("document.getElementById('canvas').dataset.box", timeout=60_000)
            assert page.is_hidden("#error")
            drawn = [float(v) for v in page.get_attribute("#canvas", "data-box").split(",")]
            assert drawn == pytest.approx(expected)
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
        finally:
            browser.close()

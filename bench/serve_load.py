"""Load test of `refground serve`: 1 client, then N concurrent clients, over loopback.

    .venv/bin/python bench/serve_load.py [--url http://127.0.0.1:8000] [--seconds 10]
        [--clients 8] [--data ROOT] [--method visual-prompt] [--warmup 3]
        [--serve-args '--concurrency 2']

Without --url it starts `refground serve` on a free port (and stops it afterwards). Requests
are SynthRef test expressions with their images and annotated boxes as candidates (from --data,
or a 20-image SynthRef generated in a temporary directory), cycled so every client sends
different images. Each phase runs --seconds; a thread polls /health every 100 ms during the
N-client phase to show the event loop stays responsive while models compute.

Prints per phase: requests, requests/s, p50/p99 latency, errors (must be 0; the exit status is
1 otherwise), and the N-clients/1-client ratios side by side. Inference holds one lock per
model (one forward at a time), so on CPU throughput grows only as far as decoding, I/O and
request handling overlap with it; latency grows with the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refground.data.synth import generate_synthref, synthref_dataset


@dataclass(frozen=True)
class Request:
    image: bytes
    text: str
    boxes: str


@dataclass
class Phase:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def requests_from(data: Path | None, limit: int = 200) -> list[Request]:
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = data
        if root is None:
            root = Path(tmp)
            generate_synthref(root, seed=11, num_images=20)
        samples = synthref_dataset(root).split("test", limit=limit).samples
        return [Request(s.image_path.read_bytes(), s.expression,
                        json.dumps([list(a.box) for a in s.annotations]))
                for s in samples if s.annotations]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(url: str | None, method: str, extra: list[str]) -> Iterator[str]:
    """The URL to load: --url as given, or a `refground serve` started (and stopped) here."""
    if url is not None:
        yield url.rstrip("/")
        return
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "refground", "serve", "--port", str(port), "--method", method,
         "--log-level", "warning", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{started}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {process.stderr.read().decode()[-2000:]}"
                                 if process.poll() is not None else "server did not start")
            time.sleep(0.25)
        yield started
    finally:
        process.terminate()
        process.wait(10)


def send(client: httpx.Client, url: str, request: Request, method: str | None) -> str | None:
    """One POST /ground; None on success, else a short description of what went wrong."""
    fields = {"text": request.text, "boxes": request.boxes}
    if method:
        fields["method"] = method
    try:
        response = client.post(f"{url}/ground", data=fields,
                               files={"image": ("image.png", request.image, "image/png")})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if response.status_code == 200 else f"{response.status_code} {response.text}"


def run_phase(url: str, requests: list[Request], clients: int, seconds: float,
              method: str | None) -> Phase:
    phase = Phase(clients)
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        with httpx.Client(timeout=120) as client:
            index = offset
            while time.monotonic() < stop:
                start = time.perf_counter()
                error = send(client, url, requests[index % len(requests)], method)
                elapsed = time.perf_counter() - start
                with lock:
                    if error:
                        phase.errors.append(error)
                    else:
                        phase.latencies.append(elapsed)
                index += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started  # includes the requests in flight at stop
    return phase


@contextmanager
def health_probe(url: str) -> Iterator[list[float]]:
    """Latencies of GET /health every 100 ms while the block runs."""
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.wait(0.1):
                start = time.perf_counter()
                client.get(f"{url}/health").raise_for_status()
                latencies.append(time.perf_counter() - start)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield latencies
    finally:
        done.set()
        thread.join()


def row(name: str, phase: Phase) -> str:
    ms = [v * 1000 for v in phase.latencies]
    return (f"{name:<10} {len(ms):>8} {phase.rate:>7.2f} {percentile(ms, 0.5):>9.0f} "
            f"{percentile(ms, 0.99):>9.0f} {len(phase.errors):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="a running server [start one here]")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--data", type=Path, default=None, help="SynthRef root [generate one]")
    parser.add_argument("--method", default="visual-prompt")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--serve-args", default="",
                        help="more `refground serve` options, e.g. '--concurrency 2'")
    args = parser.parse_args()

    requests = requests_from(args.data)
    print(f"{len(requests)} distinct requests (SynthRef test, annotated boxes as candidates); "
          f"{args.seconds:g} s per phase; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    with server(args.url, args.method, shlex.split(args.serve_args)) as url:
        with httpx.Client(timeout=120) as client:
            for request in requests[:args.warmup]:
                if error := send(client, url, request, args.method):
                    raise SystemExit(f"warm-up request failed: {error}")
        single = run_phase(url, requests, 1, args.seconds, args.method)
        with health_probe(url) as health:
            many = run_phase(url, requests, args.clients, args.seconds, args.method)
    print(f"{'clients':<10} {'requests':>8} {'req/s':>7} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'errors':>7}")
    print(row("1", single))
    print(row(str(args.clients), many))
    errors = single.errors + many.errors
    if single.latencies and many.latencies:
        health_ms = [v * 1000 for v in health]
        print(f"{args.clients} vs 1 client: throughput {many.rate / single.rate:.2f}x, p50 "
              f"latency {percentile(many.latencies, 0.5) / percentile(single.latencies, 0.5):.2f}x;"
              f" /health under load: p50 {percentile(health_ms, 0.5):.1f} ms, p99 "
              f"{percentile(health_ms, 0.99):.1f} ms over {len(health_ms)} probes")
    if errors:
        print(f"{len(errors)} errors; first: {errors[0][:300]}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""The server under load: concurrent predictions and explanations, and a 1 GB chunked upload.

    nice -n 15 .venv/bin/python benchmarks/serve_load.py [--rounds 5] [--baseline-src ../main/src]

Starts the real server (`lungscope serve`, bundled model, uvicorn) in a subprocess with its own TMPDIR, then
sends, each round, 32 predictions and 8 explanations (Grad-CAM and guided Grad-CAM, alternating) at once, with
real X-rays from the shared chest_xray/train folder; reports the number of 5xx answers (must be 0) and latency
median/p95 per endpoint. Then streams a 1 GB multipart upload of zeros without Content-Length (chunked) and
reports its answer (must be 413), how much of it left the client, and what the server wrote meanwhile: the
bytes its process wrote by any system call (``wchar`` of /proc/PID/io: files, spooled uploads, sockets), the peak
size of its TMPDIR and the peak of its resident memory - all under 60 MB. Last, ``--bombs`` (16) uploads at once of
a PNG under a megabyte that decodes to 100 million pixels: the answers and the growth of the server's resident
memory (under 1.5 GB, whatever their number). ``--baseline-src`` also runs the load and the bombs against the code
in that ``src`` folder (e.g. the commit before the fix), for the comparison.
Writes benchmarks/results/serve_load.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import httpx2 as httpx
import numpy as np
from PIL import Image

from lungscope.data.io import MAX_PIXELS

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LUNGSCOPE_SHARED_DATA", REPO.parent / "shared" / "data")) / "chest_xray" / "train"
N_PREDICT, N_EXPLAIN, METHODS = 32, 8, ("gradcam", "guided-gradcam")
BIG, LIMIT_MB = 1 << 30, 60
BOMB_LIMIT_MB = 1500  # growth allowed for the bombs, whatever their number: two decodes of ~0.5 GB at a time


def images(n: int) -> list[Path]:
    """``n`` shared X-rays, half normal and half pneumonia, the same every run."""
    normal, pneumonia = (sorted((DATA / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA"))
    return [path for pair in zip(normal[:: len(normal) // n], pneumonia[:: len(pneumonia) // n]) for path in pair][:n]


class Server:
    """``lungscope serve`` in a subprocess on a free port, with ``src`` first on its path and its own TMPDIR."""

    def __init__(self, src: Path, tmp: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(src), "TMPDIR": str(tmp)}
        self.process = subprocess.Popen([sys.executable, "-m", "lungscope.cli", "serve", "--port", str(self.port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/api/info", timeout=5).raise_for_status()
                return
            except httpx.TransportError:
                time.sleep(0.2)
        self.process.kill()
        raise RuntimeError("the server did not start within 120 s")

    def proc(self, name: str) -> dict[str, int]:
        """/proc/PID/<name> as numbers (``io``; ``status``: the kB fields)."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/{name}").read_text().splitlines():
            key, _, value = line.partition(":")
            if value.split() and value.split()[0].isdigit():
                fields[key] = int(value.split()[0])
        return fields

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def load(server: Server, paths: list[Path], rounds: int) -> dict[str, list[tuple[int, float]]]:
    """``(status, seconds)`` per request and endpoint over ``rounds`` rounds of 32 predictions and 8 explanations."""
    files = [path.read_bytes() for path in paths]
    jobs = [("predict", files[i], {}) for i in range(N_PREDICT)]
    jobs += [("explain", files[N_PREDICT + i], {"method": METHODS[i % 2]}) for i in range(N_EXPLAIN)]
    results: dict[str, list[tuple[int, float]]] = {"predict": [], "explain": []}
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=len(jobs))
    with httpx.Client(base_url=server.url, timeout=300, limits=limits) as client:

        def send(job: tuple[str, bytes, dict[str, str]]) -> tuple[str, int, float]:
            endpoint, data, form = job
            start = time.perf_counter()
            response = client.post(f"/api/{endpoint}", files={"file": ("xray.jpeg", data)}, data=form)
            return endpoint, response.status_code, time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            for _ in range(rounds):
                for endpoint, status, seconds in pool.map(send, jobs):
                    results[endpoint].append((status, seconds))
    return results


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


class Peaks:
    """While in the block, the peak of the server's resident memory and of its TMPDIR's size, every 20 ms."""

    def __init__(self, server: Server, tmp: Path) -> None:
        self.server, self.tmp = server, tmp
        self.rss_before_kb, self.tmp_before = server.proc("status")["VmRSS"], folder_size(tmp)
        self.rss_kb, self.tmp_peak = self.rss_before_kb, self.tmp_before
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch)

    def watch(self) -> None:
        while not self.done.is_set():
            self.tmp_peak = max(self.tmp_peak, folder_size(self.tmp))
            self.rss_kb = max(self.rss_kb, self.server.proc("status")["VmRSS"])
            time.sleep(0.02)

    def __enter__(self) -> Peaks:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def big_upload(server: Server, tmp: Path) -> dict[str, float]:
    """Stream 1 GB of zeros as a multipart file without Content-Length; what was sent, answered and written."""
    sent = [0]

    def body() -> Iterator[bytes]:
        zeros = b"\0" * (1 << 20)
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="zeros.png"\r\n\r\n'
        for part in itertools.chain([head], itertools.repeat(zeros, BIG >> 20), [b"\r\n--b--\r\n"]):
            sent[0] += len(part)
            yield part

    io_before = server.proc("io")
    with Peaks(server, tmp) as peaks:
        start = time.perf_counter()
        response = httpx.post(server.url + "/api/predict", content=body(), timeout=600,
                              headers={"content-type": "multipart/form-data; boundary=b"})
        seconds = time.perf_counter() - start
    io_after = server.proc("io")
    return {"status": response.status_code, "detail": response.json().get("detail"), "seconds": seconds,
            "sent": sent[0], "wchar": io_after["wchar"] - io_before["wchar"],
            "disk": io_after["write_bytes"] - io_before["write_bytes"], "tmp_before": peaks.tmp_before,
            "tmp_peak": peaks.tmp_peak, "tmp_after": folder_size(tmp), "rss_before_kb": peaks.rss_before_kb,
            "rss_peak_kb": peaks.rss_kb}


def pixel_bomb() -> bytes:
    """A PNG of under a megabyte that decodes to 100 million RGB pixels (300 MB), the most the server reads."""
    side = int(MAX_PIXELS**0.5) - 10
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[::7], pixels[:, ::13, 1] = 200, 90
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def bombs(server: Server, tmp: Path, count: int) -> dict[str, object]:
    """``count`` uploads of :func:`pixel_bomb` at once to /api/predict: the answers and the server's memory."""
    data = pixel_bomb()

    def send(_: int) -> str:
        response = httpx.post(server.url + "/api/predict", files={"file": ("bomb.png", data)}, timeout=600)
        return f"{response.status_code} {response.json().get('detail', '')[:60]}"

    with Peaks(server, tmp) as peaks, ThreadPoolExecutor(max_workers=count) as pool:
        start = time.perf_counter()
        answers = sorted(set(pool.map(send, range(count))))
        seconds = time.perf_counter() - start
    return {"answers": answers, "seconds": seconds, "megabytes": len(data) / 1e6,
            "rss_before_kb": peaks.rss_before_kb, "rss_peak_kb": peaks.rss_kb}


def summary(results: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, float]]:
    return {endpoint: {"n": len(rows), "5xx": sum(status >= 500 for status, _ in rows),
                       "median_ms": 1000 * statistics.median(s for _, s in rows),
                       "p95_ms": 1000 * float(np.percentile([s for _, s in rows], 95))}
            for endpoint, rows in results.items()}


def run(src: Path, paths: list[Path], rounds: int, upload: bool, count: int) -> tuple[dict, dict | None, dict]:
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        server = Server(src, Path(folder))
        try:
            stats = summary(load(server, paths, rounds))
            big = big_upload(server, Path(folder)) if upload else None
            return stats, big, bombs(server, Path(folder), count)
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-src", type=Path, help="also load-test the code in this src folder")
    parser.add_argument("--bombs", type=int, default=16, help="100-million-pixel PNGs uploaded at once")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.md")
    args = parser.parse_args()
    paths = images(N_PREDICT + N_EXPLAIN)
    load_before = os.getloadavg()[0]
    runs = {"this code": run(REPO / "src", paths, args.rounds, upload=True, count=args.bombs)}
    if args.baseline_src:
        runs[f"baseline ({args.baseline_src})"] = run(args.baseline_src.resolve(), paths, args.rounds, upload=False,
                                                      count=args.bombs)
    load_after = os.getloadavg()[0]
    mb = 1024 * 1024
    command = " ".join(["nice -n 15 python benchmarks/serve_load.py", *sys.argv[1:]])
    lines = ["# Server under load", "",
             (f"{datetime.date.today()}, torch {version('torch')}, {os.cpu_count()} cores, "
              f"load average {load_before:.2f} before and "
              f"{load_after:.2f} after (other work ran on the machine). Command: `{command}`"), "",
             (f"Each of {args.rounds} rounds: {N_PREDICT} predictions and {N_EXPLAIN} explanations "
              f"({' / '.join(METHODS)}, alternating) at once, each on its own connection, against `lungscope serve` "
              "(bundled model) in a subprocess; real X-rays from chest_xray/train."), "",
             "| code | endpoint | requests | 5xx | median ms | p95 ms |", "| --- | --- | --- | --- | --- | --- |"]
    for label, (stats, _, _) in runs.items():
        lines += [f"| {label} | /api/{endpoint} | {row['n']} | {row['5xx']} | {row['median_ms']:.0f} | "
                  f"{row['p95_ms']:.0f} |" for endpoint, row in stats.items()]
    big = runs["this code"][1]
    assert big is not None
    growth = (big["rss_peak_kb"] - big["rss_before_kb"]) * 1024
    lines += ["", (f"1 GB chunked upload (no Content-Length) to /api/predict, 50 MB limit: answer {big['status']} "
                   f"({big['detail']!r}) after {big['seconds']:.1f} s."), "",
              "| quantity | MB |", "| --- | --- |",
              f"| sent by the client before the answer | {big['sent'] / mb:.1f} |",
              f"| written by the server process, any system call (wchar delta) | {big['wchar'] / mb:.1f} |",
              f"| of which reached the disk (write_bytes delta) | {big['disk'] / mb:.1f} |",
              (f"| server TMPDIR: before / peak / after | {big['tmp_before'] / mb:.1f} / {big['tmp_peak'] / mb:.1f} / "
               f"{big['tmp_after'] / mb:.1f} |"),
              (f"| server resident memory: before / peak / growth | {big['rss_before_kb'] / 1024:.0f} / "
               f"{big['rss_peak_kb'] / 1024:.0f} / {growth / mb:.0f} |"), "",
              ("Spooled uploads are unlinked temporary files: they never show in TMPDIR's listing, which is why the "
               "wchar count is the measure of what was written."), "",
              (f"{args.bombs} uploads at once to /api/predict of one {runs['this code'][2]['megabytes']:.1f} MB PNG "
               "that decodes to 100 million RGB pixels (the most the server reads):"), "",
              "| code | answers | seconds | resident MB before / peak / growth |", "| --- | --- | --- | --- |"]
    for label, (_, _, bomb) in runs.items():
        lines.append(f"| {label} | {'; '.join(bomb['answers'])} | {bomb['seconds']:.1f} | "
                     f"{bomb['rss_before_kb'] / 1024:.0f} / {bomb['rss_peak_kb'] / 1024:.0f} / "
                     f"{(bomb['rss_peak_kb'] - bomb['rss_before_kb']) / 1024:.0f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    fivexx = sum(row["5xx"] for row in runs["this code"][0].values())
    bomb = runs["this code"][2]
    ok = (fivexx == 0 and big["status"] == 413 and max(big["wchar"], big["tmp_peak"], growth) < LIMIT_MB * mb
          and bomb["rss_peak_kb"] - bomb["rss_before_kb"] < BOMB_LIMIT_MB * 1024)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
